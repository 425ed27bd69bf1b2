// Debian's Chromium as the browser tests and the timings drive it.
import { ADMIN_TOKEN } from './gateway.mjs'

export const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium'
// As root, with nothing phoning home (the machine has no network).
export const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync']

/** Signs in on the login page `ui` sends a new visitor to; resolves when the overview has loaded. */
export async function signIn(page, ui) {
  await page.goto(ui)
  await page.waitForURL(/\/ui\/login/)
  await page.fill('[data-test="token"] input', ADMIN_TOKEN)
  await page.click('[data-test="login"]')
  await page.waitForSelector('[data-test="overview"][data-loading="false"]')
}

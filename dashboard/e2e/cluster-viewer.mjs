// Browser check of the UI in cluster mode, run by the Rust e2e test
// (e2e/tests/cluster_ui.rs), which starts the test API server, Postgres and
// an operator, grants a ServiceAccount one namespace and passes:
//   WEAVER_UI_URL    the operator's https://host:port
//   WEAVER_UI_TOKEN  that ServiceAccount's token (it may also patch its ApiKeys)
//   WEAVER_UI_ALLOWED, WEAVER_UI_OTHER  its namespace, and one it may not read
// Debian's Chromium through playwright-core; screenshots go to
// dashboard/artifacts/screenshots/cluster-*.png (desktop and phone widths,
// English and Chinese). Exits non-zero on a failure.
import assert from 'node:assert/strict'
import { mkdirSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { chromium } from 'playwright-core'
import { CHROMIUM, ARGS } from './browser.mjs'

const SHOTS = join(resolve(import.meta.dirname, '../artifacts'), 'screenshots')
const DESKTOP = { width: 1280, height: 800 }
const PHONE = { width: 390, height: 844 }
const { WEAVER_UI_URL: url, WEAVER_UI_TOKEN: token, WEAVER_UI_ALLOWED: allowed, WEAVER_UI_OTHER: other } = process.env
assert.ok(url && token && allowed && other, 'WEAVER_UI_URL, WEAVER_UI_TOKEN, WEAVER_UI_ALLOWED and WEAVER_UI_OTHER are needed')

mkdirSync(SHOTS, { recursive: true })
const browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS })
try {
  // The operator's certificate chains to its own CA, which this browser does not know.
  const context = await browser.newContext({ viewport: DESKTOP, ignoreHTTPSErrors: true, timezoneId: 'UTC' })
  const page = await context.newPage()
  await page.goto(`${url}/ui/`)
  await page.waitForURL(/\/ui\/login/)
  await page.waitForSelector('[data-test="token-field"][data-mode="cluster"]')
  await page.screenshot({ path: join(SHOTS, 'cluster-login-desktop-en.png') })
  await page.fill('[data-test="token"] input', token)
  await page.click('[data-test="login"]')
  await page.waitForSelector('[data-test="overview"][data-loading="false"]')
  const [cookie] = await context.cookies()
  assert.equal(cookie.name, 'weaver_session')
  assert.equal(cookie.httpOnly, true)
  assert.equal(cookie.sameSite, 'Strict')
  const storage = await page.evaluate(() => JSON.stringify({ ...localStorage, ...sessionStorage }) + document.cookie)
  assert.ok(!storage.includes(token), 'the token is not kept in script-readable storage')

  // The header names the one namespace; the overview's top keys are its own.
  assert.equal((await page.textContent('[data-test="namespaces"]')).trim(), allowed)
  await page.screenshot({ path: join(SHOTS, 'cluster-overview-desktop-en.png'), fullPage: true })
  const body = await page.textContent('body')
  assert.ok(body.includes(`${allowed}/`), 'the overview shows the allowed namespace')
  assert.ok(!body.includes(other), `the overview shows nothing of ${other}`)

  // The Keys page lists its namespace's keys only.
  await page.click('a[href="/ui/keys"]')
  await page.waitForSelector('[data-test="keys"][data-loading="false"]')
  await page.waitForSelector(`[data-test="state-${allowed}/app"]`)
  const keys = await page.textContent('[data-test="key-table"]')
  assert.ok(!keys.includes(other), `the Keys page lists nothing of ${other}`)
  // This viewer may patch its ApiKeys: the page offers disable and rotate.
  await page.waitForSelector(`[data-test="disable-${allowed}/app"]`)
  await page.waitForSelector(`[data-test="rotate-${allowed}/app"]`)
  await page.screenshot({ path: join(SHOTS, 'cluster-keys-desktop-en.png'), fullPage: true })

  // Asking the usage API for the other namespace from the page is refused.
  const status = await page.evaluate(async (ns) => (await fetch(`/admin/v1/usage/records?namespace=${ns}`)).status, other)
  assert.equal(status, 403)

  // The same session at phone width and in Chinese (dark at phone width).
  const signedIn = await context.storageState()
  for (const [lang, size, viewport] of [['en', 'phone', PHONE], ['zh', 'desktop', DESKTOP], ['zh', 'phone', PHONE]]) {
    const other = await browser.newContext({ viewport, storageState: signedIn, ignoreHTTPSErrors: true, timezoneId: 'UTC' })
    await other.addInitScript(([l, t]) => {
      localStorage.setItem('weaver.lang', l)
      localStorage.setItem('weaver.theme', t)
    }, [lang, size === 'phone' ? 'dark' : 'light'])
    const shot = await other.newPage()
    await shot.goto(`${url}/ui/`)
    await shot.waitForSelector('[data-test="overview"][data-loading="false"]')
    await shot.screenshot({ path: join(SHOTS, `cluster-overview-${size}-${lang}.png`), fullPage: true })
    await shot.goto(`${url}/ui/keys`)
    await shot.waitForSelector(`[data-test="state-${allowed}/app"]`)
    await shot.screenshot({ path: join(SHOTS, `cluster-keys-${size}-${lang}.png`), fullPage: true })
    await other.close()
  }
  console.log('cluster viewer: only', allowed, 'shown; screenshots in', SHOTS)
} finally {
  await browser.close()
}

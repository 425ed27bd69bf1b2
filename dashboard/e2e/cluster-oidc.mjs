// Browser check of OIDC sign-in in cluster mode, run by the Rust e2e test
// (e2e/tests/cluster_oidc.rs), which starts the test API server, Postgres, the
// test OIDC issuer (it consents at once for a user whose group is bound in
// one namespace) and an operator configured for it, and passes:
//   WEAVER_UI_URL       the operator's https://host:port
//   WEAVER_UI_PROVIDER  the provider name the login button shows
//   WEAVER_UI_USER      the user the session must name
//   WEAVER_UI_ALLOWED, WEAVER_UI_OTHER  the namespace it may read, and one it may not
// Debian's Chromium through playwright-core: the button takes the browser to
// the issuer and back (the flow cookie must survive that cross-site
// redirect), the header names the one namespace, logout ends the session.
// Screenshots: dashboard/artifacts/screenshots/cluster-oidc-*.png.
import assert from 'node:assert/strict'
import { mkdirSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { chromium } from 'playwright-core'
import { CHROMIUM, ARGS } from './browser.mjs'

const SHOTS = join(resolve(import.meta.dirname, '../artifacts'), 'screenshots')
const {
  WEAVER_UI_URL: url,
  WEAVER_UI_PROVIDER: provider,
  WEAVER_UI_USER: user,
  WEAVER_UI_ALLOWED: allowed,
  WEAVER_UI_OTHER: other,
} = process.env
assert.ok(url && provider && user && allowed && other, 'WEAVER_UI_URL, _PROVIDER, _USER, _ALLOWED and _OTHER are needed')

mkdirSync(SHOTS, { recursive: true })
const browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS })
try {
  for (const lang of ['zh', 'en']) {
    // The operator's certificate chains to its own CA, which this browser does not know.
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, ignoreHTTPSErrors: true, timezoneId: 'UTC' })
    await context.addInitScript((l) => localStorage.setItem('weaver.lang', l), lang)
    const page = await context.newPage()
    await page.goto(`${url}/ui/keys`)
    await page.waitForURL(/\/ui\/login/)
    const button = page.locator('[data-test="oidc-login"]')
    await button.waitFor()
    assert.ok((await button.textContent()).includes(provider), 'the button names the provider')
    await page.screenshot({ path: join(SHOTS, `cluster-oidc-login-desktop-${lang}.png`) })
    if (lang === 'zh') {
      await context.close()
      continue
    }

    // To the issuer and back, landing where the visitor was going.
    await button.click()
    await page.waitForURL(/\/ui\/keys/)
    await page.waitForSelector('[data-test="keys"][data-loading="false"]')
    await page.waitForSelector(`[data-test="state-${allowed}/app"]`)
    assert.equal((await page.textContent('[data-test="namespaces"]')).trim(), allowed)
    assert.ok((await page.getAttribute('[data-test="namespaces"]', 'title')).startsWith(user))
    const body = await page.textContent('body')
    assert.ok(!body.includes(other), `the page shows nothing of ${other}`)
    const cookies = await context.cookies()
    const session = cookies.find((c) => c.name === 'weaver_session')
    assert.ok(session && session.httpOnly && session.sameSite === 'Strict', 'an HttpOnly, SameSite=Strict session cookie')
    assert.ok(!cookies.some((c) => c.name === 'weaver_oidc'), 'the flow cookie is gone after the sign-in')
    const storage = await page.evaluate(() => JSON.stringify({ ...localStorage, ...sessionStorage }) + document.cookie)
    assert.ok(!/eyJ[\w-]+\.eyJ/.test(storage), 'no token in script-readable storage')
    await page.screenshot({ path: join(SHOTS, 'cluster-oidc-keys-desktop-en.png'), fullPage: true })

    // Logging out returns to the login page; the session is gone.
    await page.click('[data-test="logout"]')
    await page.waitForURL(/\/ui\/login/)
    const status = await page.evaluate(async () => (await fetch('/ui/api/session')).status)
    assert.equal(status, 401)
    // A sign-in the operator refused comes back to the login page, which says why.
    await page.goto(`${url}/ui/login?oidc_error=token`)
    const refusal = await page.textContent('[data-test="login-error"]')
    assert.ok(refusal.includes('(token)'), refusal)
    await context.close()
  }
  console.log('cluster OIDC: signed in as', user, 'through', provider, '; only', allowed, 'shown')
} finally {
  await browser.close()
}

// Browser check of the operator's Playground and channel test, run by the
// Rust e2e test (e2e/tests/cluster_ui.rs), which starts the test API server,
// Postgres, an operator that knows the gateway (--gateway-url,
// --gateway-admin-url), a cluster-mode gateway and a mock upstream, and passes:
//   WEAVER_UI_URL      the operator's https://host:port
//   WEAVER_UI_TOKEN    a ServiceAccount token that may test channels in its namespace
//   WEAVER_UI_KEY      an API key of that namespace, as its owner would paste it
//   WEAVER_UI_CHANNEL  the channel to test (namespace/name)
// Debian's Chromium through playwright-core; screenshots go to
// dashboard/artifacts/screenshots/cluster-{playground,channels}-desktop-en.png.
// Exits non-zero on a failure.
import assert from 'node:assert/strict'
import { mkdirSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { chromium } from 'playwright-core'
import { CHROMIUM, ARGS } from './browser.mjs'

const SHOTS = join(resolve(import.meta.dirname, '../artifacts'), 'screenshots')
const { WEAVER_UI_URL: url, WEAVER_UI_TOKEN: token, WEAVER_UI_KEY: key, WEAVER_UI_CHANNEL: channel } = process.env
assert.ok(url && token && key && channel, 'WEAVER_UI_URL, WEAVER_UI_TOKEN, WEAVER_UI_KEY and WEAVER_UI_CHANNEL are needed')

mkdirSync(SHOTS, { recursive: true })
const browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS })
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, ignoreHTTPSErrors: true, timezoneId: 'UTC' })
  const page = await context.newPage()
  await page.goto(`${url}/ui/`)
  await page.waitForURL(/\/ui\/login/)
  await page.fill('[data-test="token"] input', token)
  await page.click('[data-test="login"]')
  await page.waitForSelector('[data-test="overview"][data-loading="false"]')

  // The operator knows the gateway Service: the menu offers the Playground.
  await page.click('a[href="/ui/playground"]')
  await page.fill('[data-test="pg-key"] input', key)
  await page.click('[data-test="pg-load"]')
  await page.waitForFunction(() => document.querySelector('[data-test="pg-model"]')?.dataset.value)
  await page.fill('[data-test="pg-input"] textarea', 'Say hello')
  await page.click('[data-test="pg-send"]')
  await page.waitForSelector('[data-test="pg-usage"][data-output]')
  const answer = (await page.textContent('[data-test="pg-answer"]')).trim()
  assert.ok(answer.length > 0, 'the answer streamed into the page')
  const output = Number(await page.getAttribute('[data-test="pg-usage"]', 'data-output'))
  assert.ok(output > 0, 'the usage chunk came through')
  await page.screenshot({ path: join(SHOTS, 'cluster-playground-desktop-en.png'), fullPage: true })
  const storage = await page.evaluate(() => JSON.stringify({ ...localStorage, ...sessionStorage }) + document.cookie + location.href)
  assert.ok(!storage.includes(key), 'the key is not kept in storage or the URL')

  // This viewer may test channels: the Channels page offers the button.
  await page.click('a[href="/ui/channels"]')
  await page.click(`[data-test="test-${channel}"]`)
  await page.waitForSelector('[data-test="test-result"][data-ok="true"]')
  assert.match(await page.textContent('[data-test="test-status"]'), /200/)
  await page.screenshot({ path: join(SHOTS, 'cluster-channels-desktop-en.png'), fullPage: true })
  console.log('cluster playground: answer', JSON.stringify(answer), `(${output} tokens); channel ${channel} tested`)
} finally {
  await browser.close()
}

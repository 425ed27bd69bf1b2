// Browser tests: Debian's Chromium, driven by playwright-core, against a real
// standalone gateway whose usage was made by real requests. Screenshots of
// every page (desktop and phone, English and Chinese) go to
// dashboard/artifacts/screenshots; timings are printed, not asserted.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { mkdirSync, readFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { chromium } from 'playwright-core'
import { startGateway, chat, usage, allRecords, eventually, ADMIN_TOKEN, KEYS } from './gateway.mjs'
import { CHROMIUM, ARGS, signIn } from './browser.mjs'

const ARTIFACTS = resolve(import.meta.dirname, '../artifacts')
const SHOTS = join(ARTIFACTS, 'screenshots')
const DESKTOP = { width: 1280, height: 800 }
const PHONE = { width: 390, height: 844 }

let gw, browser
const sent = new Set()

/** Decimal USD strings summed exactly, as nano-dollars. */
function nanos(v) {
  const [w, f = ''] = String(v).split('.')
  return BigInt(w || '0') * 1_000_000_000n + BigInt((f + '000000000').slice(0, 9))
}

/** RFC 4180 CSV (the export quotes fields with commas, quotes and newlines). */
function parseCsv(text) {
  const rows = []
  let row = [], field = '', quoted = false
  for (let i = 0; i < text.length; i++) {
    const c = text[i]
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') { field += '"'; i++ }
      else if (c === '"') quoted = false
      else field += c
    } else if (c === '"') quoted = true
    else if (c === ',') { row.push(field); field = '' }
    else if (c === '\n') { row.push(field); rows.push(row); row = []; field = '' }
    else if (c !== '\r') field += c
  }
  if (field || row.length) { row.push(field); rows.push(row) }
  const [head, ...body] = rows
  return body.map((r) => Object.fromEntries(head.map((h, i) => [h, r[i]])))
}

/** A page with a logged-in session, in `lang` and `tz`. */
async function loggedIn({ viewport = DESKTOP, lang = 'en', tz = 'UTC', theme = 'light' } = {}) {
  const context = await browser.newContext({ viewport, acceptDownloads: true, timezoneId: 'UTC' })
  await context.addInitScript(([l, z, t]) => {
    if (!localStorage.getItem('weaver.init')) {
      localStorage.setItem('weaver.lang', l)
      localStorage.setItem('weaver.tz', z)
      localStorage.setItem('weaver.theme', t)
      localStorage.setItem('weaver.init', '1')
    }
  }, [lang, tz, theme])
  const page = await context.newPage()
  await signIn(page, gw.ui)
  return { context, page }
}

async function overviewValue(page, test) {
  return page.getAttribute(`[data-test="${test}"]`, 'data-value')
}

/** The overview's figures once loaded. */
async function overview(page) {
  await page.waitForSelector('[data-test="overview"][data-loading="false"]')
  const out = {}
  for (const k of ['spend-today', 'spend-month', 'cost', 'requests', 'tokens', 'error-rate', 'p95']) out[k] = await overviewValue(page, k)
  return out
}

/** Today's range in `tz` as the usage API takes it, computed without the UI's code. */
function todayIn(tz, now = new Date()) {
  const fmt = new Intl.DateTimeFormat('en-CA', { timeZone: tz, year: 'numeric', month: '2-digit', day: '2-digit' })
  return fmt.format(now)
}

before(async () => {
  mkdirSync(SHOTS, { recursive: true })
  gw = await startGateway()
  // Real requests through the gateway: two keys, two models, and refusals
  // (a model the key may not use) that count as errors.
  const plan = []
  for (let i = 0; i < 70; i++) plan.push([KEYS.alice, i % 3 ? 'chat-small' : 'chat-large'])
  for (let i = 0; i < 50; i++) plan.push([KEYS.bob, 'chat-small'])
  for (let i = 0; i < 6; i++) plan.push([KEYS.bob, 'chat-large'])
  for (const [key, model] of plan) {
    const { id } = await chat(gw, key, model, `request ${sent.size} `.repeat(1 + (sent.size % 7)))
    sent.add(id)
  }
  await eventually(async () => (await allRecords(gw)).length === sent.size, 'every request to be recorded')
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS })
})

after(async () => {
  await browser?.close()
  await gw?.stop()
})

test('login exchanges the admin token for an HttpOnly cookie; refresh extends it; logout ends it', async () => {
  const context = await browser.newContext({ viewport: DESKTOP })
  const page = await context.newPage()
  await page.clock.install()
  await page.goto(gw.ui)
  await page.waitForURL(/\/ui\/login/)
  await page.screenshot({ path: join(SHOTS, 'login-desktop-en.png') })
  await page.fill('[data-test="token"] input', 'not-the-token')
  await page.click('[data-test="login"]')
  await page.waitForSelector('[data-test="login-error"]')
  await page.fill('[data-test="token"] input', ADMIN_TOKEN)
  await page.click('[data-test="login"]')
  await page.waitForSelector('[data-test="overview"]')
  const [cookie] = await context.cookies()
  assert.equal(cookie.name, 'weaver_session')
  assert.equal(cookie.httpOnly, true)
  assert.equal(cookie.sameSite, 'Strict')
  const storage = await page.evaluate(() => JSON.stringify({ ...localStorage, ...sessionStorage }) + document.cookie)
  assert.ok(!storage.includes(ADMIN_TOKEN) && !storage.includes(cookie.value), 'no token or session in script-readable storage')
  // A mutating call without the CSRF token is refused, even with the cookie.
  const forged = await page.evaluate(async () => (await fetch('/ui/api/session/refresh', { method: 'POST' })).status)
  assert.equal(forged, 403)

  // The page refreshes the session a few minutes before it ends.
  const expires = Number(await page.getAttribute('[data-test="logout"]', 'data-expires'))
  await eventually(() => Math.floor(Date.now() / 1000) > expires - 30 * 60, 'the next second (a refresh must move the expiry)')
  await page.clock.fastForward('26:00')
  await eventually(async () => Number(await page.getAttribute('[data-test="logout"]', 'data-expires')) > expires, 'the refreshed expiry')
  const [refreshed] = await context.cookies()
  assert.notEqual(refreshed.value, cookie.value)

  await page.click('[data-test="logout"]')
  await page.waitForURL(/\/ui\/login/)
  assert.deepEqual(await context.cookies(), [])
  // The logged-out cookie no longer opens the API, even if a copy was kept.
  const r = await fetch(`${gw.admin}/admin/v1/usage/summary`, { headers: { Cookie: `weaver_session=${refreshed.value}` } })
  assert.equal(r.status, 401)
  assert.equal(r.headers.get('cache-control'), 'no-store')
  await context.close()
})

test('the overview shows the usage API\'s numbers, which the CSV export adds up to', async () => {
  const t0 = performance.now()
  const { context, page } = await loggedIn()
  console.log(`# first load of the overview (login included): ${(performance.now() - t0).toFixed(0)} ms for ${sent.size} records`)
  const t1 = performance.now()
  await page.reload()
  const shown = await overview(page)
  console.log(`# overview reload with a session: ${(performance.now() - t1).toFixed(0)} ms`)
  const range = { from: `${todayIn('UTC', new Date(Date.now() - 6 * 86_400_000))}T00:00:00Z` }
  const tomorrow = new Date(Date.now() + 86_400_000)
  range.to = `${todayIn('UTC', tomorrow)}T00:00:00Z`
  const [api] = (await usage(gw, 'usage/summary', range)).data
  assert.equal(shown.cost, api.cost_usd)
  assert.equal(Number(shown.requests), api.requests)
  assert.equal(Number(shown.requests), sent.size)
  assert.equal(Number(shown.tokens), api.input_tokens + api.output_tokens)
  assert.equal(Number(shown['error-rate']), api.error_rate)
  assert.equal(Number(shown.p95), api.latency_ms.p95)
  assert.ok(api.errors > 0 && api.errors < api.requests, 'refusals count as errors')

  // The export of the same range, downloaded through the page's link.
  await page.goto(`${gw.ui}logs?range=last7`)
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('[data-test="export-csv"]')])
  const csv = parseCsv(readFileSync(await download.path(), 'utf8'))
  assert.equal(csv.length, api.requests)
  const total = csv.reduce((s, r) => s + nanos(r.cost_usd), 0n)
  assert.equal(total, nanos(api.cost_usd))
  assert.equal(new Set(csv.map((r) => r.request_id)).size, sent.size)
  await context.close()
})

test('filters narrow the logs, live in the URL, and a request id finds its request', async () => {
  const { context, page } = await loggedIn()
  await page.goto(`${gw.ui}logs?range=last7`)
  const rowIds = () => page.$$eval('[data-request-id]', (rows) => rows.map((r) => r.getAttribute('data-request-id')))
  // Bob's refusals (a model his key may not use): 403s.
  await page.fill('[data-test="f-api_key"] input', 'bob')
  await page.fill('[data-test="f-status"] input', '403')
  await page.click('[data-test="apply"]')
  await page.waitForURL(/status=403/)
  const expected = (await allRecords(gw, { api_key: 'bob', status: 403 })).map((r) => r.request_id)
  assert.equal(expected.length, 6)
  await eventually(async () => JSON.stringify(await rowIds()) === JSON.stringify(expected), 'the filtered rows')
  // One model: every row shows it, and fewer rows than all.
  await page.goto(`${gw.ui}logs?range=last7&model=chat-large`)
  await page.waitForSelector('[data-test="logs"][data-loading="false"]')
  const large = (await allRecords(gw, { model: 'chat-large' })).map((r) => r.request_id)
  assert.ok(large.length > 0 && large.length < sent.size)
  await eventually(async () => JSON.stringify(await rowIds()) === JSON.stringify(large), 'the rows of one model')
  // Back to bob's refusals with the browser's back button.
  await page.goBack()
  await page.waitForURL(/status=403/)
  await eventually(async () => JSON.stringify(await rowIds()) === JSON.stringify(expected), 'the earlier filter again')
  // The detail drawer, with the attempts.
  const one = expected[0]
  await page.fill('[data-test="f-request_id"] input', one)
  await page.click('[data-test="apply"]')
  await page.waitForURL(/request_id=/)
  await eventually(async () => (await page.$$('[data-request-id]')).length === 1, 'one row')
  await page.click(`[data-request-id="${one}"]`)
  await page.waitForSelector('[data-test="drawer"]')
  assert.ok((await page.textContent('[data-test="drawer"]')).includes(one))
  await context.close()
})

test('pagination walks every record exactly once', async () => {
  const { context, page } = await loggedIn()
  await page.goto(`${gw.ui}logs?range=last7`)
  const seen = []
  let pages = 0
  for (;;) {
    await page.waitForSelector('[data-test="logs"][data-loading="false"]')
    seen.push(...(await page.$$eval('[data-request-id]', (rows) => rows.map((r) => r.getAttribute('data-request-id')))))
    pages++
    if (await page.isDisabled('[data-test="next"]')) break
    const before = page.url()
    const t = performance.now()
    await page.click('[data-test="next"]')
    await page.waitForURL((u) => u.toString() !== before)
    await page.waitForSelector('[data-test="logs"][data-loading="false"]')
    console.log(`# logs next page ${pages + 1}: ${(performance.now() - t).toFixed(0)} ms`)
  }
  assert.ok(pages >= 3, `${pages} pages`)
  assert.equal(seen.length, sent.size)
  assert.deepEqual(new Set(seen), sent)
  await context.close()
})

test('the reporting time zone moves day boundaries', async () => {
  // +14 and -11 hours: the same instant is on different dates in them.
  const zones = ['Pacific/Kiritimati', 'Pacific/Pago_Pago']
  const days = []
  for (const tz of zones) {
    const { context, page } = await loggedIn({ tz })
    const shown = await overview(page)
    assert.equal((await page.textContent('[data-test="tz"]')).trim(), tz)
    const today = todayIn(tz)
    // The server's days in that zone: all usage so far falls on "today" there.
    const from = new Date(Date.now() - 3 * 86_400_000).toISOString()
    const rows = (await usage(gw, 'usage/summary', { group_by: 'day', tz, from })).data
    assert.deepEqual(rows.map((r) => r.day), [today])
    assert.equal(shown['spend-today'], rows[0].cost_usd)
    days.push(today)
    await context.close()
  }
  assert.notEqual(days[0], days[1])
})

test('screenshots of every page at desktop and phone widths in both languages', async () => {
  const pages = ['', 'keys', 'channels', 'models', 'logs', 'settings']
  for (const lang of ['en', 'zh']) {
    for (const [size, viewport] of [['desktop', DESKTOP], ['phone', PHONE]]) {
      const { context, page } = await loggedIn({ viewport, lang, theme: size === 'phone' && lang === 'zh' ? 'dark' : 'light' })
      for (const p of pages) {
        await page.goto(`${gw.ui}${p}`)
        const name = p || 'overview'
        await page.waitForSelector(`[data-test="${name}"]`)
        await page.waitForLoadState('networkidle')
        await page.screenshot({ path: join(SHOTS, `${name}-${size}-${lang}.png`), fullPage: true })
      }
      if (lang === 'zh') {
        assert.ok((await page.textContent('body')).includes('设置'))
      }
      await context.close()
    }
  }
})

/** Sends `text` in the playground as `key` and waits for the whole answer. */
async function playgroundAnswer(page, key, text) {
  await page.goto(`${gw.ui}playground`)
  await page.fill('[data-test="pg-key"] input', key)
  await page.click('[data-test="pg-load"]')
  await eventually(async () => (await page.getAttribute('[data-test="pg-model"]', 'data-value')) !== '', 'a model to be chosen')
  await page.fill('[data-test="pg-input"] textarea', text)
  await page.click('[data-test="pg-send"]')
  await page.waitForSelector('[data-test="playground"][data-state="done"]')
}

test('the playground streams an answer with a typed key and shows its usage, metered as that key', async () => {
  for (const lang of ['en', 'zh']) {
    for (const [size, viewport] of [['desktop', DESKTOP], ['phone', PHONE]]) {
      const { context, page } = await loggedIn({ viewport, lang, theme: size === 'phone' ? 'dark' : 'light' })
      await playgroundAnswer(page, KEYS.bob, 'Tell me about streaming.')
      // bob may use chat-small only: the models list is his key's.
      assert.equal(await page.getAttribute('[data-test="pg-model"]', 'data-value'), 'chat-small')
      const answer = (await page.textContent('[data-test="pg-chat"] [data-role="assistant"] .text')).trim()
      assert.ok(answer.length > 0, 'an answer')
      const usageTag = page.locator('[data-test="pg-usage"]')
      const input = Number(await usageTag.getAttribute('data-input'))
      const output = Number(await usageTag.getAttribute('data-output'))
      assert.ok(input > 0 && output > 0, `usage ${input}/${output}`)
      // The request went through the pipeline as bob: its record has the same usage.
      const id = (await page.textContent('[data-test="pg-usage"] .mono')).trim()
      const record = await eventually(async () => (await usage(gw, 'usage/records', { request_id: id })).data[0], 'the record')
      assert.equal(record.api_key, 'bob')
      assert.equal(record.input_tokens, input)
      assert.equal(record.output_tokens, output)
      // The key is in no storage the page keeps.
      const storage = await page.evaluate(() => JSON.stringify({ ...localStorage, ...sessionStorage }) + document.cookie + location.href)
      assert.ok(!storage.includes(KEYS.bob), 'the key is kept in memory only')
      await page.screenshot({ path: join(SHOTS, `playground-${size}-${lang}.png`), fullPage: true })
      await context.close()
    }
  }
})

test('the playground shows a refusal: a wrong key, and a session-less call', async () => {
  const { context, page } = await loggedIn()
  await page.goto(`${gw.ui}playground`)
  await page.fill('[data-test="pg-key"] input', 'lw-not-a-key')
  await page.click('[data-test="pg-load"]')
  await page.waitForSelector('[data-test="pg-error"]')
  assert.match(await page.textContent('[data-test="pg-error"]'), /Incorrect API key/)
  // Without the CSRF token a POST is refused before the key is looked at.
  const forged = await page.evaluate(async (key) => (await fetch('/ui/api/playground/v1/chat/completions', {
    method: 'POST', headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ model: 'chat-small', messages: [{ role: 'user', content: 'x' }] }),
  })).status, KEYS.alice)
  assert.equal(forged, 403)
  await context.close()
  // Nor without a session at all.
  const r = await fetch(`${gw.admin}/ui/api/playground/v1/models`, { headers: { Authorization: `Bearer ${KEYS.alice}` } })
  assert.equal(r.status, 401)
})

test('the channel test button shows the status, latency and first tokens', async () => {
  const { context, page } = await loggedIn()
  await page.goto(`${gw.ui}channels`)
  await page.click('[data-test="test-default/mock"]')
  await page.waitForSelector('[data-test="test-result"][data-ok="true"]')
  assert.match(await page.textContent('[data-test="test-status"]'), /200/)
  assert.match(await page.textContent('[data-test="test-latency"]'), /\d+ (ms|s)/)
  assert.ok((await page.textContent('[data-test="test-answer"]')).trim().length > 0, 'the answer\'s first tokens')
  await page.screenshot({ path: join(SHOTS, 'channels-test-desktop-en.png') })
  // The route needs the session's CSRF token.
  const forged = await page.evaluate(async () => (await fetch('/ui/api/channels/default/mock/test', { method: 'POST' })).status)
  assert.equal(forged, 403)
  await context.close()
})

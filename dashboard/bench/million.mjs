// The usage UI on a big install: fills a SQLite usage store with a million
// records (weaver-bench-export --fill: spread over the last 3 days, 20 keys,
// 3 models), starts the release gateway on it, and measures with Debian's
// Chromium the overview's load and the logs page's next pages; then lists the
// built JavaScript per chunk. Prints figures, asserts nothing: a benchmark
// (`make ui-bench`), not part of `make test`.
//
//   RECORDS=1000000 PROFILE=release node bench/million.mjs   (after make ui and the release builds)
//   BENCH_DB=/tmp/million.db node bench/million.mjs          (fills once, then reuses that store)
import { spawnSync } from 'node:child_process'
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs'
import { join, resolve } from 'node:path'
import { gzipSync } from 'node:zlib'
import { chromium } from 'playwright-core'
import { startGateway, binary, usage, ADMIN_TOKEN } from '../e2e/gateway.mjs'
import { CHROMIUM, ARGS } from '../e2e/browser.mjs'

const RECORDS = Number(process.env.RECORDS ?? 1_000_000)
const NEXT_PAGES = 5
const RELOADS = 3
// The binaries' cargo profile: release (make ui-bench builds them), or debug.
const PROFILE = process.env.PROFILE ?? 'release'

const since = (t) => `${(performance.now() - t).toFixed(0)} ms`

const gw = await startGateway({
  bin: binary('weaver-gateway', PROFILE),
  prepare(data) {
    const db = join(data, 'usage.db')
    // BENCH_DB=path keeps the filled store there and reuses it (runs side
    // by side then measure the same records, and skip the minute-long fill).
    const kept = process.env.BENCH_DB
    if (kept && existsSync(kept)) {
      mkdirSync(data, { recursive: true })
      copyFileSync(kept, db)
      console.log(`# store copied from ${kept}`)
      return
    }
    const t = performance.now()
    const filled = spawnSync(binary('weaver-bench-export', PROFILE), ['--records', String(RECORDS), '--fill', `sqlite://${db}`], { stdio: 'inherit' })
    if (filled.status !== 0) throw new Error(`weaver-bench-export --fill failed (${filled.status})`)
    console.log(`# store filled: ${RECORDS} records in ${since(t)}`)
    if (kept) copyFileSync(db, kept)
  },
})
const browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS })
try {
  const range = { from: new Date(Date.now() - 7 * 86_400_000).toISOString() }
  const [total] = (await usage(gw, 'usage/summary', range)).data
  console.log(`# usage/summary over the last 7 days: ${total?.requests ?? 0} requests`)

  // A browser with nothing cached: the sign-in page, then the overview.
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, timezoneId: 'UTC' })
  // Timed in the page (no driver time): when the login form and the loaded
  // overview first show, and the sign-in click, in ms from the navigation.
  await context.addInitScript(() => {
    const marks = (window.__marks = {})
    addEventListener('click', (e) => e.target.closest?.('[data-test="login"]') && (marks.click ??= performance.now()), true)
    new MutationObserver(() => {
      if (!marks.login && document.querySelector('[data-test="token"] input')) marks.login = performance.now()
      if (!marks.overview && document.querySelector('[data-test="overview"][data-loading="false"]')) marks.overview = performance.now()
    }).observe(document, { subtree: true, childList: true, attributes: true })
  })
  const page = await context.newPage()
  const scripts = []
  page.on('response', (r) => r.url().endsWith('.js') && scripts.push(r.url().split('/').pop()))
  let t = performance.now()
  await page.goto(gw.ui)
  await page.waitForURL(/\/ui\/login/)
  await page.waitForSelector('[data-test="token"] input')
  await page.fill('[data-test="token"] input', ADMIN_TOKEN)
  await page.click('[data-test="login"]')
  await page.waitForSelector('[data-test="overview"][data-loading="false"]')
  console.log(`# overview, first load with sign-in (cold browser cache): ${since(t)}`)
  const marks = await page.evaluate(() => window.__marks)
  const [login, after] = [marks.login, marks.overview - marks.click].map(Math.round)
  console.log(`#   in the page: the login form ${login} ms after the navigation; the overview ${after} ms after the sign-in click; ${login + after} ms in all (the rest is typing: the driver's)`)
  console.log(`#   scripts loaded: ${scripts.join(', ')}`)
  // Where the time goes, as the page's own resource timings tell it: each
  // request's start and end in ms after the navigation, and the marks.
  const waterfall = await page.evaluate(() =>
    performance.getEntriesByType('resource').map((e) => [e.name.replace(location.origin, '').replace(/\?.*/, '?…').slice(0, 48), Math.round(e.startTime), Math.round(e.responseEnd)]))
  const nav = await page.evaluate(() => Math.round(performance.getEntriesByType('navigation')[0]?.responseEnd ?? 0))
  waterfall.push(['(index.html received)', 0, nav], ['(login form shown)', login, login], ['(sign-in click)', Math.round(marks.click), Math.round(marks.click)], ['(overview shown)', Math.round(marks.overview), Math.round(marks.overview)])
  waterfall.sort((a, b) => a[1] - b[1] || a[2] - b[2])
  for (const [name, start, end] of waterfall) console.log(`#     ${String(start).padStart(5)} -> ${String(end).padStart(5)} ms  ${name}`)
  for (let i = 0; i < RELOADS; i++) {
    t = performance.now()
    await page.reload()
    await page.waitForSelector('[data-test="overview"][data-loading="false"]')
    const shownAt = Math.round(await page.evaluate(() => window.__marks.overview))
    console.log(`# overview, load with a session (reload ${i + 1}): ${since(t)} (in the page: ${shownAt} ms after the navigation)`)
  }
  const shown = await page.getAttribute('[data-test="requests"]', 'data-value')
  console.log(`#   the overview shows ${shown} requests`)

  t = performance.now()
  await page.goto(`${gw.ui}logs?range=last7`)
  await page.waitForSelector('[data-test="logs"][data-loading="false"]')
  console.log(`# logs, first page: ${since(t)}`)
  for (let i = 0; i < NEXT_PAGES; i++) {
    // Timed inside the page, from the click to the next page's rows on screen:
    // Playwright's own click (actionability checks, its round trips) would add
    // 100-200 ms of driver time on this machine that no user waits for.
    const ms = await page.evaluate(() => new Promise((done) => {
      const logs = document.querySelector('[data-test="logs"]')
      const first = () => logs.querySelector('tbody tr')?.textContent
      const before = first()
      const start = performance.now()
      const shown = () => first() !== before && logs.dataset.loading === 'false'
      const watch = new MutationObserver(() => {
        if (shown()) {
          watch.disconnect()
          done(performance.now() - start)
        }
      })
      watch.observe(logs, { attributes: true, subtree: true, childList: true, characterData: true })
      document.querySelector('[data-test="next"]').click()
    }))
    console.log(`# logs, next page (page ${i + 2}), click to rows shown: ${ms.toFixed(0)} ms`)
  }
  await context.close()
} finally {
  await browser.close()
  await gw.stop()
}

// The built JavaScript, per chunk (every page is its own).
const assets = resolve(import.meta.dirname, '../dist/assets')
const kib = (n) => `${(n / 1024).toFixed(1)} KiB`
let all = 0, allGz = 0
for (const f of readdirSync(assets).filter((f) => f.endsWith('.js')).sort()) {
  const bytes = readFileSync(join(assets, f))
  const gz = gzipSync(bytes).length
  all += bytes.length
  allGz += gz
  console.log(`# chunk ${f}: ${kib(bytes.length)} (${kib(gz)} gzipped)`)
}
console.log(`# all JavaScript: ${kib(all)} (${kib(allGz)} gzipped)`)

// The usage UI on a big install: fills a SQLite usage store with a million
// records (weaver-bench-export --fill: spread over the last 3 days, 20 keys,
// 3 models), starts the release gateway on it, and measures with Debian's
// Chromium the overview's load and the logs page's next pages; then lists the
// built JavaScript per chunk. Prints figures, asserts nothing: a benchmark
// (`make ui-bench`), not part of `make test`.
//
//   RECORDS=1000000 PROFILE=release node bench/million.mjs   (after make ui and the release builds)
import { spawnSync } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
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
    const url = `sqlite://${join(data, 'usage.db')}`
    const t = performance.now()
    const filled = spawnSync(binary('weaver-bench-export', PROFILE), ['--records', String(RECORDS), '--fill', url], { stdio: 'inherit' })
    if (filled.status !== 0) throw new Error(`weaver-bench-export --fill failed (${filled.status})`)
    console.log(`# store filled: ${RECORDS} records in ${since(t)}`)
  },
})
const browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS })
try {
  const range = { from: new Date(Date.now() - 7 * 86_400_000).toISOString() }
  const [total] = (await usage(gw, 'usage/summary', range)).data
  console.log(`# usage/summary over the last 7 days: ${total?.requests ?? 0} requests`)

  // A browser with nothing cached: the sign-in page, then the overview.
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, timezoneId: 'UTC' })
  const page = await context.newPage()
  const scripts = []
  page.on('response', (r) => r.url().endsWith('.js') && scripts.push(r.url().split('/').pop()))
  let t = performance.now()
  await page.goto(gw.ui)
  await page.waitForURL(/\/ui\/login/)
  await page.waitForSelector('[data-test="token"] input')
  const loginShown = since(t)
  await page.fill('[data-test="token"] input', ADMIN_TOKEN)
  const clicked = performance.now()
  await page.click('[data-test="login"]')
  await page.waitForSelector('[data-test="overview"][data-loading="false"]')
  console.log(`# overview, first load with sign-in (cold browser cache): ${since(t)}`)
  console.log(`#   the login page shown after ${loginShown}; from the sign-in click to the overview: ${since(clicked)}`)
  console.log(`#   scripts loaded: ${scripts.join(', ')}`)
  // Where the time after the click goes, as the page's own resource timings
  // tell it (no driver time in them): each request from the sign-in on,
  // its start and its end in ms after the sign-in request started.
  const waterfall = await page.evaluate(() => {
    const all = performance.getEntriesByType('resource')
    const login = all.find((e) => e.name.endsWith('/ui/api/session') && e.initiatorType === 'fetch' && e.startTime > 0)
    const at = login?.startTime ?? 0
    return all
      .filter((e) => e.startTime >= at)
      .map((e) => [e.name.replace(location.origin, '').replace(/\?.*/, '?…').slice(0, 48), Math.round(e.startTime - at), Math.round(e.responseEnd - at)])
  })
  for (const [name, start, end] of waterfall) console.log(`#     ${String(start).padStart(5)} -> ${String(end).padStart(5)} ms  ${name}`)
  for (let i = 0; i < RELOADS; i++) {
    t = performance.now()
    await page.reload()
    await page.waitForSelector('[data-test="overview"][data-loading="false"]')
    console.log(`# overview, load with a session (reload ${i + 1}): ${since(t)}`)
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

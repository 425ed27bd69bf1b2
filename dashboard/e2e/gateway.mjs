// A real standalone gateway (the binary cargo built) on loopback ports, with
// a mock channel, two keys and a SQLite usage store in a temporary folder.
import { spawn } from 'node:child_process'
import { mkdtempSync, writeFileSync, rmSync, existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'

export const ADMIN_TOKEN = 'lwa-ui-test-token'
export const KEYS = { alice: 'lw-ui-alice', bob: 'lw-ui-bob' }

const MANIFESTS = `
apiVersion: llmweaver.io/v1alpha1
kind: Channel
metadata: {name: mock, namespace: default}
spec:
  provider: mock
  models:
    - name: chat-large
      pricing: {inputPerMillion: "2.50", outputPerMillion: "10.00"}
    - name: chat-small
      pricing: {inputPerMillion: "0.15", outputPerMillion: "0.60"}
---
apiVersion: v1
kind: Secret
metadata: {name: keys, namespace: default}
stringData: {alice: ${KEYS.alice}, bob: ${KEYS.bob}}
---
apiVersion: llmweaver.io/v1alpha1
kind: ApiKey
metadata: {name: alice, namespace: default}
spec:
  secretRef: {name: keys, key: alice}
  allowedModels: ["chat-*"]
  budget: {amount: "5.00", period: monthly}
  rateLimit: {requestsPerMinute: 100000}
---
apiVersion: llmweaver.io/v1alpha1
kind: ApiKey
metadata: {name: bob, namespace: default}
spec:
  secretRef: {name: keys, key: bob}
  allowedModels: ["chat-small"]
`

/** A binary cargo built: `profile` is `debug` or `release`. */
export function binary(name = 'weaver-gateway', profile = 'debug') {
  if (name === 'weaver-gateway' && profile === 'debug' && process.env.WEAVER_GATEWAY_BIN) return process.env.WEAVER_GATEWAY_BIN
  const target = process.env.CARGO_TARGET_DIR ?? resolve(import.meta.dirname, '../../target')
  const bin = join(target, profile, name)
  if (!existsSync(bin)) throw new Error(`${bin} is missing: cargo build ${profile === 'release' ? '--release ' : ''}-p ${name} (or set WEAVER_GATEWAY_BIN)`)
  return bin
}

/**
 * Starts the gateway; resolves once it listens, with its URLs. `bin`: another
 * binary (the timings use the release one); `prepare(dataDir)`: runs before
 * the start, to fill the usage store (`<dataDir>/usage.db`).
 */
export async function startGateway({ bin = binary(), prepare } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'weaver-ui-'))
  const manifests = join(dir, 'manifests')
  const { mkdirSync } = await import('node:fs')
  mkdirSync(manifests)
  writeFileSync(join(manifests, 'demo.yaml'), MANIFESTS)
  await prepare?.(join(dir, 'data'))
  const child = spawn(
    bin,
    ['--manifests', manifests, '--listen', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0', '--data-dir', join(dir, 'data'), '--log-format', 'json'],
    { env: { ...process.env, WEAVER_ADMIN_TOKEN: ADMIN_TOKEN, RUST_LOG: 'info' }, stdio: ['ignore', 'pipe', 'pipe'] },
  )
  let log = ''
  const listening = new Promise((ok, fail) => {
    const timer = setTimeout(() => fail(new Error(`gateway did not listen within 60 s:\n${log}`)), 60_000)
    const read = (chunk) => {
      log += chunk
      const line = log.split('\n').find((l) => l.includes('"listening"') || l.includes('listening'))
      const addr = line?.match(/"addr":"([^"]+)"/)?.[1]
      const admin = line?.match(/"admin_addr":"([^"]+)"/)?.[1]
      if (addr && admin) {
        clearTimeout(timer)
        ok({ addr, admin })
      }
    }
    child.stdout.on('data', read)
    child.stderr.on('data', read)
    child.on('exit', (code) => fail(new Error(`gateway exited (${code}):\n${log}`)))
  })
  const { addr, admin } = await listening
  return {
    client: `http://${addr}`,
    admin: `http://${admin}`,
    ui: `http://${admin}/ui/`,
    log: () => log,
    async stop() {
      child.kill('SIGTERM')
      await new Promise((ok) => (child.exitCode !== null ? ok() : child.on('exit', ok)))
      rmSync(dir, { recursive: true, force: true })
    },
  }
}

/** One chat request; resolves to its request id and status. */
export async function chat(gw, key, model, content = 'Hello there, how are you?') {
  const r = await fetch(`${gw.client}/v1/chat/completions`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ model, messages: [{ role: 'user', content }] }),
  })
  await r.arrayBuffer()
  return { id: r.headers.get('x-request-id'), status: r.status }
}

/** The usage API with the admin token. */
export async function usage(gw, path, query = {}) {
  const q = new URLSearchParams(Object.entries(query).filter(([, v]) => v !== undefined && v !== ''))
  const r = await fetch(`${gw.admin}/admin/v1/${path}?${q}`, { headers: { Authorization: `Bearer ${ADMIN_TOKEN}` } })
  if (!r.ok) throw new Error(`${path}: ${r.status} ${await r.text()}`)
  return path.startsWith('usage/export') ? r.text() : r.json()
}

/** Every record matching `query`, walked with the cursor. */
export async function allRecords(gw, query = {}) {
  const out = []
  let cursor
  do {
    const page = await usage(gw, 'usage/records', { ...query, limit: 1000, cursor })
    out.push(...page.data)
    cursor = page.next_cursor ?? undefined
  } while (cursor)
  return out
}

/** Polls `f` until it returns a truthy value, or fails after `ms`. */
export async function eventually(f, what, ms = 30_000) {
  const deadline = Date.now() + ms
  let last
  for (;;) {
    try {
      last = await f()
      if (last) return last
    } catch (e) {
      last = e
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${last}`)
    await new Promise((ok) => setTimeout(ok, 100))
  }
}

// The usage API (/admin/v1) and the UI's own routes (/ui/api), both on the
// gateway's admin listener or, in a cluster, the operator's HTTPS port. The
// session cookie authenticates; the CSRF token
// lives in memory only (never in storage) and goes with mutating calls.
import { reactive } from 'vue'

export interface Latency {
  p50: number | null
  p95: number | null
  p99: number | null
}

export interface SummaryRow {
  day?: string
  hour?: string
  namespace?: string
  api_key?: string
  model?: string
  channel?: string | null
  requests: number
  errors: number
  error_rate: number
  input_tokens: number
  output_tokens: number
  cached_input_tokens: number
  cost_usd: string
  latency_ms: Latency
}

export interface Attempt {
  channel: string
  status: number | null
  error: string | null
  ttft_ms: number | null
}

export interface UsageRecord {
  request_id: string
  /** The id the client sent (x-client-request-id or its own x-request-id); not unique. */
  client_request_id: string | null
  time: string
  namespace: string
  api_key: string
  channel: string | null
  model: string
  upstream_model: string
  status: number
  outcome: string
  input_tokens: number
  output_tokens: number
  cached_input_tokens: number
  reasoning_tokens: number
  estimated: boolean
  cost_usd: string
  duration_ms: number
  ttft_ms: number | null
  attempts: Attempt[]
}

export interface RecordPage {
  data: UsageRecord[]
  next_cursor: string | null
}

export interface KeyView {
  namespace: string
  name: string
  disabled: boolean
  expires_at: number | null
  allowed_models: string[]
  budget: { amount_usd: string; period: string } | null
  rate_limit: { requestsPerMinute?: number; tokensPerMinute?: number; maxConcurrent?: number } | null
  last_used: number | null
  /** Cluster: the viewer may disable and rotate it (RBAC `patch` on the ApiKey). */
  can_manage: boolean
}

export interface ModelView {
  name: string
  upstream: string
  input_per_million: string
  output_per_million: string
  cached_input_per_million: string
}

export interface ChannelView {
  namespace: string
  name: string
  provider: string
  models: ModelView[]
  /** The viewer may run the channel test (cluster: RBAC `create` on `channels/test`). */
  can_test: boolean
}

export interface Inventory {
  gateway_version: string
  snapshot_version: number | null
  keys: KeyView[]
  channels: ChannelView[]
  /** The server runs the Playground (the operator: when it knows the gateway Service). */
  playground: boolean
}

export interface KeyStatus {
  namespace: string
  name: string
  budget: {
    limit_usd: string
    period: string
    period_start: string
    remaining_usd: string
  } | null
  usage: { since: string; requests: number; input_tokens: number; output_tokens: number; cost_usd: string }
}

/** The channel test's answer (`POST .../channels/{ns}/{name}/test`). */
export interface TestReport {
  namespace: string
  channel: string
  model: string
  ok: boolean
  status: number
  latency_ms: number
  first_tokens?: string
  error?: { message: string; code: string }
  state: string
  probe: string
}

export class ApiError extends Error {
  constructor(
    public status: number,
    message: string,
  ) {
    super(message)
  }
}

export type Mode = 'standalone' | 'cluster'

/**
 * The session as the page knows it. In a cluster, `user` is who signed in and
 * `namespaces` the ones whose usage they may read (null: every namespace);
 * the server enforces it, the page only shows it.
 */
export const session = reactive({
  csrf: '',
  expiresAt: 0,
  checked: false,
  mode: 'standalone' as Mode,
  user: null as string | null,
  namespaces: null as string[] | null,
  /** Whether the menu offers the Playground: standalone always; the operator says (its inventory). */
  playground: true,
})

/** Called when the server says the session is gone (the router shows login). */
let onUnauthenticated: () => void = () => {}
export function whenUnauthenticated(f: () => void) {
  onUnauthenticated = f
}

export type Query = Record<string, string | number | undefined | null>

export function queryString(q: Query): string {
  const p = new URLSearchParams()
  for (const [k, v] of Object.entries(q)) if (v !== undefined && v !== null && v !== '') p.set(k, String(v))
  const s = p.toString()
  return s ? `?${s}` : ''
}

/** A failed answer as an error with the API's message (OpenAI-shaped errors). */
export async function errorOf(r: Response): Promise<ApiError> {
  let message = `${r.status} ${r.statusText}`
  try {
    message = (await r.json()).error?.message ?? message
  } catch {
    /* not JSON */
  }
  return new ApiError(r.status, message)
}

async function call<T>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = {}
  if (body !== undefined) headers['Content-Type'] = 'application/json'
  if (method !== 'GET' && session.csrf) headers['X-CSRF-Token'] = session.csrf
  const r = await fetch(path, {
    method,
    headers,
    credentials: 'same-origin',
    cache: 'no-store',
    body: body === undefined ? undefined : JSON.stringify(body),
  })
  if (r.status === 401 && path !== '/ui/api/session') {
    session.csrf = ''
    onUnauthenticated()
  }
  if (!r.ok) throw await errorOf(r)
  return r.status === 204 ? (undefined as T) : ((await r.json()) as T)
}

export const api = {
  summary: (q: Query) => call<{ data: SummaryRow[] }>('GET', `/admin/v1/usage/summary${queryString(q)}`).then((r) => r.data),
  records: (q: Query) => call<RecordPage>('GET', `/admin/v1/usage/records${queryString(q)}`),
  key: (ns: string, name: string) =>
    call<KeyStatus>('GET', `/admin/v1/keys/${encodeURIComponent(ns)}/${encodeURIComponent(name)}`),
  inventory: () => call<Inventory>('GET', '/ui/api/inventory'),
  testChannel: (ns: string, name: string) =>
    call<TestReport>('POST', `/ui/api/channels/${encodeURIComponent(ns)}/${encodeURIComponent(name)}/test`, {}),
  exportUrl: (format: 'csv' | 'jsonl', q: Query) => `/admin/v1/usage/export${queryString({ ...q, format })}`,
  /** Which sign-in the login page offers; `oidc` names the OIDC provider (cluster). */
  mode: () => call<{ mode: Mode; oidc?: string }>('GET', '/ui/api/mode'),
  /** Cluster only: sets the ApiKey's spec.disabled. */
  setDisabled: (ns: string, name: string, disabled: boolean) =>
    call<{ disabled: boolean }>('POST', `${keyPath(ns, name)}/disabled`, { disabled }),
  /** Cluster only: a new key in the key's Secret, answered once. */
  rotate: (ns: string, name: string) =>
    call<{ key: string; secret: string; previous_valid_until: number }>('POST', `${keyPath(ns, name)}/rotate`),
}

function keyPath(ns: string, name: string): string {
  return `/ui/api/keys/${encodeURIComponent(ns)}/${encodeURIComponent(name)}`
}

interface SessionInfo {
  mode: Mode
  expires_at: number
  csrf: string
  user: string | null
  namespaces: string[] | null
}

function keep(s: SessionInfo) {
  session.csrf = s.csrf
  session.expiresAt = s.expires_at
  session.mode = s.mode
  session.user = s.user
  session.namespaces = s.namespaces
}

export const auth = {
  /** Whether the browser has a session (after a reload: the cookie's). */
  async check(): Promise<boolean> {
    try {
      keep(await call<SessionInfo>('GET', '/ui/api/session'))
      return true
    } catch {
      return false
    } finally {
      session.checked = true
    }
  },
  /** Where the OIDC button sends the browser (the operator redirects to the issuer). */
  oidcLoginUrl(next: string): string {
    return `/ui/api/oidc/login${queryString({ next })}`
  },
  async login(token: string) {
    keep(await call<SessionInfo>('POST', '/ui/api/session', { token }))
  },
  async refresh() {
    keep(await call<SessionInfo>('POST', '/ui/api/session/refresh'))
  },
  async logout() {
    try {
      await call<void>('DELETE', '/ui/api/session')
    } finally {
      session.csrf = ''
      session.expiresAt = 0
      session.user = null
      session.namespaces = null
      session.playground = true
    }
  },
}

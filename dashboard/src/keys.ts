// Key status and the manifest view (pure: unit-tested).
import type { KeyStatus, KeyView } from './api'

export type KeyState = 'ready' | 'expired' | 'budget_exceeded' | 'disabled'

/** What the gateway would do with the key now (`now` in unix seconds). */
export function keyState(k: KeyView, status: KeyStatus | undefined, now: number): KeyState {
  if (k.disabled) return 'disabled'
  if (k.expires_at !== null && k.expires_at <= now) return 'expired'
  if (status?.budget && Number(status.budget.remaining_usd) <= 0) return 'budget_exceeded'
  return 'ready'
}

/** Share of the budget spent, 0-100 (capped), or null without a budget. */
export function budgetUse(status: KeyStatus | undefined): number | null {
  const b = status?.budget
  if (!b) return null
  const limit = Number(b.limit_usd)
  if (limit <= 0) return 100
  return Math.min(100, (Number(status.usage.cost_usd) / limit) * 100)
}

function yamlString(s: string): string {
  return /^[A-Za-z0-9_./*-]+$/.test(s) && !/^(true|false|null|yes|no|on|off|~)$/i.test(s) ? s : JSON.stringify(s)
}

/**
 * The ApiKey as a manifest to edit in Git: the fields the gateway enforces.
 * The Secret holding the key is not known here, so `secretRef` is left for
 * the editor to keep from the manifest in the repository.
 */
export function keyYaml(k: KeyView): string {
  const lines = [
    'apiVersion: llmweaver.io/v1alpha1',
    'kind: ApiKey',
    'metadata:',
    `  name: ${yamlString(k.name)}`,
    `  namespace: ${yamlString(k.namespace)}`,
    'spec:',
    '  # secretRef: {name: ..., key: ...}  (unchanged: keep it from your manifest)',
  ]
  if (k.allowed_models.length) lines.push(`  allowedModels: [${k.allowed_models.map(yamlString).join(', ')}]`)
  if (k.disabled) lines.push('  disabled: true')
  if (k.expires_at !== null) lines.push(`  expiresAt: "${new Date(k.expires_at * 1000).toISOString().replace('.000Z', 'Z')}"`)
  if (k.budget) lines.push('  budget:', `    amount: "${k.budget.amount_usd}"`, `    period: ${k.budget.period}`)
  const r = k.rate_limit
  if (r && (r.requestsPerMinute || r.tokensPerMinute || r.maxConcurrent)) {
    lines.push('  rateLimit:')
    if (r.requestsPerMinute) lines.push(`    requestsPerMinute: ${r.requestsPerMinute}`)
    if (r.tokensPerMinute) lines.push(`    tokensPerMinute: ${r.tokensPerMinute}`)
    if (r.maxConcurrent) lines.push(`    maxConcurrent: ${r.maxConcurrent}`)
  }
  return lines.join('\n') + '\n'
}

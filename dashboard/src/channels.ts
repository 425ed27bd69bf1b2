// The channels page's rows (pure: unit-tested): every configured channel,
// with its usage in the range when it has any, then channels that only the
// usage remembers (removed since), which cannot be tested.
import type { ChannelView, SummaryRow } from './api'
import { EMPTY } from './summary'

export interface ChannelRow {
  /** `namespace/name` for a configured channel, else the recorded name. */
  id: string
  /** Empty for a channel no longer configured. */
  namespace: string
  name: string
  provider: string | null
  /** Whether the viewer may test it (false for a channel no longer configured). */
  canTest: boolean
  stats: SummaryRow
}

/** Records name channels without their namespace (`SummaryRow.channel`). */
export function channelRows(configured: ChannelView[], stats: SummaryRow[]): ChannelRow[] {
  const byName = new Map(stats.filter((s) => s.channel).map((s) => [s.channel as string, s]))
  const rows: ChannelRow[] = configured.map((c) => ({
    id: `${c.namespace}/${c.name}`,
    namespace: c.namespace,
    name: c.name,
    provider: c.provider,
    canTest: c.can_test,
    stats: byName.get(c.name) ?? { ...EMPTY, channel: c.name },
  }))
  const known = new Set(configured.map((c) => c.name))
  for (const s of stats) {
    if (s.channel && !known.has(s.channel)) rows.push({ id: s.channel, namespace: '', name: s.channel, provider: null, canTest: false, stats: s })
  }
  return rows
}

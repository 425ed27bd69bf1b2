// The logs page's filters as they live in the URL (pure: unit-tested).
import type { Query } from './api'
import { presetRange, PRESETS, type Preset } from './time'

export const FILTERS = ['api_key', 'model', 'channel', 'status', 'outcome', 'request_id', 'namespace'] as const
export type Filter = (typeof FILTERS)[number]

import type { LocationQuery, LocationQueryRaw } from 'vue-router'

type RouteQuery = LocationQuery | LocationQueryRaw

function text(v: unknown): string | undefined {
  return typeof v === 'string' && v !== '' ? v : undefined
}

/** The usage API query of the page's URL query (range in `tz`). */
export function recordQuery(q: RouteQuery, tz: string): Query {
  const preset = (PRESETS as readonly string[]).includes(String(q.range)) ? (q.range as Preset) : 'last7'
  const out: Query = { ...presetRange(preset, tz) }
  // A request id names one request whenever it was made.
  if (text(q.request_id)) {
    delete out.from
    delete out.to
  }
  for (const f of FILTERS) out[f] = text(q[f])
  return out
}

/** The URL query with `changes` applied; any change of filter starts at page one. */
export function withFilters(q: RouteQuery, changes: Partial<Record<Filter | 'range', string | undefined>>): LocationQueryRaw {
  const next: LocationQueryRaw = { ...q, ...changes, cursor: undefined }
  for (const [k, v] of Object.entries(next)) if (v === '' || v === undefined) delete next[k]
  return next
}

// Calendar ranges in the reporting time zone. Every range is a half-open
// [from, to) pair of instants (RFC 3339, UTC) that the usage API takes as is;
// the zone decides where days start, never the browser's own zone.
import { TZDate } from '@date-fns/tz'

/** A calendar date, `YYYY-MM-DD`. */
export type Civil = string

export type Range = {
  from: string
  to: string
}

export const PRESETS = ['today', 'yesterday', 'last7', 'last30', 'month'] as const
export type Preset = (typeof PRESETS)[number]

/** The date `now` falls on in `tz`. */
export function dateIn(now: Date, tz: string): Civil {
  const z = new TZDate(now.getTime(), tz)
  return civil(z.getFullYear(), z.getMonth() + 1, z.getDate())
}

function civil(y: number, m: number, d: number): Civil {
  return `${String(y).padStart(4, '0')}-${String(m).padStart(2, '0')}-${String(d).padStart(2, '0')}`
}

function parts(date: Civil): [number, number, number] {
  const [y, m, d] = date.split('-').map(Number)
  return [y, m, d]
}

/** `date` moved by `days` (calendar arithmetic, no zone involved). */
export function addDays(date: Civil, days: number): Civil {
  const [y, m, d] = parts(date)
  const t = new Date(Date.UTC(y, m - 1, d + days))
  return civil(t.getUTCFullYear(), t.getUTCMonth() + 1, t.getUTCDate())
}

/** The instant `date` starts in `tz` (its local midnight). */
export function startOf(date: Civil, tz: string): Date {
  const [y, m, d] = parts(date)
  return new Date(new TZDate(y, m - 1, d, 0, 0, 0, 0, tz).getTime())
}

function iso(d: Date): string {
  return d.toISOString().replace('.000Z', 'Z')
}

/** The range of whole local days [first, last] in `tz`. */
export function days(first: Civil, last: Civil, tz: string): Range {
  return { from: iso(startOf(first, tz)), to: iso(startOf(addDays(last, 1), tz)) }
}

/** A preset's range in `tz` at `now`. */
export function presetRange(preset: Preset, tz: string, now: Date = new Date()): Range {
  const today = dateIn(now, tz)
  switch (preset) {
    case 'today':
      return days(today, today, tz)
    case 'yesterday':
      return days(addDays(today, -1), addDays(today, -1), tz)
    case 'last7':
      return days(addDays(today, -6), today, tz)
    case 'last30':
      return days(addDays(today, -29), today, tz)
    case 'month': {
      const [y, m] = parts(today)
      const first = civil(y, m, 1)
      const next = m === 12 ? civil(y + 1, 1, 1) : civil(y, m + 1, 1)
      return { from: iso(startOf(first, tz)), to: iso(startOf(next, tz)) }
    }
  }
}

/** Every date of a range, for charts that show days without usage too. */
export function datesOf(range: Range, tz: string): Civil[] {
  const out: Civil[] = []
  const last = dateIn(new Date(Date.parse(range.to) - 1), tz)
  for (let d = dateIn(new Date(range.from), tz); d <= last; d = addDays(d, 1)) out.push(d)
  return out
}

/** An instant as local date and time in `tz`: `2026-11-29 08:00:00`. */
export function formatInstant(t: string | number, tz: string): string {
  const z = new TZDate(typeof t === 'number' ? t : Date.parse(t), tz)
  const p = (n: number) => String(n).padStart(2, '0')
  return `${dateIn(z, tz)} ${p(z.getHours())}:${p(z.getMinutes())}:${p(z.getSeconds())}`
}

/** The zones the browser knows, for the setting. */
export function zones(): string[] {
  const intl = Intl as unknown as { supportedValuesOf?: (k: string) => string[] }
  const list = intl.supportedValuesOf?.('timeZone') ?? []
  return list.includes('UTC') ? list : ['UTC', ...list]
}

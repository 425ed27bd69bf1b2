// Shaping summary rows for the pages (pure: unit-tested).
import type { SummaryRow } from './api'
import { colorOf } from './colors'

/** A model's name for legends and tables: refusals before routing have none. */
export function modelName(r: SummaryRow): string {
  return r.model || '(none)'
}

export const EMPTY: SummaryRow = {
  requests: 0, errors: 0, error_rate: 0, input_tokens: 0, output_tokens: 0, cached_input_tokens: 0,
  cost_usd: '0', latency_ms: { p50: null, p95: null, p99: null },
}

/** The one row of an ungrouped summary (none when there was no usage). */
export function total(rows: SummaryRow[]): SummaryRow {
  return rows[0] ?? EMPTY
}

/** Rows by cost, highest first, at most `n`. */
export function top(rows: SummaryRow[], n: number): SummaryRow[] {
  return [...rows].sort((a, b) => Number(b.cost_usd) - Number(a.cost_usd) || b.requests - a.requests).slice(0, n)
}

/** A stacked bar chart: one series per model, one bar per date (zero-filled). */
export function byDayOption(rows: SummaryRow[], dates: string[], metric: 'cost' | 'requests' = 'cost') {
  const models = [...new Set(rows.map(modelName))].sort()
  const value = (r: SummaryRow) => (metric === 'cost' ? Number(r.cost_usd) : r.requests)
  const series = models.map((m) => {
    const perDay = new Map(rows.filter((r) => modelName(r) === m).map((r) => [r.day, value(r)]))
    return {
      name: m, type: 'bar', stack: 'all', itemStyle: { color: colorOf(m) },
      data: dates.map((d) => perDay.get(d) ?? 0),
    }
  })
  return {
    backgroundColor: 'transparent',
    tooltip: { trigger: 'axis' },
    legend: { type: 'scroll', top: 0 },
    grid: { left: 48, right: 12, top: 36, bottom: 28 },
    xAxis: { type: 'category', data: dates },
    yAxis: { type: 'value' },
    series,
  }
}

/** A pie of cost per model. */
export function byModelOption(rows: SummaryRow[]) {
  return {
    backgroundColor: 'transparent',
    tooltip: { trigger: 'item' },
    legend: { type: 'scroll', top: 0 },
    series: [{
      type: 'pie', radius: ['40%', '70%'], top: 30,
      data: rows.map((r) => ({ name: modelName(r), value: Number(r.cost_usd), itemStyle: { color: colorOf(modelName(r)) } })),
    }],
  }
}

// Display of the usage API's numbers. Money arrives as exact decimal strings
// and is shown rounded; the exact value stays in the element's data-value.

/** `"0.000123"` as `$0.0001`; amounts of a dollar and more with cents. */
export function usd(value: string | number | null | undefined): string {
  const n = Number(value ?? 0)
  if (!Number.isFinite(n)) return '-'
  const digits = n === 0 ? 2 : Math.abs(n) >= 1 ? 2 : Math.abs(n) >= 0.01 ? 4 : 6
  return `$${n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits })}`
}

/** Counts with thousands separators; large ones shortened (`1.2M`). */
export function count(n: number | null | undefined): string {
  const v = n ?? 0
  if (Math.abs(v) >= 1e9) return `${(v / 1e9).toFixed(1)}B`
  if (Math.abs(v) >= 1e6) return `${(v / 1e6).toFixed(1)}M`
  return v.toLocaleString('en-US')
}

/**
 * The key a request used, as `namespace/name`; `unauthenticated` (the
 * translated word) for a request refused before a key was known, whose
 * record names none.
 */
export function keyName(namespace: string | null | undefined, key: string | null | undefined, unauthenticated: string): string {
  return key ? `${namespace ?? ''}/${key}` : unauthenticated
}

export function percent(ratio: number | null | undefined): string {
  return `${((ratio ?? 0) * 100).toFixed(ratio && ratio < 0.001 ? 3 : 1)}%`
}

export function ms(v: number | null | undefined): string {
  if (v == null) return '-'
  return v >= 1000 ? `${(v / 1000).toFixed(2)} s` : `${Math.round(v)} ms`
}

/** Exact sum of decimal USD strings (nano-dollar integers underneath). */
export function sumUsd(values: string[]): string {
  let nanos = 0n
  for (const v of values) nanos += toNanos(v)
  return fromNanos(nanos)
}

export function toNanos(v: string): bigint {
  const [whole, frac = ''] = v.split('.')
  return BigInt(whole || '0') * 1_000_000_000n + BigInt((frac + '000000000').slice(0, 9))
}

export function fromNanos(n: bigint): string {
  const whole = n / 1_000_000_000n
  const frac = (n % 1_000_000_000n).toString().padStart(9, '0').replace(/0+$/, '')
  return frac ? `${whole}.${frac}` : `${whole}`
}

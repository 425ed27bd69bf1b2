import { describe, expect, it } from 'vitest'
import { addDays, dateIn, datesOf, days, formatInstant, presetRange, startOf } from '../src/time'

describe('ranges in the reporting time zone', () => {
  // 2026-11-29 20:30 UTC is already 30 Nov in Shanghai (+08) and still 29 Nov in New York (-05).
  const now = new Date('2026-11-29T20:30:00Z')

  it('puts an instant on the zone\'s calendar date', () => {
    expect(dateIn(now, 'UTC')).toBe('2026-11-29')
    expect(dateIn(now, 'Asia/Shanghai')).toBe('2026-11-30')
    expect(dateIn(now, 'America/New_York')).toBe('2026-11-29')
  })

  it('starts days at the zone\'s midnight', () => {
    expect(startOf('2026-11-30', 'Asia/Shanghai').toISOString()).toBe('2026-11-29T16:00:00.000Z')
    expect(startOf('2026-11-29', 'America/New_York').toISOString()).toBe('2026-11-29T05:00:00.000Z')
    // Daylight saving: New York's 8 March 2026 is 23 hours long.
    const r = days('2026-03-08', '2026-03-08', 'America/New_York')
    expect(Date.parse(r.to) - Date.parse(r.from)).toBe(23 * 3600_000)
  })

  it('computes the presets', () => {
    expect(presetRange('today', 'Asia/Shanghai', now)).toEqual({ from: '2026-11-29T16:00:00Z', to: '2026-11-30T16:00:00Z' })
    expect(presetRange('yesterday', 'UTC', now)).toEqual({ from: '2026-11-28T00:00:00Z', to: '2026-11-29T00:00:00Z' })
    expect(presetRange('month', 'Asia/Shanghai', now)).toEqual({ from: '2026-10-31T16:00:00Z', to: '2026-11-30T16:00:00Z' })
    expect(presetRange('month', 'UTC', new Date('2026-12-15T00:00:00Z'))).toEqual({ from: '2026-12-01T00:00:00Z', to: '2027-01-01T00:00:00Z' })
    const week = presetRange('last7', 'UTC', now)
    expect(datesOf(week, 'UTC')).toEqual(['2026-11-23', '2026-11-24', '2026-11-25', '2026-11-26', '2026-11-27', '2026-11-28', '2026-11-29'])
  })

  it('does calendar arithmetic across months and years', () => {
    expect(addDays('2026-12-31', 1)).toBe('2027-01-01')
    expect(addDays('2026-03-01', -1)).toBe('2026-02-28')
  })

  it('formats instants in the zone', () => {
    expect(formatInstant('2026-11-29T20:30:05Z', 'Asia/Shanghai')).toBe('2026-11-30 04:30:05')
  })
})

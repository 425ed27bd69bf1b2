import { describe, expect, it } from 'vitest'
import { sumUsd, usd, count, percent, toNanos, fromNanos, keyName } from '../src/format'
import { colorOf } from '../src/colors'
import { total, top, byDayOption, EMPTY } from '../src/summary'
import { keyState, budgetUse, keyYaml } from '../src/keys'
import { recordQuery, withFilters } from '../src/logs'
import type { KeyStatus, KeyView, SummaryRow } from '../src/api'

const row = (over: Partial<SummaryRow>): SummaryRow => ({ ...EMPTY, ...over })

describe('money and numbers', () => {
  it('sums decimal dollars exactly', () => {
    expect(sumUsd(['0.1', '0.2', '0.000000001'])).toBe('0.300000001')
    expect(fromNanos(toNanos('12.5'))).toBe('12.5')
    expect(sumUsd([])).toBe('0')
  })
  it('shows amounts readably', () => {
    expect(usd('1234.5')).toBe('$1,234.50')
    expect(usd('0.0123')).toBe('$0.0123')
    expect(usd('0.000123')).toBe('$0.000123')
    expect(count(1_234_567)).toBe('1.2M')
    expect(percent(0.25)).toBe('25.0%')
  })
})

describe('keys', () => {
  it('names a request refused before a key was known plainly', () => {
    expect(keyName('team-a', 'ci', '(unauthenticated)')).toBe('team-a/ci')
    expect(keyName('', '', '(unauthenticated)')).toBe('(unauthenticated)')
    expect(keyName(undefined, null, '（未认证）')).toBe('（未认证）')
  })
})

describe('summaries', () => {
  it('gives each model one colour everywhere', () => {
    expect(colorOf('gpt-4o')).toBe(colorOf('gpt-4o'))
    const opt = byDayOption([row({ day: '2026-11-29', model: 'gpt-4o', cost_usd: '1.5' })], ['2026-11-28', '2026-11-29'])
    expect(opt.series[0]).toMatchObject({ name: 'gpt-4o', data: [0, 1.5], itemStyle: { color: colorOf('gpt-4o') } })
  })
  it('ranks by spend and totals an empty answer as zero', () => {
    const rows = [row({ model: 'a', cost_usd: '1' }), row({ model: 'b', cost_usd: '3' }), row({ model: 'c', cost_usd: '2' })]
    expect(top(rows, 2).map((r) => r.model)).toEqual(['b', 'c'])
    expect(total([])).toEqual(EMPTY)
  })
})

describe('keys', () => {
  const key: KeyView = {
    namespace: 'team-a', name: 'ci', disabled: false, expires_at: null, allowed_models: ['gpt-*'],
    budget: { amount_usd: '50', period: 'monthly' }, rate_limit: { requestsPerMinute: 60 }, last_used: null, can_manage: false,
  }
  const status = (spent: string, remaining: string): KeyStatus => ({
    namespace: 'team-a', name: 'ci',
    budget: { limit_usd: '50', period: 'monthly', period_start: '', remaining_usd: remaining },
    usage: { since: '', requests: 1, input_tokens: 0, output_tokens: 0, cost_usd: spent },
  })
  it('derives the status the gateway enforces', () => {
    expect(keyState(key, status('10', '40'), 0)).toBe('ready')
    expect(keyState(key, status('50', '0'), 0)).toBe('budget_exceeded')
    expect(keyState({ ...key, expires_at: 100 }, undefined, 100)).toBe('expired')
    expect(keyState({ ...key, disabled: true }, undefined, 0)).toBe('disabled')
    expect(budgetUse(status('10', '40'))).toBe(20)
  })
  it('writes the key as a manifest', () => {
    const yaml = keyYaml(key)
    expect(yaml).toContain('kind: ApiKey')
    expect(yaml).toContain('  namespace: team-a')
    expect(yaml).toContain('  allowedModels: [gpt-*]')
    expect(yaml).toContain('    amount: "50"\n    period: monthly')
    expect(yaml).toContain('    requestsPerMinute: 60')
  })
})

describe('log filters in the URL', () => {
  it('turns the URL into a usage API query', () => {
    const q = recordQuery({ range: 'today', model: 'm', status: '502', cursor: 'x' }, 'UTC')
    expect(q.model).toBe('m')
    expect(q.status).toBe('502')
    expect(q.from).toMatch(/T00:00:00Z$/)
    expect('cursor' in q).toBe(false)
    // A request id is looked up whenever it was.
    const byId = recordQuery({ range: 'today', request_id: 'abc' }, 'UTC')
    expect(byId.from).toBeUndefined()
    expect(byId.request_id).toBe('abc')
  })
  it('starts over at page one when a filter changes', () => {
    expect(withFilters({ range: 'month', cursor: 'c', model: 'a' }, { model: '' })).toEqual({ range: 'month' })
  })
})

import { describe, expect, it } from 'vitest'
import { mount } from '@vue/test-utils'
import Stat from '../src/components/Stat.vue'

describe('Stat', () => {
  it('shows the rounded figure and keeps the exact one', () => {
    const w = mount(Stat, { props: { label: 'Spend', shown: '$0.0001', value: '0.000123', test: 'cost' } })
    expect(w.text()).toContain('Spend')
    expect(w.text()).toContain('$0.0001')
    expect(w.find('[data-test="cost"]').attributes('data-value')).toBe('0.000123')
  })
})

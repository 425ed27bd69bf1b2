// The page's range, held in the URL (`?range=month`) so links share it and
// the back button restores it; computed in the reporting time zone.
import { computed } from 'vue'
import { useRoute, useRouter } from 'vue-router'
import { PRESETS, presetRange, type Preset } from './time'
import { settings } from './settings'

export function useRange(fallback: Preset = 'last7') {
  const route = useRoute()
  const router = useRouter()
  const preset = computed<Preset>({
    get: () => {
      const q = route.query.range
      return typeof q === 'string' && (PRESETS as readonly string[]).includes(q) ? (q as Preset) : fallback
    },
    set: (v) => router.push({ query: { ...route.query, range: v, cursor: undefined } }),
  })
  const range = computed(() => presetRange(preset.value, settings.tz))
  return { preset, range }
}

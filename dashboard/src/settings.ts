// The viewer's settings: reporting time zone, language, theme. Kept in
// localStorage (they are preferences, not credentials).
import { reactive, watch } from 'vue'

export type Lang = 'en' | 'zh'
export type Theme = 'light' | 'dark'

function stored<T extends string>(name: string, fallback: T): T {
  try {
    return (localStorage.getItem(`weaver.${name}`) as T | null) ?? fallback
  } catch {
    return fallback
  }
}

function browserZone(): string {
  try {
    return Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC'
  } catch {
    return 'UTC'
  }
}

export const settings = reactive({
  tz: stored('tz', browserZone()),
  lang: stored<Lang>('lang', navigator.language?.startsWith('zh') ? 'zh' : 'en'),
  theme: stored<Theme>('theme', window.matchMedia?.('(prefers-color-scheme: dark)').matches ? 'dark' : 'light'),
})

for (const k of ['tz', 'lang', 'theme'] as const) {
  watch(
    () => settings[k],
    (v) => {
      try {
        localStorage.setItem(`weaver.${k}`, v)
      } catch {
        /* private mode */
      }
    },
  )
}

import { createApp } from 'vue'
import App from './App.vue'
import { router } from './router'
import { makeI18n } from './i18n'
import { settings } from './settings'
import { whenUnauthenticated } from './api'

const i18n = makeI18n(settings.lang)
whenUnauthenticated(() => {
  const here = router.currentRoute.value
  if (here.name !== 'login') router.push({ name: 'login', query: { next: here.fullPath } })
})
createApp(App).use(router).use(i18n).mount('#app')

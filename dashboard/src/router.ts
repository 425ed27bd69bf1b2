import { createRouter, createWebHistory, type RouteLocationNormalized } from 'vue-router'
import { auth, session } from './api'

// One chunk per page: the overview does not load the logs page's code.
export const router = createRouter({
  history: createWebHistory('/ui/'),
  routes: [
    { path: '/', name: 'overview', component: () => import('./pages/Overview.vue') },
    { path: '/keys', name: 'keys', component: () => import('./pages/Keys.vue') },
    { path: '/channels', name: 'channels', component: () => import('./pages/Channels.vue') },
    { path: '/models', name: 'models', component: () => import('./pages/Models.vue') },
    { path: '/logs', name: 'logs', component: () => import('./pages/Logs.vue') },
    { path: '/playground', name: 'playground', component: () => import('./pages/Playground.vue') },
    { path: '/settings', name: 'settings', component: () => import('./pages/Settings.vue') },
    { path: '/login', name: 'login', component: () => import('./pages/Login.vue'), meta: { open: true } },
    { path: '/:rest(.*)', redirect: '/' },
  ],
})

/**
 * Starts loading the code of the page `to` shows (its chunk and the chunks it
 * imports, the charts' among them), so that it arrives while the session is
 * checked and, without one, while the login page waits for the token; the
 * router's own load of it later finds it done.
 */
function preload(to: RouteLocationNormalized) {
  for (const record of to.matched) {
    const page = record.components?.default
    if (typeof page === 'function') (page as () => Promise<unknown>)().catch(() => {})
  }
}

router.beforeEach(async (to) => {
  if (to.meta.open) return true
  if (!session.csrf) {
    preload(to)
    if (!(await auth.check())) return { name: 'login', query: { next: to.fullPath } }
  }
  return true
})

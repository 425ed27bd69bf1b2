import { createRouter, createWebHistory, type RouteRecordNormalized } from 'vue-router'
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
 * Starts loading the code of the page a route shows (its chunk and the
 * chunks it imports, the charts' among them); the router's own load of it
 * later finds it done.
 */
function preload(to: { matched: RouteRecordNormalized[] }) {
  for (const record of to.matched) {
    const page = record.components?.default
    if (typeof page === 'function') (page as () => Promise<unknown>)().catch(() => {})
  }
}

router.beforeEach(async (to) => {
  if (to.meta.open) return true
  if (!session.csrf) {
    if (!(await auth.check())) return { name: 'login', query: { next: to.fullPath } }
  }
  return true
})

// The page the user signs in for loads once the login form is up, while it
// waits for the token, so that after the sign-in only its data is fetched.
// Not earlier: its code (the charts') would hold the form back.
const idle: (f: () => void) => void = window.requestIdleCallback ?? ((f) => setTimeout(f, 1))
router.afterEach((to) => {
  if (to.name !== 'login') return
  const next = typeof to.query.next === 'string' && to.query.next.startsWith('/') ? to.query.next : '/'
  idle(() => preload(router.resolve(next)))
})

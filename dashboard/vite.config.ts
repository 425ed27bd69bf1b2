import { defineConfig } from 'vitest/config'
import vue from '@vitejs/plugin-vue'

// `npm run dev` proxies the API to a gateway started with `make run`.
const admin = 'http://127.0.0.1:9090'

export default defineConfig({
  base: '/ui/',
  plugins: [vue()],
  build: { outDir: 'dist', emptyOutDir: true, chunkSizeWarningLimit: 700 },
  server: { proxy: { '/admin': admin, '/ui/api': admin } },
  test: { environment: 'happy-dom', include: ['test/**/*.test.ts'] },
})

import { createI18n } from 'vue-i18n'

const en = {
  app: 'LLM Weaver',
  nav: { overview: 'Overview', keys: 'Keys', channels: 'Channels', models: 'Models', logs: 'Logs', playground: 'Playground', settings: 'Settings' },
  common: {
    tz: 'Time zone', refresh: 'Refresh', loading: 'Loading…', none: 'No data', close: 'Close',
    requests: 'Requests', errors: 'Errors', cost: 'Spend', tokens: 'Tokens', input: 'Input', output: 'Output',
    cached: 'Cached', model: 'Model', key: 'Key', channel: 'Channel', namespace: 'Namespace', status: 'Status',
    outcome: 'Outcome', time: 'Time', duration: 'Duration', ttft: 'First token', logout: 'Log out',
    errorRate: 'Error ratio', p50: 'p50', p95: 'p95 latency', p99: 'p99', range: 'Range', all: 'All',
    unauthenticated: '(unauthenticated)',
  },
  presets: { today: 'Today', yesterday: 'Yesterday', last7: 'Last 7 days', last30: 'Last 30 days', month: 'This month' },
  login: { title: 'Sign in', token: 'Admin token', hint: 'The token is in .weaver/admin-token (make run), WEAVER_ADMIN_TOKEN or --admin-token-file.', submit: 'Sign in', invalid: 'Invalid admin token' },
  overview: {
    spendToday: 'Spend today', spendMonth: 'Spend this month', byDay: 'Spend by day and model', byModel: 'Spend by model',
    topKeys: 'Top keys', topModels: 'Top models',
  },
  keys: {
    budget: 'Budget', limits: 'Rate limits', lastUsed: 'Last used', usage: 'Usage over time', copyYaml: 'Copy as YAML',
    copied: 'Copied', never: 'never', readOnly: 'Read-only here: edit the ApiKey manifest (the gateway reloads it).',
    status: { ready: 'ready', expired: 'expired', budget_exceeded: 'budget exceeded', disabled: 'disabled' },
    allowed: 'Allowed models', period: 'period',
  },
  channels: {
    provider: 'Provider', successRate: 'Success rate', cachedShare: 'Cached-token share', test: 'Test', testing: 'Testing…',
    testTitle: 'Channel test', ok: 'OK', failed: 'Failed', latency: 'Latency', answer: 'Answer', state: 'Routing state', probe: 'Health check',
  },
  playground: {
    key: 'API key (lw-…)', loadModels: 'Load models', system: 'System prompt (optional)', message: 'Message (Ctrl+Enter sends)',
    send: 'Send', stop: 'Stop', clear: 'Clear', empty: 'Type an API key, pick a model and send a message.',
    hint: 'The key stays in this page\'s memory only. Requests go through the gateway\'s pipeline as that key: its limits, budget and usage apply.',
    user: 'You', assistant: 'Assistant', noUsage: 'no usage chunk',
  },
  models: { servedBy: 'Served by', upstream: 'Upstream model', prices: 'Price per 1M tokens (in / out / cached)' },
  logs: {
    requestId: 'Request id', clientRequestId: 'Client request id', search: 'Search by request id', next: 'Next page', prev: 'Previous page', first: 'First page',
    export: 'Export', detail: 'Request', attempts: 'Attempts', error: 'Error', estimated: 'estimated', apply: 'Apply', clear: 'Clear',
  },
  // Cluster mode (the operator): Kubernetes sign-in, namespaces, key actions.
  cluster: {
    token: 'Kubernetes token', hint: 'A bearer token for this cluster, e.g. `kubectl create token <serviceaccount> -n <namespace>`. It is exchanged for a session cookie and not kept.',
    invalid: 'Token not accepted', oidc: 'Sign in with {provider}', or: 'or with a Kubernetes token',
    oidcFailed: 'Sign-in with the identity provider failed ({reason}); the operator log says why.', namespaces: 'Namespaces', allNamespaces: 'all namespaces', noNamespaces: 'Your RBAC grants no namespace here: ask for `get` on `apikeys/usage`.',
    manageHint: 'Disable and rotate where your RBAC allows `patch` on the ApiKey; other changes: edit the manifest.',
    disable: 'Disable', enable: 'Enable', rotate: 'Rotate', disableConfirm: 'Disable this key now? Requests with it are refused at once.',
    enableConfirm: 'Enable this key again?', rotateConfirm: 'Write a new key? The old one keeps working for the rotation grace period.',
    newKey: 'New key', newKeyHint: 'Shown once: copy it now. The old key stops working at', done: 'Done', copy: 'Copy',
  },
  settings: { versions: 'Versions', gateway: 'Gateway', snapshot: 'Snapshot', ui: 'UI', language: 'Language', theme: 'Theme', light: 'Light', dark: 'Dark', tzHint: 'Days, presets and charts use this zone; exports name their range in it.' },
}

const zh: typeof en = {
  app: 'LLM Weaver',
  nav: { overview: '概览', keys: '密钥', channels: '渠道', models: '模型', logs: '日志', playground: '试用', settings: '设置' },
  common: {
    tz: '时区', refresh: '刷新', loading: '加载中…', none: '暂无数据', close: '关闭',
    requests: '请求数', errors: '错误数', cost: '花费', tokens: 'Token 数', input: '输入', output: '输出',
    cached: '缓存', model: '模型', key: '密钥', channel: '渠道', namespace: '命名空间', status: '状态',
    outcome: '结果', time: '时间', duration: '耗时', ttft: '首 Token', logout: '退出登录',
    errorRate: '错误率', p50: 'p50', p95: 'p95 延迟', p99: 'p99', range: '时间范围', all: '全部',
    unauthenticated: '（未认证）',
  },
  presets: { today: '今天', yesterday: '昨天', last7: '最近 7 天', last30: '最近 30 天', month: '本月' },
  login: { title: '登录', token: '管理令牌', hint: '令牌位于 .weaver/admin-token（make run）、WEAVER_ADMIN_TOKEN 或 --admin-token-file。', submit: '登录', invalid: '管理令牌无效' },
  overview: {
    spendToday: '今日花费', spendMonth: '本月花费', byDay: '按天和模型的花费', byModel: '按模型的花费',
    topKeys: '花费最多的密钥', topModels: '花费最多的模型',
  },
  keys: {
    budget: '预算', limits: '速率限制', lastUsed: '最近使用', usage: '用量趋势', copyYaml: '复制为 YAML',
    copied: '已复制', never: '从未', readOnly: '此处只读：请编辑 ApiKey 清单（网关会自动重新加载）。',
    status: { ready: '可用', expired: '已过期', budget_exceeded: '超出预算', disabled: '已禁用' },
    allowed: '允许的模型', period: '周期',
  },
  channels: {
    provider: '提供方', successRate: '成功率', cachedShare: '缓存 Token 占比', test: '测试', testing: '测试中…',
    testTitle: '渠道测试', ok: '成功', failed: '失败', latency: '延迟', answer: '回答', state: '路由状态', probe: '健康检查',
  },
  playground: {
    key: 'API 密钥（lw-…）', loadModels: '加载模型', system: '系统提示词（可选）', message: '消息（Ctrl+Enter 发送）',
    send: '发送', stop: '停止', clear: '清空', empty: '输入 API 密钥，选择模型，然后发送消息。',
    hint: '密钥只保存在本页面的内存中。请求以该密钥经过网关的处理流程：其限流、预算和用量记录均适用。',
    user: '你', assistant: '助手', noUsage: '没有用量数据块',
  },
  models: { servedBy: '提供渠道', upstream: '上游模型', prices: '每百万 Token 价格（输入 / 输出 / 缓存）' },
  logs: {
    requestId: '请求 ID', clientRequestId: '客户端请求 ID', search: '按请求 ID 搜索', next: '下一页', prev: '上一页', first: '第一页',
    export: '导出', detail: '请求详情', attempts: '尝试', error: '错误', estimated: '估算', apply: '应用', clear: '清除',
  },
  cluster: {
    token: 'Kubernetes 令牌', hint: '本集群的 Bearer 令牌，例如 `kubectl create token <serviceaccount> -n <namespace>`。它会换成会话 Cookie，不会被保存。',
    invalid: '令牌未被接受', oidc: '使用 {provider} 登录', or: '或使用 Kubernetes 令牌',
    oidcFailed: '通过身份提供方登录失败（{reason}）；原因见 operator 日志。', namespaces: '命名空间', allNamespaces: '全部命名空间', noNamespaces: '你的 RBAC 未授权任何命名空间：请申请 `apikeys/usage` 的 `get` 权限。',
    manageHint: '在 RBAC 允许对 ApiKey 执行 `patch` 时可禁用和轮换；其他修改请编辑清单。',
    disable: '禁用', enable: '启用', rotate: '轮换', disableConfirm: '立即禁用此密钥？使用它的请求会立即被拒绝。',
    enableConfirm: '重新启用此密钥？', rotateConfirm: '生成新密钥？旧密钥在轮换宽限期内仍然有效。',
    newKey: '新密钥', newKeyHint: '只显示一次：请立即复制。旧密钥失效时间：', done: '完成', copy: '复制',
  },
  settings: { versions: '版本', gateway: '网关', snapshot: '快照', ui: '界面', language: '语言', theme: '主题', light: '浅色', dark: '深色', tzHint: '日期、预设范围和图表均使用此时区；导出的范围也按此时区计算。' },
}

export const messages = { en, zh }

export function makeI18n(locale: 'en' | 'zh') {
  return createI18n({ legacy: false, locale, fallbackLocale: 'en', messages })
}

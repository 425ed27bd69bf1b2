// The playground's calls: the client API (/v1/...) under /ui/api/playground
// for a signed-in page, with the API key the user typed: served by a
// standalone gateway's admin listener in-process, or passed by the operator
// to the gateway Service (streamed through, the key kept nowhere). The key lives in the page's memory only and goes as
// `Authorization: Bearer`; the session's CSRF token goes with the POST.
import { errorOf, session } from './api'

const BASE = '/ui/api/playground/v1'

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant'
  content: string
}

/** The usage chunk's numbers (OpenAI's `usage`). */
export interface Usage {
  prompt_tokens: number
  completion_tokens: number
  total_tokens: number
  prompt_tokens_details?: { cached_tokens?: number }
}

/** What a streamed answer has come to so far. */
export interface Answer {
  content: string
  finishReason: string | null
  usage: Usage | null
  /** Milliseconds from sending to the first content, and to the end. */
  ttftMs: number | null
  totalMs: number | null
  requestId: string | null
}

export function emptyAnswer(): Answer {
  return { content: '', finishReason: null, usage: null, ttftMs: null, totalMs: null, requestId: null }
}

/**
 * Server-sent events, fed text as it arrives in arbitrary pieces: returns the
 * `data` of each event completed by this piece (multi-line data joined with
 * newlines; comments and other fields skipped).
 */
export class SseReader {
  private buffer = ''
  private data: string[] = []

  push(text: string): string[] {
    this.buffer += text
    const out: string[] = []
    for (;;) {
      const end = this.buffer.search(/\r\n|\r|\n/)
      if (end < 0) break
      // A lone \r at the end may be the first half of \r\n: wait for more.
      if (this.buffer[end] === '\r' && end === this.buffer.length - 1) break
      const line = this.buffer.slice(0, end)
      this.buffer = this.buffer.slice(this.buffer.startsWith('\r\n', end) ? end + 2 : end + 1)
      if (line === '') {
        if (this.data.length) out.push(this.data.join('\n'))
        this.data = []
      } else if (line.startsWith('data:')) {
        this.data.push(line.slice(line.startsWith('data: ') ? 6 : 5))
      }
    }
    return out
  }
}

/** An error object inside the stream (the upstream failed after the start). */
export class StreamError extends Error {}

/**
 * Applies one chunk (`data` of an event) to the answer; false for `[DONE]`.
 * Content deltas are appended; the usage chunk (no choices) sets `usage`.
 */
export function applyChunk(answer: Answer, data: string): boolean {
  if (data.trim() === '[DONE]') return false
  const chunk = JSON.parse(data)
  if (chunk.error) throw new StreamError(chunk.error.message ?? JSON.stringify(chunk.error))
  for (const choice of chunk.choices ?? []) {
    const delta = choice.delta?.content
    if (typeof delta === 'string') answer.content += delta
    if (choice.finish_reason) answer.finishReason = choice.finish_reason
  }
  if (chunk.usage) answer.usage = chunk.usage
  return true
}

/** The models `key` may use (`GET /v1/models`). */
export async function listModels(key: string): Promise<string[]> {
  const r = await fetch(`${BASE}/models`, {
    headers: { Authorization: `Bearer ${key}` },
    credentials: 'same-origin',
    cache: 'no-store',
  })
  if (!r.ok) throw await errorOf(r)
  const body = (await r.json()) as { data: { id: string }[] }
  return body.data.map((m) => m.id).sort()
}

/**
 * Streams a chat completion; `onUpdate` sees the answer after every piece.
 * Aborting `signal` stops the request (the gateway records it as cancelled).
 */
export async function streamChat(
  key: string,
  model: string,
  messages: ChatMessage[],
  signal: AbortSignal,
  onUpdate: (a: Answer) => void,
  now: () => number = () => performance.now(),
): Promise<Answer> {
  const answer = emptyAnswer()
  const started = now()
  const r = await fetch(`${BASE}/chat/completions`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json', 'X-CSRF-Token': session.csrf },
    credentials: 'same-origin',
    cache: 'no-store',
    body: JSON.stringify({ model, messages, stream: true, stream_options: { include_usage: true } }),
    signal,
  })
  answer.requestId = r.headers.get('x-request-id')
  if (!r.ok || !r.body) throw await errorOf(r)
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader()
  const sse = new SseReader()
  for (;;) {
    const { value, done } = await reader.read()
    if (done) break
    for (const data of sse.push(value)) {
      const before = answer.content.length
      if (!applyChunk(answer, data)) continue
      if (answer.ttftMs === null && answer.content.length > before) answer.ttftMs = Math.round(now() - started)
    }
    onUpdate(answer)
  }
  answer.totalMs = Math.round(now() - started)
  onUpdate(answer)
  return answer
}

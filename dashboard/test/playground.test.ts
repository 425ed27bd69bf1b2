import { describe, expect, it, vi, beforeEach, afterEach } from 'vitest'
import { SseReader, applyChunk, emptyAnswer, streamChat, StreamError } from '../src/playground'
import { channelRows } from '../src/channels'
import { EMPTY } from '../src/summary'
import type { ChannelView } from '../src/api'

const chunk = (content: string | null, extra: object = {}) =>
  JSON.stringify({ object: 'chat.completion.chunk', choices: content === null ? [] : [{ index: 0, delta: { content } }], ...extra })

describe('server-sent events', () => {
  it('yields each event once its blank line arrives, however the text is cut', () => {
    const text = `: comment\n\ndata: ${chunk('Hel')}\n\ndata: ${chunk('lo')}\r\n\r\ndata: [DONE]\n\n`
    for (const size of [1, 3, 7, text.length]) {
      const sse = new SseReader()
      const out: string[] = []
      for (let i = 0; i < text.length; i += size) out.push(...sse.push(text.slice(i, i + size)))
      expect(out).toEqual([chunk('Hel'), chunk('lo'), '[DONE]'])
    }
  })
  it('joins multi-line data and ignores other fields', () => {
    const sse = new SseReader()
    expect(sse.push('event: x\nid: 1\ndata:a\ndata: b\n\n')).toEqual(['a\nb'])
  })
})

describe('chunks', () => {
  it('appends deltas, keeps the finish reason and the usage chunk', () => {
    const a = emptyAnswer()
    expect(applyChunk(a, chunk('Hi'))).toBe(true)
    applyChunk(a, JSON.stringify({ choices: [{ index: 0, delta: { content: ' there' }, finish_reason: 'stop' }] }))
    expect(a.usage).toBeNull()
    applyChunk(a, chunk(null, { usage: { prompt_tokens: 5, completion_tokens: 2, total_tokens: 7 } }))
    expect(a).toMatchObject({ content: 'Hi there', finishReason: 'stop', usage: { prompt_tokens: 5, completion_tokens: 2 } })
    expect(applyChunk(a, '[DONE]')).toBe(false)
  })
  it('turns an error in the stream into an exception', () => {
    expect(() => applyChunk(emptyAnswer(), JSON.stringify({ error: { message: 'upstream gone' } }))).toThrow(StreamError)
  })
})

describe('streamChat', () => {
  const realFetch = globalThis.fetch
  afterEach(() => {
    globalThis.fetch = realFetch
  })
  let sent: { url: string; init: RequestInit } | null
  beforeEach(() => {
    sent = null
  })

  function respondWith(pieces: string[], status = 200) {
    globalThis.fetch = vi.fn(async (url: RequestInfo | URL, init?: RequestInit) => {
      sent = { url: String(url), init: init ?? {} }
      const body = new ReadableStream<Uint8Array>({
        start(c) {
          for (const p of pieces) c.enqueue(new TextEncoder().encode(p))
          c.close()
        },
      })
      return new Response(body, { status, headers: { 'x-request-id': 'req-1', 'content-type': 'text/event-stream' } })
    }) as typeof fetch
  }

  it('sends the key and asks for usage; times the first token and the end', async () => {
    respondWith([`data: ${chunk('Hel')}\n\n`, `data: ${chunk('lo')}\n\ndata: ${chunk(null, { usage: { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 } })}\n\n`, 'data: [DONE]\n\n'])
    let clock = 0
    const updates: string[] = []
    const a = await streamChat('lw-k', 'm', [{ role: 'user', content: 'hi' }], new AbortController().signal, (x) => updates.push(x.content), () => (clock += 10))
    expect(sent?.url).toBe('/ui/api/playground/v1/chat/completions')
    const headers = sent?.init.headers as Record<string, string>
    expect(headers.Authorization).toBe('Bearer lw-k')
    expect(JSON.parse(String(sent?.init.body))).toMatchObject({ model: 'm', stream: true, stream_options: { include_usage: true } })
    expect(a).toMatchObject({ content: 'Hello', usage: { total_tokens: 5 }, requestId: 'req-1', ttftMs: 10 })
    expect(a.totalMs).toBeGreaterThan(a.ttftMs ?? 0)
    expect(updates.at(0)).toBe('Hel')
    expect(updates.at(-1)).toBe('Hello')
  })

  it('stops when aborted, mid-answer', async () => {
    globalThis.fetch = vi.fn(async (_url: RequestInfo | URL, init?: RequestInit) => {
      const body = new ReadableStream<Uint8Array>({
        start(c) {
          c.enqueue(new TextEncoder().encode(`data: ${chunk('Hel')}\n\n`))
          // Never closed: the stream ends only by the abort.
          init?.signal?.addEventListener('abort', () => c.error(new DOMException('aborted', 'AbortError')))
        },
      })
      return new Response(body, { status: 200 })
    }) as typeof fetch
    const stop = new AbortController()
    const seen: string[] = []
    const done = streamChat('k', 'm', [], stop.signal, (a) => {
      seen.push(a.content)
      stop.abort()
    })
    await expect(done).rejects.toThrow(/abort/i)
    expect(seen).toEqual(['Hel'])
  })

  it('reports the gateway\'s error message', async () => {
    respondWith([JSON.stringify({ error: { message: 'Incorrect API key provided.' } })], 401)
    await expect(streamChat('bad', 'm', [], new AbortController().signal, () => {})).rejects.toThrow('Incorrect API key provided.')
  })
})

describe('channel rows', () => {
  const mock: ChannelView = { namespace: 'default', name: 'mock', provider: 'mock', models: [], can_test: true }
  it('lists configured channels first, with their usage or none, then removed ones', () => {
    const rows = channelRows([mock, { ...mock, name: 'idle', can_test: false }], [
      { ...EMPTY, channel: 'gone', requests: 2 },
      { ...EMPTY, channel: 'mock', requests: 5 },
    ])
    // Only a configured channel the viewer may test offers the test.
    expect(rows.map((r) => [r.id, r.stats.requests, r.namespace, r.canTest])).toEqual([
      ['default/mock', 5, 'default', true],
      ['default/idle', 0, 'default', false],
      ['gone', 2, '', false],
    ])
  })
})

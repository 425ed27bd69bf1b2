//! Token counts for answers whose upstream reported no usage (a stream cut by
//! the client or the upstream, a channel that sends no usage chunk), counted
//! with OpenAI's `o200k_base` encoding from what the request and the answer
//! carried, in OpenAI's wire format or Anthropic's (a Messages request, its
//! message or its stream events). Runs only when a record is finished without reported usage, never
//! on the path where the provider reports it; its inputs are what
//! [`Capture`](super::capture::Capture) kept.
//!
//! Counting is bounded: at most [`TEXT_CAP`] bytes of text per direction are
//! tokenized (a few milliseconds at worst; the tokenizer is linear on any
//! input), and the count is scaled by the share of the text — or, when only a
//! prefix of the bytes was kept, of the bytes — that it covered.

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

use super::Usage;
use crate::relay::sse::SseFramer;

/// Bytes of text tokenized per direction; the rest is extrapolated.
pub(crate) const TEXT_CAP: usize = 64 * 1024;

/// Tokens OpenAI adds per chat message (role and separators) and once per
/// request (the reply's priming), as in its token-counting guide.
const PER_MESSAGE: u64 = 3;
const PER_REQUEST: u64 = 3;

/// What a count covered: `scaled` says part of it was extrapolated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Estimate {
    pub usage: Usage,
    pub scaled: bool,
}

/// Text gathered for one direction, bounded: the first [`TEXT_CAP`] bytes
/// are kept; the length of the rest is only counted.
#[derive(Default)]
struct Text {
    kept: String,
    total: usize,
}

impl Text {
    fn push(&mut self, s: &str) {
        self.total += s.len();
        let room = TEXT_CAP.saturating_sub(self.kept.len());
        if room > 0 {
            self.kept.push_str(prefix(s, room));
        }
    }

    /// Tokens of the kept text, scaled up to the whole.
    fn tokens(&self) -> (u64, bool) {
        if self.total == 0 {
            return (0, false);
        }
        let counted = bpe_openai::o200k_base().count(self.kept.as_str()) as u64;
        scale(counted, self.kept.len(), self.total)
    }
}

/// `counted` tokens of `covered` bytes, scaled to `total` bytes.
fn scale(counted: u64, covered: usize, total: usize) -> (u64, bool) {
    if covered >= total || covered == 0 {
        return (counted, false);
    }
    let scaled = (u128::from(counted) * total as u128).div_ceil(covered as u128);
    (u64::try_from(scaled).unwrap_or(u64::MAX), true)
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character.
fn prefix(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Input tokens of a chat or embeddings request. `body` is the whole request,
/// or its first bytes when `total` is larger (then the raw bytes are counted
/// and scaled: they are not valid JSON any more).
pub(crate) fn input(body: &[u8], total: usize) -> (u64, bool) {
    if body.len() < total {
        let mut text = Text::default();
        text.push(&String::from_utf8_lossy(body));
        let (n, _) = text.tokens();
        return (scale(n, body.len(), total).0, true);
    }
    let Ok(request) = serde_json::from_slice::<Request<'_>>(body) else {
        return (0, false);
    };
    let mut text = Text::default();
    let mut framing = 0;
    if let Some(system) = &request.system {
        framing += PER_MESSAGE;
        system.collect(&mut text);
    }
    if let Some(instructions) = &request.instructions {
        framing += PER_MESSAGE;
        text.push(instructions);
    }
    if let Some(messages) = &request.messages {
        framing += PER_REQUEST;
        for m in messages {
            framing += PER_MESSAGE;
            m.content.collect(&mut text);
            if let Some(name) = m.name.as_deref() {
                framing += 1;
                text.push(name);
            }
            for call in m.tool_calls.iter().flatten() {
                call.function.collect(&mut text);
            }
        }
    }
    for definitions in [request.tools, request.functions].into_iter().flatten() {
        text.push(definitions.get());
    }
    let mut ids = 0;
    if let Some(input) = &request.input {
        input.collect(&mut text, &mut ids);
    }
    let (n, scaled) = text.tokens();
    (n + framing + ids, scaled)
}

/// Output tokens (reasoning included, and on its own) of an answer: a
/// `chat.completion` object, or the events of a stream.
pub(crate) fn output(answer: bytes::Bytes, stream: bool) -> (Usage, bool) {
    let (content, reasoning) = said(answer, stream);
    let (c, c_scaled) = content.tokens();
    let (r, r_scaled) = reasoning.tokens();
    (Usage { input: 0, cached_input: 0, cache_write: 0, output: c + r, reasoning: r }, c_scaled || r_scaled)
}

/// The text of a stream's deltas (the first [`TEXT_CAP`] bytes), joined as
/// the client reads it: what a secret split across events looks like whole.
pub(crate) fn streamed_text(answer: bytes::Bytes) -> String {
    let (mut content, reasoning) = said(answer, true);
    content.kept.push_str(&reasoning.kept);
    content.kept
}

/// The answer's text, and its reasoning text.
fn said(answer: bytes::Bytes, stream: bool) -> (Text, Text) {
    let mut content = Text::default();
    let mut reasoning = Text::default();
    if stream {
        let mut framer = SseFramer::default();
        let mut events = framer.push(answer.clone());
        let mut each = |event: &[u8]| {
            for line in event.split(|b| *b == b'\n') {
                let Some(data) = line.strip_prefix(b"data:") else { continue };
                if let Ok(chunk) = serde_json::from_slice::<StreamChunk<'_>>(data.trim_ascii()) {
                    for choice in chunk.choices.iter().flatten() {
                        choice.delta.collect(&mut content, &mut reasoning);
                    }
                    match &chunk.delta {
                        Some(StreamDelta::Block(delta)) => delta.collect(&mut content, &mut reasoning),
                        // A Responses event's text, arguments or reasoning fragment.
                        Some(StreamDelta::Text(fragment)) => match chunk.kind.as_deref() {
                            Some("response.reasoning_text.delta" | "response.reasoning_summary_text.delta") => {
                                reasoning.push(fragment);
                            }
                            _ => content.push(fragment),
                        },
                        None => {}
                    }
                    for candidate in chunk.candidates.iter().flatten() {
                        candidate.collect(&mut content, &mut reasoning);
                    }
                }
            }
        };
        while let Some(range) = events.next_range() {
            each(&events.data[range]);
        }
        if let Some(rest) = framer.finish() {
            each(&rest);
        }
    } else if let Ok(whole) = serde_json::from_slice::<Completion<'_>>(&answer) {
        for choice in whole.choices.iter().flatten() {
            choice.message.collect(&mut content, &mut reasoning);
        }
        for block in whole.content.iter().flatten() {
            block.collect(&mut content, &mut reasoning);
        }
        for item in whole.output.iter().flatten() {
            let into = if item.kind.as_deref() == Some("reasoning") { &mut reasoning } else { &mut content };
            item.collect(into);
        }
    }
    (content, reasoning)
}

// The parts of the OpenAI wire format that carry text; everything else is
// skipped without being built. Strings may hold escapes, so they are owned
// where needed (`Cow` borrows when it can).

type Str<'a> = std::borrow::Cow<'a, str>;

#[derive(Deserialize)]
struct Request<'a> {
    #[serde(default, borrow)]
    messages: Option<Vec<Message<'a>>>,
    /// Anthropic's system prompt: a string or text blocks.
    #[serde(default, borrow)]
    system: Option<Content<'a>>,
    #[serde(default, borrow)]
    tools: Option<&'a RawValue>,
    #[serde(default, borrow)]
    functions: Option<&'a RawValue>,
    /// Embeddings' texts, or the Responses API's input.
    #[serde(default, borrow)]
    input: Option<EmbeddingInput<'a>>,
    /// The Responses API's system prompt.
    #[serde(default, borrow)]
    instructions: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(default, borrow)]
    content: Content<'a>,
    #[serde(default, borrow)]
    name: Option<Str<'a>>,
    #[serde(default, borrow)]
    tool_calls: Option<Vec<ToolCall<'a>>>,
}

#[derive(Deserialize, Default)]
#[serde(untagged)]
enum Content<'a> {
    Text(#[serde(borrow)] Str<'a>),
    Parts(#[serde(borrow)] Vec<Part<'a>>),
    #[default]
    Other,
}

impl Content<'_> {
    fn collect(&self, text: &mut Text) {
        match self {
            Content::Text(t) => text.push(t),
            Content::Parts(parts) => parts.iter().for_each(|p| p.collect(text)),
            Content::Other => {}
        }
    }
}

/// A content part, or an Anthropic content block.
#[derive(Deserialize)]
struct Part<'a> {
    #[serde(default, borrow)]
    text: Option<Str<'a>>,
    /// An Anthropic `tool_use` block's input (a `Value`: parts are read
    /// through an untagged enum, which raw values cannot pass).
    #[serde(default)]
    input: Option<serde_json::Value>,
    /// An Anthropic `tool_result` block's content.
    #[serde(default, borrow)]
    content: Option<Box<Content<'a>>>,
}

impl Part<'_> {
    fn collect(&self, text: &mut Text) {
        if let Some(t) = self.text.as_deref() {
            text.push(t);
        }
        if let Some(input) = &self.input {
            text.push(&input.to_string());
        }
        if let Some(content) = &self.content {
            content.collect(text);
        }
    }
}

/// A tool call of a request's assistant message, an answer, or a stream's
/// delta (`index` and `id` are read by the Messages translation).
#[derive(Deserialize)]
pub(crate) struct ToolCall<'a> {
    /// Which call a streamed delta continues.
    #[serde(default)]
    pub index: Option<u32>,
    #[serde(default, borrow)]
    pub id: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub function: Function<'a>,
}

#[derive(Deserialize, Default)]
pub(crate) struct Function<'a> {
    #[serde(default, borrow)]
    pub name: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub arguments: Option<Str<'a>>,
}

impl Function<'_> {
    fn collect(&self, text: &mut Text) {
        self.name.iter().chain(self.arguments.iter()).for_each(|t| text.push(t));
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum EmbeddingInput<'a> {
    One(#[serde(borrow)] Str<'a>),
    Many(#[serde(borrow)] Vec<EmbeddingItem<'a>>),
    Ids(Vec<IgnoredAny>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum EmbeddingItem<'a> {
    Text(#[serde(borrow)] Str<'a>),
    Ids(Vec<IgnoredAny>),
    /// A Responses API input item: a message, a function call or its output.
    Item(#[serde(borrow)] InputItem<'a>),
    /// One token id of a flat id list.
    Id(IgnoredAny),
}

impl EmbeddingInput<'_> {
    fn collect(&self, text: &mut Text, ids: &mut u64) {
        match self {
            EmbeddingInput::One(t) => text.push(t),
            EmbeddingInput::Many(items) => {
                for item in items {
                    match item {
                        EmbeddingItem::Text(t) => text.push(t),
                        EmbeddingItem::Ids(v) => *ids += v.len() as u64,
                        EmbeddingItem::Item(item) => item.collect(text),
                        EmbeddingItem::Id(_) => *ids += 1,
                    }
                }
            }
            EmbeddingInput::Ids(v) => *ids += v.len() as u64,
        }
    }
}

/// A Responses API input item, or an output item of a response.
#[derive(Deserialize)]
struct InputItem<'a> {
    #[serde(default, rename = "type", borrow)]
    kind: Option<Str<'a>>,
    #[serde(default, borrow)]
    content: Content<'a>,
    #[serde(default, borrow)]
    name: Option<Str<'a>>,
    #[serde(default, borrow)]
    arguments: Option<Str<'a>>,
    #[serde(default, borrow)]
    output: Content<'a>,
}

impl InputItem<'_> {
    fn collect(&self, text: &mut Text) {
        self.content.collect(text);
        self.output.collect(text);
        self.name.iter().chain(self.arguments.iter()).for_each(|t| text.push(t));
    }
}

/// What an answer's message or a stream's delta says (the parts of
/// OpenAI's wire format that carry text; also what the Messages
/// translation reads of an answer).
#[derive(Deserialize, Default)]
pub(crate) struct Said<'a> {
    #[serde(default, borrow)]
    pub content: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub refusal: Option<Str<'a>>,
    /// DeepSeek, vLLM and others put reasoning text here.
    #[serde(default, borrow)]
    pub reasoning_content: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub reasoning: Option<Str<'a>>,
    #[serde(default, borrow)]
    pub tool_calls: Option<Vec<ToolCall<'a>>>,
    #[serde(default, borrow)]
    pub function_call: Option<Function<'a>>,
}

impl Said<'_> {
    fn collect(&self, content: &mut Text, reasoning: &mut Text) {
        self.content.iter().chain(self.refusal.iter()).for_each(|t| content.push(t));
        self.reasoning_content.iter().chain(self.reasoning.iter()).for_each(|t| reasoning.push(t));
        self.tool_calls.iter().flatten().for_each(|c| c.function.collect(content));
        self.function_call.iter().for_each(|f| f.collect(content));
    }
}

#[derive(Deserialize)]
struct Completion<'a> {
    #[serde(default, borrow)]
    choices: Option<Vec<CompletionChoice<'a>>>,
    /// An Anthropic message's blocks.
    #[serde(default, borrow)]
    content: Option<Vec<Block<'a>>>,
    /// A Responses API response's items.
    #[serde(default, borrow)]
    output: Option<Vec<InputItem<'a>>>,
}

/// An Anthropic content block of an answer, or the delta of one.
#[derive(Deserialize)]
struct Block<'a> {
    #[serde(default, borrow)]
    text: Option<Str<'a>>,
    #[serde(default, borrow)]
    thinking: Option<Str<'a>>,
    #[serde(default, borrow)]
    input: Option<&'a RawValue>,
    /// An `input_json_delta`'s fragment.
    #[serde(default, borrow)]
    partial_json: Option<Str<'a>>,
    /// A Cohere v2 stream event's delta (`content-delta`, `tool-plan-delta`,
    /// `tool-call-start`, `tool-call-delta`; <https://docs.cohere.com/v2/docs/streaming>).
    #[serde(default, borrow)]
    message: Option<Box<CohereDelta<'a>>>,
}

impl Block<'_> {
    fn collect(&self, content: &mut Text, reasoning: &mut Text) {
        self.text.iter().chain(self.partial_json.iter()).for_each(|t| content.push(t));
        self.input.iter().for_each(|i| content.push(i.get()));
        self.thinking.iter().for_each(|t| reasoning.push(t));
        if let Some(message) = &self.message {
            message.content.iter().for_each(|c| c.collect(content, reasoning));
            // The tool plan is text the model wrote; Cohere bills it as output.
            message.tool_plan.iter().for_each(|t| content.push(t));
            message.tool_calls.iter().filter_map(|c| c.function.as_ref()).for_each(|f| f.collect(content));
        }
    }
}

/// What one Cohere stream event adds to the message: a text or thinking
/// fragment, a tool plan fragment, or a tool call's name and argument fragment.
#[derive(Deserialize)]
struct CohereDelta<'a> {
    #[serde(default, borrow)]
    content: Option<Block<'a>>,
    #[serde(default, borrow)]
    tool_plan: Option<Str<'a>>,
    #[serde(default, borrow)]
    tool_calls: Option<CohereToolCall<'a>>,
}

#[derive(Deserialize)]
struct CohereToolCall<'a> {
    #[serde(default, borrow)]
    function: Option<Function<'a>>,
}

#[derive(Deserialize)]
struct CompletionChoice<'a> {
    #[serde(default, borrow)]
    message: Said<'a>,
}

#[derive(Deserialize)]
struct StreamChunk<'a> {
    #[serde(default, borrow)]
    choices: Option<Vec<StreamChoice<'a>>>,
    /// An Anthropic `content_block_delta`'s delta, or a Responses event's.
    #[serde(default, borrow)]
    delta: Option<StreamDelta<'a>>,
    /// A Responses event's type.
    #[serde(default, rename = "type", borrow)]
    kind: Option<Str<'a>>,
    /// A Gemini stream event's candidates.
    #[serde(default, borrow)]
    candidates: Option<Vec<GeminiCandidate<'a>>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StreamDelta<'a> {
    Text(#[serde(borrow)] Str<'a>),
    Block(#[serde(borrow)] Block<'a>),
}

#[derive(Deserialize)]
struct GeminiCandidate<'a> {
    #[serde(default, borrow)]
    content: Option<GeminiContent<'a>>,
}

#[derive(Deserialize)]
struct GeminiContent<'a> {
    #[serde(default, borrow)]
    parts: Vec<GeminiPart<'a>>,
}

/// A Gemini part: text (a thought when `thought`), or a function call.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GeminiPart<'a> {
    #[serde(default, borrow)]
    text: Option<Str<'a>>,
    #[serde(default)]
    thought: Option<bool>,
    #[serde(default)]
    function_call: Option<serde_json::Value>,
}

impl GeminiCandidate<'_> {
    fn collect(&self, content: &mut Text, reasoning: &mut Text) {
        for part in self.content.iter().flat_map(|c| &c.parts) {
            if let Some(t) = part.text.as_deref() {
                if part.thought == Some(true) { reasoning.push(t) } else { content.push(t) }
            }
            if let Some(call) = &part.function_call {
                content.push(&call.to_string());
            }
        }
    }
}

#[derive(Deserialize)]
struct StreamChoice<'a> {
    #[serde(default, borrow)]
    delta: Said<'a>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(text: &str) -> u64 {
        bpe_openai::o200k_base().count(text) as u64
    }

    #[test]
    fn responses_requests_and_answers_are_counted() {
        let body = br#"{"model":"m","instructions":"Be brief.","input":[{"role":"user","content":[{"type":"input_text","text":"Hello there"}]},{"type":"function_call","call_id":"c","name":"f","arguments":"{}"},{"type":"function_call_output","call_id":"c","output":"sunny"}]}"#;
        let (n, _) = input(body, body.len());
        assert!(n >= count("Be brief.Hello therefsunny"), "{n}");
        let stream = bytes::Bytes::from_static(b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hello there\"}\n\nevent: response.reasoning_text.delta\ndata: {\"type\":\"response.reasoning_text.delta\",\"delta\":\"Think\"}\n\n");
        let (usage, _) = output(stream, true);
        assert_eq!((usage.output, usage.reasoning), (count("Hello there") + count("Think"), count("Think")));
        let whole = bytes::Bytes::from_static(br#"{"object":"response","output":[{"type":"message","content":[{"type":"output_text","text":"Hello there"}]}]}"#);
        assert_eq!(output(whole, false).0.output, count("Hello there"));
    }

    #[test]
    fn chat_input_counts_message_texts_tools_and_framing() {
        let body = br#"{"model":"m","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"Hello there"},{"type":"image_url","image_url":{"url":"x"}}]}],"tools":[{"type":"function","function":{"name":"f"}}]}"#;
        let tools = r#"[{"type":"function","function":{"name":"f"}}]"#;
        let want = count(&format!("Be brief.Hello there{tools}")) + PER_REQUEST + 2 * PER_MESSAGE;
        // Tokens are counted on the joined text; joining can merge at most one
        // token per seam.
        let (n, scaled) = input(body, body.len());
        assert!(!scaled);
        assert!(n.abs_diff(want) <= 2, "{n} vs {want}");
        let embed = br#"{"model":"e","input":["one","two"]}"#;
        assert_eq!(input(embed, embed.len()).0, count("onetwo"));
        let ids = br#"{"model":"e","input":[1,2,3]}"#;
        assert_eq!(input(ids, ids.len()).0, 3);
    }

    #[test]
    fn streamed_and_whole_answers_count_content_reasoning_and_tool_arguments() {
        let events = concat!(
            "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"reasoning_content\":\"Let me think\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\"Hello\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"content\":\" world\"}}]}\n\n",
            "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"a\\\":1}\"}}]}}]}\n\n",
            "data: [DONE]\n\n",
        );
        let (usage, scaled) = output(bytes::Bytes::from_static(events.as_bytes()), true);
        assert!(!scaled);
        assert_eq!(usage.reasoning, count("Let me think"));
        assert_eq!(usage.output, count("Hello world{\"a\":1}") + usage.reasoning);
        let whole = br#"{"choices":[{"message":{"role":"assistant","content":"Hello world"}}]}"#;
        assert_eq!(output(bytes::Bytes::from_static(whole), false).0.output, count("Hello world"));
    }

    #[test]
    fn gemini_events_are_counted_too() {
        let events = concat!(
            "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Let me think\",\"thought\":true}]}}]}\r\n\r\n",
            "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hello\"},{\"functionCall\":{\"name\":\"f\"}}]}}]}\r\n\r\n",
        );
        let (usage, _) = output(bytes::Bytes::from_static(events.as_bytes()), true);
        assert_eq!(usage.reasoning, count("Let me think"));
        assert_eq!(usage.output, count(r#"Hello{"name":"f"}"#) + usage.reasoning);
    }

    #[test]
    fn anthropic_requests_messages_and_events_are_counted_too() {
        let body = br#"{"model":"m","system":[{"type":"text","text":"Be brief."}],"messages":[{"role":"user","content":[{"type":"text","text":"Hello"},{"type":"tool_result","tool_use_id":"t","content":"sunny"}]},{"role":"assistant","content":[{"type":"tool_use","id":"t","name":"f","input":{"a":1}}]}]}"#;
        let want = count(r#"Be brief.Hellosunny{"a":1}"#) + PER_REQUEST + 3 * PER_MESSAGE;
        let (n, _) = input(body, body.len());
        assert!(n.abs_diff(want) <= 3, "{n} vs {want}");
        let events = concat!(
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"Let me think\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello world\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"a\\\":1}\"}}\n\n",
        );
        let (usage, _) = output(bytes::Bytes::from_static(events.as_bytes()), true);
        assert_eq!(usage.reasoning, count("Let me think"));
        assert_eq!(usage.output, count("Hello world{\"a\":1}") + usage.reasoning);
        let whole = br#"{"type":"message","content":[{"type":"text","text":"Hello world"},{"type":"tool_use","input":{"a":1}}]}"#;
        assert_eq!(output(bytes::Bytes::from_static(whole), false).0.output, count(r#"Hello world{"a":1}"#));
    }

    #[test]
    fn cohere_events_are_counted_too() {
        let events = concat!(
            "event: content-delta\ndata: {\"type\":\"content-delta\",\"index\":0,\"delta\":{\"message\":{\"content\":{\"thinking\":\"Let me think\"}}}}\n\n",
            "event: content-delta\ndata: {\"type\":\"content-delta\",\"index\":1,\"delta\":{\"message\":{\"content\":{\"text\":\"Hello world\"}}}}\n\n",
            "event: tool-plan-delta\ndata: {\"type\":\"tool-plan-delta\",\"delta\":{\"message\":{\"tool_plan\":\"I will call f\"}}}\n\n",
            "event: tool-call-start\ndata: {\"type\":\"tool-call-start\",\"index\":0,\"delta\":{\"message\":{\"tool_calls\":{\"id\":\"c\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"\"}}}}}\n\n",
            "event: tool-call-delta\ndata: {\"type\":\"tool-call-delta\",\"index\":0,\"delta\":{\"message\":{\"tool_calls\":{\"function\":{\"arguments\":\"{\\\"a\\\":1}\"}}}}}\n\n",
        );
        let (usage, _) = output(bytes::Bytes::from_static(events.as_bytes()), true);
        assert_eq!(usage.reasoning, count("Let me think"));
        assert_eq!(usage.output, count("Hello worldI will call ff{\"a\":1}") + usage.reasoning);
    }

    #[test]
    fn text_beyond_the_cap_is_extrapolated() {
        let sentence = "The quick brown fox jumps over the lazy dog. ";
        let long = sentence.repeat(4 * TEXT_CAP / sentence.len());
        let body = serde_json::to_vec(&serde_json::json!({"messages": [{"role": "user", "content": long}]}))
            .unwrap_or_default();
        let (n, scaled) = input(&body, body.len());
        assert!(scaled);
        let exact = count(&long) + PER_REQUEST + PER_MESSAGE;
        assert!(n.abs_diff(exact) * 100 <= exact, "{n} vs {exact}");
        // Only a prefix of the bytes kept: raw bytes counted and scaled.
        let (n, scaled) = input(&body[..TEXT_CAP], body.len());
        assert!(scaled && n.abs_diff(exact) * 10 <= exact, "{n} vs {exact}");
    }
}

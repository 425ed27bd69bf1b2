//! Messages and Responses clients of channels whose wire format is neither
//! OpenAI's nor (for Messages) Anthropic's: the answer goes through the chat
//! form on its way, as the request did. The provider's events become chat
//! chunks (the chat translation's own [`ToChat`]), which become the client's
//! events ([`FromChat`]: Anthropic's for Messages clients, Responses events
//! for Responses clients) — each event as it arrives, nothing buffered but
//! what the translations keep themselves.
//!
//! Usage is the provider's own as the chat translation reads it (Anthropic's
//! cache writes included), so the record is metered exactly as for chat.

use smallvec::SmallVec;

use crate::metering::Usage;
use crate::providers::{EventAction, anthropic, cohere, gemini, messages, responses};

/// A provider's stream as chat chunks (the usage chunk always written, since
/// the client's events carry usage).
pub(crate) enum ToChat {
    Anthropic(anthropic::stream::ToChunks),
    Gemini(gemini::stream::ToChunks),
    Cohere(cohere::stream::ToChunks),
}

impl ToChat {
    fn event(&mut self, event: &[u8]) -> EventAction {
        match self {
            ToChat::Anthropic(d) => d.event(event),
            ToChat::Gemini(d) => d.event(event),
            ToChat::Cohere(d) => d.event(event),
        }
    }

    fn end(&mut self) -> EventAction {
        match self {
            ToChat::Anthropic(d) => d.end(),
            ToChat::Gemini(d) => d.end(),
            ToChat::Cohere(d) => d.end(),
        }
    }

    fn usage(&self) -> Option<Usage> {
        match self {
            ToChat::Anthropic(d) => d.usage(),
            ToChat::Gemini(d) => d.usage(),
            ToChat::Cohere(d) => d.usage(),
        }
    }
}

/// A translation that reads a chat stream.
pub(crate) trait FromChat {
    fn event(&mut self, event: &[u8]) -> EventAction;
    fn end(&mut self) -> EventAction;
    fn finished(&self) -> bool;
}

/// The translations from chat have the same inherent methods.
macro_rules! from_chat {
    ($($translation:ty),*) => {$(
        impl FromChat for $translation {
            fn event(&mut self, event: &[u8]) -> EventAction {
                self.event(event)
            }

            fn end(&mut self) -> EventAction {
                self.end()
            }

            fn finished(&self) -> bool {
                self.finished
            }
        }
    )*};
}

from_chat!(messages::stream::ToEvents, responses::stream::ToResponses);

/// A provider's stream translated for a client through the chat form.
pub(crate) struct Chained<T> {
    chunks: ToChat,
    events: T,
}

impl<T: FromChat> Chained<T> {
    pub fn new(chunks: ToChat, events: T) -> Self {
        Self { chunks, events }
    }

    /// The provider's own usage, once complete.
    pub fn usage(&self) -> Option<Usage> {
        self.chunks.usage()
    }

    pub fn finished(&self) -> bool {
        self.events.finished()
    }

    pub fn event(&mut self, event: &[u8]) -> EventAction {
        let action = self.chunks.event(event);
        self.relay(action, event)
    }

    pub fn end(&mut self) -> EventAction {
        let action = self.chunks.end();
        match self.relay(action, &[]) {
            EventAction::Fail(error) => EventAction::Fail(error),
            first => {
                let last = self.events.end();
                join(first, last)
            }
        }
    }

    /// Feeds what the chat translation made of one event to the client's.
    fn relay(&mut self, action: EventAction, event: &[u8]) -> EventAction {
        let chunks: &[u8] = match &action {
            EventAction::Pass => event,
            EventAction::Replace(bytes) => bytes,
            EventAction::Drop => return EventAction::Drop,
            EventAction::Fail(_) => return action,
        };
        let mut out = EventAction::Drop;
        // The chat translation writes whole events, each ended by a blank line.
        let lines: SmallVec<[&[u8]; 8]> = chunks.split_inclusive(|b| *b == b'\n').collect();
        for lines in lines.split(|l| l.trim_ascii().is_empty()) {
            let (Some(first), Some(last)) = (lines.first(), lines.last()) else { continue };
            // The lines lie one after the other in `chunks`: the event is
            // the span from the first to the end of the last, not a copy.
            let start = first.as_ptr() as usize - chunks.as_ptr() as usize;
            let end = last.as_ptr() as usize - chunks.as_ptr() as usize + last.len();
            match self.events.event(&chunks[start..end]) {
                EventAction::Fail(error) => return EventAction::Fail(error),
                next => out = join(out, next),
            }
        }
        out
    }
}

/// Two actions' output, one after the other (neither a pass or failure).
fn join(first: EventAction, second: EventAction) -> EventAction {
    match (first, second) {
        (EventAction::Replace(a), EventAction::Replace(b)) => {
            let mut all = Vec::with_capacity(a.len() + b.len());
            all.extend_from_slice(&a);
            all.extend_from_slice(&b);
            EventAction::Replace(bytes::Bytes::from(all))
        }
        (EventAction::Replace(a), _) => EventAction::Replace(a),
        (_, second) => second,
    }
}

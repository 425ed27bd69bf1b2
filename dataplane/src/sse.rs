//! Relaying Server-Sent Events: complete events pass through as they arrive
//! (zero-copy when a frame holds whole events), usage is read on the way, and
//! the usage-only chunk the gateway asked for on the client's behalf is dropped.

use bytes::{Bytes, BytesMut};
use memchr::memmem;
use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::usage::Usage;

/// Reassembles events split across frames and filters them.
pub struct SseScanner {
    carry: BytesMut,
    /// The client did not ask for usage: drop the chunk that carries only usage.
    drop_usage_chunk: bool,
    pub usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    choices: Option<Vec<IgnoredAny>>,
}

/// End of the last complete event in `data` (just after its blank line).
fn last_boundary(data: &[u8]) -> Option<usize> {
    let lf = memmem::rfind(data, b"\n\n").map(|i| i + 2);
    let crlf = memmem::rfind(data, b"\r\n\r\n").map(|i| i + 4);
    lf.max(crlf)
}

/// Splits complete events (each with its terminating blank line).
fn events(data: &Bytes) -> impl Iterator<Item = Bytes> + '_ {
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= data.len() {
            return None;
        }
        let rest = &data[start..];
        let end = match (memmem::find(rest, b"\n\n"), memmem::find(rest, b"\r\n\r\n")) {
            (Some(a), Some(b)) if b < a => b + 4,
            (Some(a), _) => a + 2,
            (None, Some(b)) => b + 4,
            (None, None) => rest.len(),
        };
        let event = data.slice(start..start + end);
        start += end;
        Some(event)
    })
}

/// The JSON payload of an event's `data:` line, if it may carry usage.
fn usage_payload(event: &[u8]) -> Option<&[u8]> {
    let at = memmem::find(event, b"\"usage\"")?;
    let after = event[at + 7..].iter().position(|b| !matches!(b, b' ' | b'\t' | b':'))?;
    if event[at + 7 + after] != b'{' {
        return None; // "usage": null
    }
    let start = memmem::find(event, b"data:")? + 5;
    let payload = &event[start..];
    let end = payload.iter().position(|b| *b == b'\n' || *b == b'\r').unwrap_or(payload.len());
    Some(payload[..end].trim_ascii())
}

impl SseScanner {
    pub fn new(drop_usage_chunk: bool) -> Self {
        Self { carry: BytesMut::new(), drop_usage_chunk, usage: None }
    }

    /// Takes one frame from upstream; returns what can go to the client now.
    pub fn push(&mut self, frame: Bytes) -> Bytes {
        let data = if self.carry.is_empty() {
            frame
        } else {
            self.carry.extend_from_slice(&frame);
            self.carry.split().freeze()
        };
        let Some(end) = last_boundary(&data) else {
            self.carry.extend_from_slice(&data);
            return Bytes::new();
        };
        if end < data.len() {
            self.carry.extend_from_slice(&data[end..]);
        }
        self.filter(data.slice(..end))
    }

    /// Whatever is left when the upstream closes (an unterminated last event).
    pub fn finish(&mut self) -> Bytes {
        let rest = self.carry.split().freeze();
        if rest.is_empty() { rest } else { self.filter(rest) }
    }

    fn filter(&mut self, complete: Bytes) -> Bytes {
        let mut kept: Option<BytesMut> = None;
        let mut offset = 0;
        for event in events(&complete) {
            let drop = self.inspect(&event);
            match (&mut kept, drop) {
                (None, false) => {}
                (None, true) => kept = Some(BytesMut::from(&complete[..offset])),
                (Some(out), false) => out.extend_from_slice(&event),
                (Some(_), true) => {}
            }
            offset += event.len();
        }
        kept.map_or(complete, BytesMut::freeze)
    }

    /// Reads usage from an event; true when the event must not reach the client.
    fn inspect(&mut self, event: &[u8]) -> bool {
        let Some(payload) = usage_payload(event) else {
            return false;
        };
        let Ok(chunk) = serde_json::from_slice::<Chunk>(payload) else {
            return false;
        };
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage);
            return self.drop_usage_chunk && chunk.choices.is_none_or(|c| c.is_empty());
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTENT: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n";
    const USAGE: &str = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\n";
    const DONE: &str = "data: [DONE]\n\n";

    #[test]
    fn whole_events_pass_through_untouched_and_usage_is_read() {
        let mut s = SseScanner::new(false);
        let all = format!("{CONTENT}{USAGE}{DONE}");
        assert_eq!(s.push(Bytes::from(all.clone())), all.as_bytes());
        assert_eq!(s.usage.map(|u| (u.prompt_tokens, u.completion_tokens)), Some((5, 2)));
    }

    #[test]
    fn events_split_across_frames_are_held_until_complete() {
        let mut s = SseScanner::new(false);
        let (a, b) = CONTENT.split_at(17);
        assert!(s.push(Bytes::from(a)).is_empty());
        assert_eq!(s.push(Bytes::from(format!("{b}{}", &USAGE[..4]))), CONTENT.as_bytes());
        assert_eq!(s.push(Bytes::from(&USAGE[4..])), USAGE.as_bytes());
        assert!(s.usage.is_some());
    }

    #[test]
    fn the_usage_chunk_the_client_did_not_ask_for_is_dropped() {
        let mut s = SseScanner::new(true);
        let out = s.push(Bytes::from(format!("{CONTENT}{USAGE}{DONE}")));
        assert_eq!(out, format!("{CONTENT}{DONE}").as_bytes());
        assert_eq!(s.usage.map(|u| u.completion_tokens), Some(2));
    }

    #[test]
    fn crlf_framing_is_understood() {
        let mut s = SseScanner::new(true);
        let usage = USAGE.replace("\n\n", "\r\n\r\n");
        let content = CONTENT.replace("\n\n", "\r\n\r\n");
        assert_eq!(s.push(Bytes::from(format!("{content}{usage}"))), content.as_bytes());
        assert!(s.usage.is_some());
    }

    #[test]
    fn an_unterminated_tail_is_flushed_at_the_end() {
        let mut s = SseScanner::new(false);
        assert!(s.push(Bytes::from("data: [DONE]")).is_empty());
        assert_eq!(s.finish(), "data: [DONE]".as_bytes());
    }
}

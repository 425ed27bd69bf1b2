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
    /// A choice has finished: only the usage chunk (and `[DONE]`) can follow.
    pub finished: bool,
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    choices: Option<Vec<IgnoredAny>>,
}

/// Where complete events end in `data`: just past each blank line (`\n\n`,
/// or `\r\n\r\n` as some servers write). One linear pass.
fn boundaries(data: &[u8]) -> impl Iterator<Item = usize> + '_ {
    memchr::memchr_iter(b'\n', data).filter_map(move |i| match data.get(i + 1) {
        Some(b'\n') => Some(i + 2),
        Some(b'\r') if data.get(i + 2) == Some(&b'\n') => Some(i + 3),
        _ => None,
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

/// Whether an event carries a non-null `finish_reason`.
fn finish_reason_set(event: &[u8]) -> bool {
    let Some(at) = memmem::find(event, b"\"finish_reason\"") else { return false };
    let rest = &event[at + 15..];
    rest.iter().find(|b| !matches!(b, b' ' | b'\t' | b':')).is_some_and(|b| *b == b'"')
}

impl SseScanner {
    pub fn new(drop_usage_chunk: bool) -> Self {
        Self { carry: BytesMut::new(), drop_usage_chunk, usage: None, finished: false }
    }

    /// Takes one frame from upstream; returns what can go to the client now.
    pub fn push(&mut self, frame: Bytes) -> Bytes {
        let data = if self.carry.is_empty() {
            frame
        } else {
            self.carry.extend_from_slice(&frame);
            self.carry.split().freeze()
        };
        // Only copied when an event is dropped; otherwise a slice of the frame.
        let mut kept: Option<BytesMut> = None;
        let mut start = 0;
        for end in boundaries(&data) {
            let drop = self.inspect(&data[start..end]);
            match (&mut kept, drop) {
                (None, true) => kept = Some(BytesMut::from(&data[..start])),
                (Some(out), false) => out.extend_from_slice(&data[start..end]),
                (None, false) | (Some(_), true) => {}
            }
            start = end;
        }
        if start < data.len() {
            self.carry.extend_from_slice(&data[start..]);
        }
        kept.map_or_else(|| data.slice(..start), BytesMut::freeze)
    }

    /// Whatever is left when the upstream closes (an unterminated last event).
    pub fn finish(&mut self) -> Bytes {
        let rest = self.carry.split().freeze();
        if self.inspect(&rest) { Bytes::new() } else { rest }
    }

    /// Reads usage from an event; true when the event must not reach the client.
    fn inspect(&mut self, event: &[u8]) -> bool {
        if !self.finished && finish_reason_set(event) {
            self.finished = true;
        }
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
    fn the_end_of_the_answer_is_noticed() {
        let mut s = SseScanner::new(false);
        s.push(Bytes::from(CONTENT));
        assert!(!s.finished);
        s.push(Bytes::from("data: {\"choices\":[{\"delta\":{},\"finish_reason\": \"stop\"}]}\n\n"));
        assert!(s.finished);
    }

    #[test]
    fn an_unterminated_tail_is_flushed_at_the_end() {
        let mut s = SseScanner::new(false);
        assert!(s.push(Bytes::from("data: [DONE]")).is_empty());
        assert_eq!(s.finish(), "data: [DONE]".as_bytes());
    }
}

//! Server-Sent Events framing, provider-neutral: splits what arrives into
//! complete events (`\n\n`, or `\r\n\r\n` as some servers write) in one linear
//! pass. Bytes are looked at once: a partial event is carried, and only the
//! bytes that arrive after it are scanned for its end, so one 16 MiB event in
//! 16 KiB pieces costs the same as one 16 MiB frame
//! (<https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation>).

use std::borrow::Cow;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use serde::Serialize;

/// The event that ends an OpenAI stream.
pub(crate) const DONE: &[u8] = b"data: [DONE]\n\n";

/// One event's name (its `event:` field) and data (its `data:` lines,
/// joined by `\n` as the spec says; borrowed when there is one).
pub(crate) struct Fields<'a> {
    pub name: Option<&'a [u8]>,
    pub data: Cow<'a, [u8]>,
}

/// The fields of one complete event.
pub(crate) fn fields(event: &[u8]) -> Fields<'_> {
    let mut fields = Fields { name: None, data: Cow::Borrowed(&[]) };
    let mut lines = 0;
    for line in event.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let (field, value) = match line.iter().position(|b| *b == b':') {
            Some(at) => (&line[..at], &line[at + 1..]),
            None => (line, &[][..]),
        };
        let value = value.strip_prefix(b" ").unwrap_or(value);
        match field {
            b"event" => fields.name = Some(value),
            b"data" => {
                lines += 1;
                if lines == 1 {
                    fields.data = Cow::Borrowed(value);
                } else {
                    let data = fields.data.to_mut();
                    data.push(b'\n');
                    data.extend_from_slice(value);
                }
            }
            _ => {}
        }
    }
    fields
}

/// Room for a typical translated event (a chat chunk is ~200 bytes), so that
/// serializing one does not grow its buffer step by step (a reallocation
/// each step).
const EVENT_CAPACITY: usize = 256;

/// `data: <json>` and the blank line that ends the event.
pub(crate) fn data_event(value: &impl Serialize) -> Vec<u8> {
    let mut out = Vec::with_capacity(EVENT_CAPACITY);
    write_data(&mut out, value);
    out
}

/// `event: <name>`, `data: <json>` and the blank line.
pub(crate) fn named_event(name: &str, value: &impl Serialize) -> Vec<u8> {
    let mut out = Vec::with_capacity(EVENT_CAPACITY);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.push(b'\n');
    write_data(&mut out, value);
    out
}

fn write_data(out: &mut Vec<u8>, value: &impl Serialize) {
    out.extend_from_slice(b"data: ");
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.extend_from_slice(b"{}");
    }
    out.extend_from_slice(b"\n\n");
}

/// Reassembles events split across frames.
#[derive(Default)]
pub(crate) struct SseFramer {
    /// The start of an event whose end has not arrived.
    carry: BytesMut,
}

/// The complete events one frame finished: `data` ends at an event boundary.
pub(crate) struct Events {
    pub data: Bytes,
    pos: usize,
    /// No boundary lies before this offset (it was scanned before).
    scan_from: usize,
}

/// The end of the event boundary whose last `\n` is at `i`, if there is one.
fn boundary_ending_at(data: &[u8], i: usize) -> Option<usize> {
    match (i.checked_sub(1).map(|j| data[j]), i.checked_sub(2).map(|j| data[j])) {
        (Some(b'\n'), _) | (Some(b'\r'), Some(b'\n')) => Some(i + 1),
        _ => None,
    }
}

/// The end of the last event boundary at or after `from`.
fn last_boundary(data: &[u8], from: usize) -> Option<usize> {
    memchr::memrchr_iter(b'\n', &data[from..]).find_map(|i| boundary_ending_at(data, from + i))
}

impl SseFramer {
    /// Takes one frame; returns the events it completes (maybe none).
    pub fn push(&mut self, frame: Bytes) -> Events {
        if self.carry.is_empty() {
            return match last_boundary(&frame, 0) {
                Some(end) => {
                    self.carry.extend_from_slice(&frame[end..]);
                    Events { data: frame.slice(..end), pos: 0, scan_from: 0 }
                }
                None => {
                    self.carry.extend_from_slice(&frame);
                    Events::none()
                }
            };
        }
        // A boundary can straddle the frame edge: look back two bytes.
        let scan_from = self.carry.len().saturating_sub(2);
        self.carry.extend_from_slice(&frame);
        match last_boundary(&self.carry, scan_from) {
            Some(end) => Events { data: self.carry.split_to(end).freeze(), pos: 0, scan_from },
            None => Events::none(),
        }
    }

    /// Whatever is left when the upstream closes (an unterminated last event).
    pub fn finish(&mut self) -> Option<Bytes> {
        (!self.carry.is_empty()).then(|| self.carry.split().freeze())
    }
}

impl Events {
    fn none() -> Self {
        Self { data: Bytes::new(), pos: 0, scan_from: 0 }
    }

    /// The next event's byte range in `data`.
    pub fn next_range(&mut self) -> Option<Range<usize>> {
        if self.pos >= self.data.len() {
            return None;
        }
        let from = self.pos.max(self.scan_from);
        let end = memchr::memchr_iter(b'\n', &self.data[from..])
            .find_map(|i| boundary_ending_at(&self.data, from + i))
            .unwrap_or(self.data.len());
        let range = self.pos..end;
        self.pos = end;
        Some(range)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(framer: &mut SseFramer, frame: &[u8]) -> Vec<String> {
        let mut events = framer.push(Bytes::copy_from_slice(frame));
        let mut out = Vec::new();
        while let Some(r) = events.next_range() {
            out.push(String::from_utf8_lossy(&events.data[r]).into_owned());
        }
        out
    }

    #[test]
    fn whole_events_come_out_as_they_went_in() {
        let mut f = SseFramer::default();
        assert_eq!(events(&mut f, b"data: a\n\ndata: b\n\n"), ["data: a\n\n", "data: b\n\n"]);
        assert_eq!(f.finish(), None);
    }

    #[test]
    fn events_split_anywhere_are_reassembled() {
        let all = b"data: one\n\ndata: two\r\n\r\n: comment\n\ndata: three\n\n";
        for cut in 1..all.len() {
            let mut f = SseFramer::default();
            let mut got = events(&mut f, &all[..cut]);
            got.extend(events(&mut f, &all[cut..]));
            assert_eq!(got, ["data: one\n\n", "data: two\r\n\r\n", ": comment\n\n", "data: three\n\n"], "cut at {cut}");
        }
    }

    #[test]
    fn byte_by_byte_arrival_works() {
        let all = b"data: x\r\n\r\ndata: y\n\n";
        let mut f = SseFramer::default();
        let got: Vec<String> = all.iter().flat_map(|b| events(&mut f, &[*b])).collect();
        assert_eq!(got, ["data: x\r\n\r\n", "data: y\n\n"]);
    }

    #[test]
    fn fields_are_read_as_the_spec_says() {
        let f = fields(b"event: message_delta\r\ndata: {\"a\":1}\r\n\r\n");
        assert_eq!((f.name, f.data.as_ref()), (Some(&b"message_delta"[..]), &b"{\"a\":1}"[..]));
        let f = fields(b": comment\ndata:one\ndata: two\n\n");
        assert_eq!((f.name, f.data.as_ref()), (None, &b"one\ntwo"[..]));
    }

    #[test]
    fn an_unterminated_tail_is_flushed_at_the_end() {
        let mut f = SseFramer::default();
        assert!(events(&mut f, b"data: [DONE]").is_empty());
        assert_eq!(f.finish().as_deref(), Some(&b"data: [DONE]"[..]));
    }
}

//! The prompt prefix that provider prompt caches key on, hashed for the
//! `cache-aware` strategy: the tool definitions, a top-level `system`
//! member, the leading `system`/`developer` messages, and the next `n`
//! messages — each as the client's bytes. Requests of one conversation (and
//! of one application's fixed system prompt) share it, so they reach the
//! same channel and its cache.
//!
//! The hash is SipHash with fixed keys (`DefaultHasher::new`), so every
//! replica of one build maps a prefix to the same channel. Only the messages
//! up to the end of the prefix are parsed: the rest of a long conversation is
//! never read.

use std::hash::{DefaultHasher, Hasher};

use serde::Deserialize;
use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::api::RequestBody;

/// The prefix's hash; `None` when the request has no messages to hash (an
/// embeddings request, say).
pub(crate) fn prefix_hash(request: &RequestBody<'_>, messages_after_system: u32) -> Option<u64> {
    let messages = request.get("messages")?;
    let mut hasher = DefaultHasher::new();
    for member in ["tools", "system"] {
        if let Some(raw) = request.get(member) {
            hasher.write(raw.get().as_bytes());
            hasher.write_u8(0xff);
        }
    }
    let mut de = serde_json::Deserializer::from_str(messages.get());
    let seed = Leading { hasher: &mut hasher, after_system: messages_after_system, hashed: 0 };
    // Stopping early is reported as an error by serde_json; the count says
    // how far it got either way.
    let hashed = match seed.deserialize(&mut de) {
        Ok(n) => n,
        Err(e) => e.to_string().strip_prefix(STOP).and_then(|n| n.split_whitespace().next()?.parse().ok())?,
    };
    (hashed > 0).then(|| hasher.finish())
}

/// Why the visitor stops early, followed by the count of hashed messages.
const STOP: &str = "prefix complete after ";

struct Leading<'h> {
    hasher: &'h mut DefaultHasher,
    after_system: u32,
    hashed: usize,
}

#[derive(Deserialize)]
struct Role<'a> {
    #[serde(borrow, default)]
    role: Option<&'a str>,
}

impl<'de> DeserializeSeed<'de> for Leading<'_> {
    type Value = usize;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Leading<'_> {
    type Value = usize;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of messages")
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<usize, A::Error> {
        let mut after_system = 0;
        while let Some(message) = seq.next_element::<&'de RawValue>()? {
            let text = message.get();
            let system = serde_json::from_str::<Role<'_>>(text)
                .ok()
                .and_then(|r| r.role)
                .is_some_and(|r| r == "system" || r == "developer");
            if !system {
                if after_system == self.after_system {
                    return Err(serde::de::Error::custom(format_args!("{STOP}{} ", self.hashed)));
                }
                after_system += 1;
            }
            self.hasher.write(text.as_bytes());
            self.hasher.write_u8(0xff);
            self.hashed += 1;
        }
        Ok(self.hashed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(body: &str, n: u32) -> Option<u64> {
        RequestBody::parse(body.as_bytes()).ok().and_then(|r| prefix_hash(&r, n))
    }

    #[test]
    fn a_conversation_keeps_its_prefix_as_it_grows() {
        let first =
            r#"{"model":"m","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Hi"}]}"#;
        let later = r#"{"model":"m","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Hi"},{"role":"assistant","content":"Hello"},{"role":"user","content":"More"}]}"#;
        let other = r#"{"model":"m","messages":[{"role":"system","content":"You are verbose."},{"role":"user","content":"Hi"}]}"#;
        assert!(hash(first, 1).is_some());
        assert_eq!(hash(first, 1), hash(later, 1));
        assert_ne!(hash(first, 1), hash(other, 1));
        assert_ne!(hash(first, 1), hash(later, 3), "more messages, another prefix");
        assert_eq!(hash(r#"{"model":"m","input":"text"}"#, 1), None);
        assert_eq!(hash(r#"{"model":"m","messages":[]}"#, 1), None);
    }

    #[test]
    fn tools_are_part_of_the_prefix_and_a_bad_array_hashes_nothing() {
        let plain = r#"{"model":"m","messages":[{"role":"user","content":"Hi"}]}"#;
        let tools = r#"{"model":"m","tools":[{"type":"function"}],"messages":[{"role":"user","content":"Hi"}]}"#;
        assert_ne!(hash(plain, 1), hash(tools, 1));
        assert_eq!(hash(r#"{"model":"m","messages":"Hi"}"#, 1), None);
    }
}

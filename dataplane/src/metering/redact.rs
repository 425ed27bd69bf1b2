//! Redaction of logged bodies: string values of JSON members whose names
//! look like credentials (`api_key`, `password`, `access_token`...), also
//! inside JSON that is itself a JSON string (tool call `arguments`), and
//! every occurrence of given secrets (the caller's key, the channel's
//! credential). Works on text that is not valid JSON as a whole — SSE
//! streams, bodies cut short — because it only looks at `"name": "value"`
//! pairs.

/// What replaces a secret.
const MASK: &str = "[REDACTED]";

/// Secrets shorter than this are not searched for (they would match
/// ordinary text); keys and credentials are far longer.
pub(crate) const MIN_SECRET: usize = 8;

/// What is stored instead of a streamed answer that repeats a secret.
pub(crate) const WITHHELD: &str = "[REDACTED: the streamed answer repeats a secret]";

/// A body as stored.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Redacted {
    pub text: String,
    /// The body was longer than the cap.
    pub truncated: bool,
}

/// Redacts `body` and cuts it to at most `max` bytes (on a character).
pub(crate) fn redact(body: &[u8], secrets: &[&str], max: usize) -> Redacted {
    let mut text = String::from_utf8_lossy(body).into_owned();
    for secret in secrets.iter().filter(|s| s.len() >= MIN_SECRET) {
        if text.contains(secret) {
            text = text.replace(secret, MASK);
        }
        // Kept bytes that end inside a secret would leave its first characters.
        if let Some(n) =
            (MIN_SECRET / 2..secret.len()).rev().find(|n| secret.get(..*n).is_some_and(|p| text.ends_with(p)))
        {
            text.truncate(text.len() - n);
        }
    }
    text = members(&text, Level::Plain);
    text = members(&text, Level::Escaped);
    let truncated = text.len() > max;
    if truncated {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    Redacted { text, truncated }
}

/// Whether a member name looks like it holds a credential.
fn is_credential(name: &str) -> bool {
    let n: String = name.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).collect();
    const WORDS: &[&str] =
        &["apikey", "authorization", "password", "passwd", "secret", "credential", "privatekey", "accesskey", "cookie"];
    WORDS.iter().any(|w| n.contains(w)) || n.ends_with("token") || n == "auth" || n == "key"
}

/// How strings are quoted: plain JSON, or JSON inside a JSON string.
#[derive(Clone, Copy)]
enum Level {
    Plain,
    Escaped,
}

impl Level {
    fn quote(self) -> &'static str {
        match self {
            Level::Plain => "\"",
            Level::Escaped => "\\\"",
        }
    }

    /// The end (exclusive, before the closing quote) of a string whose
    /// content starts at `from`; `None` when it does not end.
    fn string_end(self, text: &str, from: usize) -> Option<usize> {
        let b = text.as_bytes();
        let mut i = from;
        while i < b.len() {
            match self {
                Level::Plain => match b[i] {
                    b'\\' => i += 2,
                    b'"' => return Some(i),
                    _ => i += 1,
                },
                Level::Escaped => {
                    if b[i..].starts_with(b"\\\\") {
                        // An escaped backslash inside the inner string: it
                        // escapes what follows (maybe a quote).
                        i += 2;
                        i += if b[i..].starts_with(b"\\\"") { 2 } else { 1 };
                    } else if b[i..].starts_with(b"\\\"") {
                        return Some(i);
                    } else {
                        i += 1;
                    }
                }
            }
        }
        None
    }
}

/// `text` with the string values of credential-named members masked.
fn members(text: &str, level: Level) -> String {
    let quote = level.quote();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut at = 0;
    while let Some(found) = text[at..].find(quote) {
        let open = at + found;
        let start = open + quote.len();
        let Some(end) = level.string_end(text, start) else { break };
        at = end + quote.len();
        if !is_credential(&text[start..end]) {
            continue;
        }
        let rest = &text[at..];
        let colon = rest.len() - rest.trim_start().len();
        if !rest[colon..].starts_with(':') {
            continue;
        }
        let after = at + colon + 1;
        let value = after + (text[after..].len() - text[after..].trim_start().len());
        if !text[value..].starts_with(quote) {
            continue;
        }
        let value_start = value + quote.len();
        let value_end = level.string_end(text, value_start).unwrap_or(text.len());
        out.push_str(&text[copied..value_start]);
        out.push_str(MASK);
        copied = value_end;
        at = value_end.min(text.len());
        if value_end < text.len() {
            at += quote.len();
        }
    }
    out.push_str(&text[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_members_and_secrets_are_masked() {
        let body = r#"{"model":"m","api_key":"sk-live-123","max_tokens":5,"messages":[{"role":"user","content":"my key is lw-secret-key-1 ok"}],"user":{"password" : "hunter2"},"tools":[{"function":{"arguments":"{\"access_token\":\"abc\\\"def\",\"n\":1}"}}]}"#;
        let out = redact(body.as_bytes(), &["lw-secret-key-1"], 10_000);
        assert!(!out.truncated);
        assert_eq!(
            out.text,
            r#"{"model":"m","api_key":"[REDACTED]","max_tokens":5,"messages":[{"role":"user","content":"my key is [REDACTED] ok"}],"user":{"password" : "[REDACTED]"},"tools":[{"function":{"arguments":"{\"access_token\":\"[REDACTED]\",\"n\":1}"}}]}"#
        );
    }

    #[test]
    fn a_cut_keeps_no_part_of_a_secret() {
        let body = "data: {\"content\":\"lw-secret-key-1\"}\n\ndata: {\"token\":\"abcdefgh";
        let out = redact(body.as_bytes(), &[], 1_000);
        assert!(out.text.ends_with("\"token\":\"[REDACTED]"), "{}", out.text);
        let out = redact(b"the key lw-secret", &["lw-secret-key-1"], 100);
        assert_eq!(out.text, "the key ");
        let out = redact(b"0123456789", &[], 4);
        assert_eq!((out.text.as_str(), out.truncated), ("0123", true));
        assert!(!is_credential("max_tokens") && !is_credential("prompt_tokens") && is_credential("refresh_token"));
    }
}

//! OpenAI's rate-limit headers (<https://platform.openai.com/docs/guides/rate-limits>):
//! `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`. Resets are
//! durations as OpenAI writes them — Go's duration format (`12ms`, `1.5s`,
//! `6m0s`, `1h0m0s`) — here rounded up to the millisecond, so a client that
//! waits that long finds the bucket full.

use std::fmt::{self, Write as _};

use http::{HeaderName, HeaderValue};

use super::gcra::Nanos;

pub const LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
pub const REMAINING_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");
pub const RESET_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");
pub const LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
pub const REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
pub const RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");

/// The six names, for CORS `expose-headers`.
pub const ALL: [HeaderName; 6] =
    [LIMIT_REQUESTS, REMAINING_REQUESTS, RESET_REQUESTS, LIMIT_TOKENS, REMAINING_TOKENS, RESET_TOKENS];

const MS: u64 = 1_000_000;

/// A duration in Go's format, rounded up to the millisecond.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoDuration(pub Nanos);

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.div_ceil(MS);
        if ms == 0 {
            return f.write_str("0s");
        }
        if ms < 1000 {
            return write!(f, "{ms}ms");
        }
        let (hours, minutes) = (ms / 3_600_000, ms / 60_000 % 60);
        let (seconds, millis) = (ms / 1000 % 60, ms % 1000);
        if hours > 0 {
            write!(f, "{hours}h")?;
        }
        if hours > 0 || minutes > 0 {
            write!(f, "{minutes}m")?;
        }
        write!(f, "{seconds}")?;
        if millis > 0 {
            // Go trims trailing zeros of the fraction: 1.5s, 1.25s, 1.125s.
            let mut fraction = millis;
            let mut digits = 3;
            while fraction % 10 == 0 {
                fraction /= 10;
                digits -= 1;
            }
            write!(f, ".{fraction:0digits$}")?;
        }
        f.write_str("s")
    }
}

/// A header value written on the stack and copied once.
struct Small {
    bytes: [u8; 32],
    len: usize,
}

impl fmt::Write for Small {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        self.bytes.get_mut(self.len..end).ok_or(fmt::Error)?.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// A reset header value.
pub fn duration_value(d: Nanos) -> HeaderValue {
    let mut out = Small { bytes: [0; 32], len: 0 };
    // The longest (u64::MAX ns) is `5124095h34m33.71s`: it fits.
    let _ = write!(out, "{}", GoDuration(d));
    HeaderValue::from_bytes(&out.bytes[..out.len]).unwrap_or(HeaderValue::from_static("0s"))
}

/// `Retry-After`: whole seconds, rounded up.
pub fn retry_after_secs(d: Nanos) -> u64 {
    d.div_ceil(1_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_openai_writes_them() {
        let cases = [
            (0, "0s"),
            (1, "1ms"),
            (12 * MS, "12ms"),
            (999 * MS + 1, "1s"),
            (1000 * MS, "1s"),
            (1500 * MS, "1.5s"),
            (1574 * MS, "1.574s"),
            (20_050 * MS, "20.05s"),
            (60_000 * MS, "1m0s"),
            (360_000 * MS, "6m0s"),
            (3_600_000 * MS, "1h0m0s"),
            (3_723_400 * MS, "1h2m3.4s"),
        ];
        for (ns, text) in cases {
            assert_eq!(GoDuration(ns).to_string(), text, "{ns} ns");
            assert_eq!(duration_value(ns), text);
        }
        assert_eq!(duration_value(u64::MAX), "5124095h34m33.71s");
        assert_eq!((retry_after_secs(1), retry_after_secs(1_000_000_000), retry_after_secs(1_000_000_001)), (1, 1, 2));
    }
}

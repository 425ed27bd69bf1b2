//! Per-key rate limits, enforced by each gateway replica on its share of the
//! key's `rateLimit` (limit / live replicas): requests per minute and tokens
//! per minute as GCRA buckets whose burst is the whole per-minute share
//! ([`gcra`]), and requests in flight as a counter ([`concurrency`]).
//!
//! The shape ([`KeyLimits`]) is derived once per snapshot; the state
//! ([`Buckets`]) lives in the registry, so a snapshot swap neither resets nor
//! copies it. Admission touches only the key's own atomics — no lock, no
//! allocation — and hands back a [`Held`] that the request settles when it
//! ends: the slot comes back and the token reservation is corrected to the
//! tokens actually used.
//!
//! Tokens are reserved before the answer exists, from an estimate
//! ([`Demand`]): the input as the body's bytes / 4 (OpenAI's own rule of
//! thumb, and what it says it estimates its rate limits from: the character
//! count), which costs nothing (the length is known) — a tokenizer would cost
//! more than everything else on the path, and a byte count taken as an upper
//! bound would make base64 images look hundreds of times their token cost.
//! Plus the output allowance: `max_completion_tokens` or `max_tokens` when
//! the client gives one, else [`DEFAULT_OUTPUT_TOKENS`]. Settling charges or
//! refunds the difference to the real usage, so an estimate's error only
//! shifts when tokens count, never how many.

mod concurrency;
mod gcra;
mod headers;

use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use weaver_crds::api_key::RateLimit;

pub use concurrency::InFlight;
pub use gcra::{Gcra, Level, Nanos, Rate, Refused};
pub use headers::{ALL as HEADER_NAMES, GoDuration, retry_after_secs};

const MINUTE: Duration = Duration::from_secs(60);

/// Bytes of request body counted as one input token for the reservation.
pub const BYTES_PER_TOKEN: u64 = 4;

/// Output tokens reserved for a chat request that sets neither
/// `max_completion_tokens` nor `max_tokens` (capped so that the reservation
/// fits the key's token allowance: such a request is never refused as too
/// large for want of a limit it did not set).
pub const DEFAULT_OUTPUT_TOKENS: u64 = 1024;

/// A key's limits as this replica enforces them: its share of the key's
/// `rateLimit`. Built once per snapshot.
#[derive(Debug)]
pub struct KeyLimits {
    requests: Option<Rate>,
    tokens: Option<Rate>,
    concurrent: Option<u32>,
    /// `x-ratelimit-limit-*` values (the share), built once.
    limit_requests: Option<HeaderValue>,
    limit_tokens: Option<HeaderValue>,
}

/// A key's limiter state, kept across snapshots (in the registry).
#[derive(Debug, Default)]
pub struct Buckets {
    requests: Gcra,
    tokens: Gcra,
    in_flight: InFlight,
}

impl Buckets {
    /// Requests of the key in flight on this replica (counted only while
    /// the key has a `maxConcurrent`).
    pub fn in_flight(&self) -> u32 {
        self.in_flight.current()
    }
}

/// What one request asks of the tokens bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Demand {
    /// Estimated input tokens.
    pub input: u64,
    /// Output tokens allowed.
    pub output: u64,
    /// `output` is the client's own limit: a request beyond the allowance is
    /// refused as too large. Otherwise the default is cut to fit.
    pub explicit: bool,
}

impl Demand {
    /// A chat request of `body_bytes` with the client's output limit, if
    /// any, asking for `choices` completions (each up to that limit).
    pub fn chat(body_bytes: usize, max_output: Option<u64>, choices: u64) -> Self {
        Self {
            input: estimate_input(body_bytes),
            output: max_output.unwrap_or(DEFAULT_OUTPUT_TOKENS).saturating_mul(choices),
            explicit: max_output.is_some(),
        }
    }

    /// An embeddings request of `body_bytes` (no output tokens).
    pub fn embeddings(body_bytes: usize) -> Self {
        Self { input: estimate_input(body_bytes), output: 0, explicit: true }
    }

    /// Tokens to reserve from a bucket of `burst` tokens.
    fn reserve(&self, burst: u64) -> u64 {
        let output = if self.explicit { self.output } else { self.output.min(burst.saturating_sub(self.input)) };
        self.input.saturating_add(output)
    }
}

fn estimate_input(body_bytes: usize) -> u64 {
    (body_bytes as u64).div_ceil(BYTES_PER_TOKEN)
}

/// The levels of a key's buckets as one request saw them, for its headers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Levels {
    pub requests: Option<Level>,
    pub tokens: Option<Level>,
}

/// What a request took; give it back with [`KeyLimits::settle`] when the
/// request ends, against the same limits and buckets.
#[derive(Debug, Default, PartialEq, Eq)]
#[must_use = "a held slot and reservation must be settled"]
pub struct Held {
    /// Tokens reserved.
    tokens: u64,
    /// A concurrency slot is held.
    slot: bool,
    /// The buckets after admission.
    pub levels: Levels,
}

/// Which limit refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exceeded {
    /// `limit` requests of the key are in flight on this replica.
    Concurrency { limit: u32 },
    /// Requests per minute; another fits after `retry_after`.
    Requests { limit: u64, retry_after: Nanos },
    /// Tokens per minute; `retry_after` is `None` when the request is larger
    /// than the whole allowance.
    Tokens { limit: u64, used: u64, requested: u64, retry_after: Option<Nanos> },
}

/// A refused admission: nothing is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub exceeded: Exceeded,
    /// The buckets as the refusal left them, for its headers.
    pub levels: Levels,
}

impl Exceeded {
    /// OpenAI's error `type` for the refusal.
    pub fn kind(&self) -> &'static str {
        match self {
            Exceeded::Concurrency { .. } | Exceeded::Requests { .. } => "requests",
            Exceeded::Tokens { .. } => "tokens",
        }
    }

    /// Seconds to wait, for `Retry-After` (none for a request that can never fit).
    pub fn retry_after_secs(&self) -> Option<u64> {
        match *self {
            // Nobody knows when a request in flight ends; a second is a
            // polite first wait.
            Exceeded::Concurrency { .. } => Some(1),
            Exceeded::Requests { retry_after, .. } => Some(retry_after_secs(retry_after)),
            Exceeded::Tokens { retry_after, .. } => retry_after.map(retry_after_secs),
        }
    }

    /// The message, worded like OpenAI's.
    pub fn message(&self) -> String {
        match *self {
            Exceeded::Concurrency { limit } => format!(
                "Too many concurrent requests on this API key: limit {limit} at a time. \
                 Wait for one of them to finish, then try again."
            ),
            Exceeded::Requests { limit, retry_after } => format!(
                "Rate limit reached for this API key on requests per min (RPM): Limit {limit}, Used {limit}, \
                 Requested 1. Please try again in {}.",
                GoDuration(retry_after)
            ),
            Exceeded::Tokens { limit, used, requested, retry_after: Some(wait) } => format!(
                "Rate limit reached for this API key on tokens per min (TPM): Limit {limit}, Used {used}, \
                 Requested {requested}. Please try again in {}.",
                GoDuration(wait)
            ),
            Exceeded::Tokens { limit, requested, retry_after: None, .. } => format!(
                "Request too large for this API key on tokens per min (TPM): Limit {limit}, Requested \
                 {requested}. The input or output tokens must be reduced in order to run successfully."
            ),
        }
    }
}

impl KeyLimits {
    /// This replica's share of `limit` across `replicas`; `None` when the key
    /// has no limit at all.
    pub fn new(limit: &RateLimit, replicas: u32) -> Option<Self> {
        let requests = limit.requests_per_minute.and_then(|n| Rate::share(u64::from(n), MINUTE, replicas));
        let tokens = limit.tokens_per_minute.and_then(|n| Rate::share(n, MINUTE, replicas));
        let concurrent = limit.max_concurrent.filter(|n| *n > 0).map(|n| (n / replicas.max(1)).max(1));
        if requests.is_none() && tokens.is_none() && concurrent.is_none() {
            return None;
        }
        let value = |r: Option<Rate>| r.map(|r| HeaderValue::from(r.burst()));
        Some(Self { requests, tokens, concurrent, limit_requests: value(requests), limit_tokens: value(tokens) })
    }

    /// Requests per minute this replica admits (its share).
    pub fn requests_per_minute(&self) -> Option<u64> {
        self.requests.map(|r| r.burst())
    }

    /// Tokens per minute this replica admits (its share).
    pub fn tokens_per_minute(&self) -> Option<u64> {
        self.tokens.map(|r| r.burst())
    }

    /// Requests in flight this replica admits (its share).
    pub fn max_concurrent(&self) -> Option<u32> {
        self.concurrent
    }

    /// Admits one request at `now`, or refuses it having taken nothing.
    /// Order: the concurrency slot (a refusal there must not use up the
    /// rate), then requests, then tokens.
    pub fn admit(&self, buckets: &Buckets, demand: Demand, now: Nanos) -> Result<Held, Refusal> {
        let mut held = Held::default();
        if let Some(limit) = self.concurrent {
            if !buckets.in_flight.try_acquire(limit) {
                return Err(Refusal { exceeded: Exceeded::Concurrency { limit }, levels: self.levels(buckets, now) });
            }
            held.slot = true;
        }
        if let Some(rate) = self.requests {
            match buckets.requests.take(rate, 1, now) {
                Ok(level) => held.levels.requests = Some(level),
                Err(refused) => {
                    self.release_slot(buckets, &mut held);
                    let levels = Levels {
                        requests: Some(refused.level),
                        tokens: self.tokens.map(|r| buckets.tokens.level(r, now)),
                    };
                    // `retry_after` is always known for a single unit.
                    let retry_after = refused.retry_after.unwrap_or(rate.interval());
                    let exceeded = Exceeded::Requests { limit: rate.burst(), retry_after };
                    return Err(Refusal { exceeded, levels });
                }
            }
        }
        if let Some(rate) = self.tokens {
            let want = demand.reserve(rate.burst());
            match buckets.tokens.take(rate, want, now) {
                Ok(level) => {
                    held.tokens = want;
                    held.levels.tokens = Some(level);
                }
                Err(refused) => {
                    // The request never ran: its request unit comes back too.
                    if let Some(requests) = self.requests {
                        buckets.requests.give_back(requests, 1, now);
                        held.levels.requests = Some(buckets.requests.level(requests, now));
                    }
                    self.release_slot(buckets, &mut held);
                    let exceeded = Exceeded::Tokens {
                        limit: rate.burst(),
                        used: rate.burst() - refused.level.remaining.min(rate.burst()),
                        requested: want,
                        retry_after: refused.retry_after,
                    };
                    let levels = Levels { requests: held.levels.requests, tokens: Some(refused.level) };
                    return Err(Refusal { exceeded, levels });
                }
            }
        }
        Ok(held)
    }

    /// Gives back a held concurrency slot before the request is settled
    /// (e.g. when its client has left but the usage is still being read).
    pub fn release_slot(&self, buckets: &Buckets, held: &mut Held) {
        if std::mem::take(&mut held.slot) {
            buckets.in_flight.release();
        }
    }

    /// Ends a request: its slot comes back, and its token reservation is
    /// corrected to `used` tokens (refunded or charged the difference);
    /// `None` keeps the reservation as the charge (use unknown).
    pub fn settle(&self, buckets: &Buckets, mut held: Held, used: Option<u64>, now: Nanos) {
        self.release_slot(buckets, &mut held);
        let (Some(rate), Some(used)) = (self.tokens, used) else { return };
        if used < held.tokens {
            buckets.tokens.give_back(rate, held.tokens - used, now);
        } else if used > held.tokens {
            buckets.tokens.charge(rate, used - held.tokens, now);
        }
    }

    /// The levels at `now`, taking nothing.
    pub fn levels(&self, buckets: &Buckets, now: Nanos) -> Levels {
        Levels {
            requests: self.requests.map(|r| buckets.requests.level(r, now)),
            tokens: self.tokens.map(|r| buckets.tokens.level(r, now)),
        }
    }

    /// How many rate-limit headers [`write_headers`](Self::write_headers) adds.
    pub fn header_count(&self) -> usize {
        3 * (usize::from(self.requests.is_some()) + usize::from(self.tokens.is_some()))
    }

    /// OpenAI's `x-ratelimit-*` headers for the limits this key has.
    pub fn write_headers(&self, levels: &Levels, out: &mut HeaderMap) {
        if let (Some(limit), Some(level)) = (&self.limit_requests, levels.requests) {
            out.insert(headers::LIMIT_REQUESTS, limit.clone());
            out.insert(headers::REMAINING_REQUESTS, HeaderValue::from(level.remaining));
            out.insert(headers::RESET_REQUESTS, headers::duration_value(level.reset));
        }
        if let (Some(limit), Some(level)) = (&self.limit_tokens, levels.tokens) {
            out.insert(headers::LIMIT_TOKENS, limit.clone());
            out.insert(headers::REMAINING_TOKENS, HeaderValue::from(level.remaining));
            out.insert(headers::RESET_TOKENS, headers::duration_value(level.reset));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn limits(rpm: Option<u32>, tpm: Option<u64>, concurrent: Option<u32>, replicas: u32) -> KeyLimits {
        let spec = RateLimit { requests_per_minute: rpm, tokens_per_minute: tpm, max_concurrent: concurrent };
        KeyLimits::new(&spec, replicas).unwrap_or_else(|| panic!("limits"))
    }

    #[test]
    fn no_limit_is_no_limiter() {
        assert!(KeyLimits::new(&RateLimit::default(), 1).is_none());
    }

    #[test]
    fn a_refusal_takes_nothing_from_the_other_limits() {
        let l = limits(Some(10), Some(1000), Some(1), 1);
        let b = Buckets::default();
        let held = l.admit(&b, Demand::chat(400, Some(500), 1), 0).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(held.levels.requests.map(|r| r.remaining), Some(9));
        assert_eq!(held.levels.tokens.map(|r| r.remaining), Some(400), "100 input + 500 output reserved");
        let busy = l.admit(&b, Demand::chat(10, Some(1), 1), 0).err().map(|r| r.exceeded);
        assert_eq!(busy, Some(Exceeded::Concurrency { limit: 1 }));
        l.settle(&b, held, Some(50), 0);
        assert_eq!(b.in_flight(), 0);
        assert_eq!(l.levels(&b, 0).tokens.map(|t| t.remaining), Some(950), "refunded to the 50 used");
        let too_many = l.admit(&b, Demand::chat(400, Some(900), 1), 0).err().unwrap_or_else(|| panic!("admitted"));
        assert!(matches!(too_many.exceeded, Exceeded::Tokens { requested: 1000, retry_after: Some(_), .. }));
        assert_eq!(too_many.levels.requests.map(|r| r.remaining), Some(9), "the request unit came back");
        assert_eq!(b.in_flight(), 0, "the slot came back");
    }

    #[test]
    fn only_an_explicit_output_limit_makes_a_request_too_large() {
        let l = limits(None, Some(1000), None, 1);
        let b = Buckets::default();
        let refused = l.admit(&b, Demand::chat(40, Some(5000), 1), 0).err().map(|r| r.exceeded);
        assert_eq!(refused, Some(Exceeded::Tokens { limit: 1000, used: 0, requested: 5010, retry_after: None }));
        let defaulted = Demand { input: 10, output: 5000, explicit: false };
        let held = l.admit(&b, defaulted, 0).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(held.levels.tokens.map(|t| t.remaining), Some(0), "the default is cut to the allowance");
        l.settle(&b, held, Some(3000), 0);
        assert!(l.admit(&b, Demand::embeddings(4), 30 * SEC).is_err(), "charged the 2000 beyond the reservation");
        assert!(l.admit(&b, Demand::embeddings(4), 180 * SEC + 1).is_ok());
    }

    #[test]
    fn each_replica_enforces_its_share() {
        let l = limits(Some(10), Some(1001), Some(5), 2);
        assert_eq!((l.requests_per_minute(), l.tokens_per_minute(), l.max_concurrent()), (Some(5), Some(500), Some(2)));
    }

    #[test]
    fn headers_say_limit_remaining_and_reset() {
        let l = limits(Some(60), Some(1000), None, 1);
        let b = Buckets::default();
        let held = l.admit(&b, Demand::chat(40, Some(90), 1), 0).unwrap_or_else(|e| panic!("{e:?}"));
        let mut h = HeaderMap::new();
        l.write_headers(&held.levels, &mut h);
        let get = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        assert_eq!(h.len(), l.header_count());
        assert_eq!(get("x-ratelimit-limit-requests"), "60");
        assert_eq!(get("x-ratelimit-remaining-requests"), "59");
        assert_eq!(get("x-ratelimit-reset-requests"), "1s");
        assert_eq!(get("x-ratelimit-limit-tokens"), "1000");
        assert_eq!(get("x-ratelimit-remaining-tokens"), "900");
        assert_eq!(get("x-ratelimit-reset-tokens"), "6s");
        l.settle(&b, held, None, 0);
    }

    #[test]
    fn messages_read_like_openai() {
        let e = Exceeded::Tokens { limit: 1000, used: 900, requested: 300, retry_after: Some(12_300_000_000) };
        assert_eq!(e.kind(), "tokens");
        assert_eq!(e.retry_after_secs(), Some(13));
        assert!(e.message().contains("Limit 1000, Used 900, Requested 300. Please try again in 12.3s."));
        let e = Exceeded::Requests { limit: 3, retry_after: 20 * SEC };
        assert_eq!((e.kind(), e.retry_after_secs()), ("requests", Some(20)));
        assert!(e.message().contains("requests per min (RPM): Limit 3"));
    }
}

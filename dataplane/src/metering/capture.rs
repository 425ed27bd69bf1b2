//! What a request keeps of its bodies, so that tokens the upstream did not
//! report can be counted when the record is finished, and so that a key with
//! body logging gets its bodies stored. Keeping is cheap and bounded:
//! reference-counted slices of bytes already in memory (no copy, no
//! allocation for the usual request and a stream of up to
//! [`INLINE_FRAMES`] frames), up to a byte cap; past the cap only a length is
//! counted. Nothing is parsed or tokenized until the record is finished, and
//! then only when needed.

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;

use super::estimate::{self, Estimate, TEXT_CAP};
use super::redact;
use crate::parts::Parts;

/// Request bodies up to this size are kept whole (they are in memory
/// already); of larger ones, a copy of the first bytes is kept.
pub(crate) const REQUEST_KEEP: usize = 1024 * 1024;

/// Bytes of the answer kept for counting (more when body logging asks for
/// more).
pub(crate) const ANSWER_KEEP: usize = TEXT_CAP;

/// Upstream frames kept without a heap allocation.
const INLINE_FRAMES: usize = 16;

/// Body logging for one key: the cap per body, and the caller's key, which
/// is redacted wherever it appears.
pub(crate) struct BodyLog {
    /// Bytes stored per body.
    pub max_bytes: usize,
    pub key: Box<str>,
}

impl std::fmt::Debug for BodyLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyLog").field("max_bytes", &self.max_bytes).field("key", &"<redacted>").finish()
    }
}

/// How the answering attempt answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answered {
    Whole,
    Stream,
}

/// The request's and the answer's bytes, as far as they are kept.
#[derive(Debug, Default)]
pub(crate) struct Capture {
    /// The whole request body, or its first bytes.
    request: Bytes,
    request_len: usize,
    answered: Option<Answered>,
    /// The answer as the upstream sent it, in order, up to `answer_cap`.
    answer: SmallVec<[Bytes; INLINE_FRAMES]>,
    answer_kept: usize,
    /// Bytes of the whole answer, kept or not.
    answer_len: u64,
    log: Option<Box<BodyLog>>,
}

impl Capture {
    pub fn new(log: Option<Box<BodyLog>>) -> Self {
        Self { log, ..Self::default() }
    }

    /// The key logs bodies.
    pub fn logs_bodies(&self) -> bool {
        self.log.is_some()
    }

    fn answer_cap(&self) -> usize {
        self.log.as_ref().map_or(ANSWER_KEEP, |l| l.max_bytes.max(ANSWER_KEEP))
    }

    /// Keeps the client's request body.
    pub fn request(&mut self, body: &Bytes) {
        self.request_len = body.len();
        self.request = if body.len() <= REQUEST_KEEP {
            body.clone()
        } else {
            // A slice would pin the whole body for as long as a stream runs.
            let keep = self.log.as_ref().map_or(TEXT_CAP, |l| l.max_bytes.max(TEXT_CAP));
            Bytes::copy_from_slice(&body[..keep.min(body.len())])
        };
    }

    /// A whole answer arrived; `usage_known`: the upstream reported its usage
    /// (then it is kept only for body logging).
    pub fn whole(&mut self, answer: &Parts, usage_known: bool) {
        self.answered = Some(Answered::Whole);
        if usage_known && self.log.is_none() {
            return;
        }
        for part in answer.0.iter().flatten() {
            self.frame(part);
        }
    }

    /// A stream was committed to the client.
    pub fn stream(&mut self) {
        self.answered = Some(Answered::Stream);
    }

    /// One frame of the answer, as the upstream sent it.
    pub fn frame(&mut self, data: &Bytes) {
        self.answer_len += data.len() as u64;
        let room = self.answer_cap().saturating_sub(self.answer_kept);
        if room == 0 || data.is_empty() {
            return;
        }
        let kept = if data.len() <= room { data.clone() } else { data.slice(..room) };
        self.answer_kept += kept.len();
        self.answer.push(kept);
    }

    /// The kept answer in one piece.
    fn answer_bytes(&self) -> Bytes {
        match self.answer.as_slice() {
            [one] => one.clone(),
            frames => {
                let mut all = BytesMut::with_capacity(self.answer_kept);
                frames.iter().for_each(|f| all.extend_from_slice(f));
                all.freeze()
            }
        }
    }

    /// Counts the tokens of a request whose answer came without usage; `None`
    /// when no answer came (nothing was produced to charge).
    pub fn estimate(&self) -> Option<Estimate> {
        let answered = self.answered?;
        let (input, input_scaled) = estimate::input(&self.request, self.request_len);
        let (mut usage, output_scaled) = estimate::output(self.answer_bytes(), answered == Answered::Stream);
        let mut scaled = input_scaled || output_scaled;
        let total = usize::try_from(self.answer_len).unwrap_or(usize::MAX);
        if total > self.answer_kept && self.answer_kept > 0 {
            // Only the first bytes of the answer were kept: the rest is
            // assumed to say as much per byte.
            let per = |n: u64| {
                u64::try_from((u128::from(n) * total as u128).div_ceil(self.answer_kept as u128)).unwrap_or(u64::MAX)
            };
            usage.output = per(usage.output);
            usage.reasoning = per(usage.reasoning);
            scaled = true;
        }
        usage.input = input;
        Some(Estimate { usage, scaled })
    }

    /// The bodies to store when the key logs them: each redacted, then cut to
    /// the key's cap.
    pub fn bodies(&self, secrets: &[&str]) -> Option<weaver_store::Bodies> {
        let log = self.log.as_ref()?;
        let mut secrets: SmallVec<[&str; 4]> = secrets.iter().copied().collect();
        secrets.push(&log.key);
        let request = redact::redact(&self.request, &secrets, log.max_bytes);
        let answer = self.answer_bytes();
        let mut response = redact::redact(&answer, &secrets, log.max_bytes);
        // A model that repeats a secret streams it in pieces, one event each,
        // where no search of the SSE text finds it: then the answer is not kept.
        if self.answered == Some(Answered::Stream) {
            let said = estimate::streamed_text(answer);
            if secrets.iter().any(|s| s.len() >= redact::MIN_SECRET && said.contains(s)) {
                response = redact::Redacted { text: redact::WITHHELD.to_owned(), truncated: true };
            }
        }
        Some(weaver_store::Bodies {
            request_truncated: request.truncated || self.request_len > self.request.len(),
            request: request.text,
            response_truncated: response.truncated || self.answer_len > self.answer_kept as u64,
            response: response.text,
        })
    }
}

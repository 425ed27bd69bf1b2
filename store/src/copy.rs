//! A batch of usage events as the body of one binary `COPY ... FROM STDIN`
//! (<https://www.postgresql.org/docs/current/sql-copy.html>, "Binary Format"):
//! each field written once, straight from the record into one buffer, where
//! binding twenty column arrays would first copy every value into a vector and
//! then encode each array element by element.

use crate::StoreError;
use crate::record::{AttemptRecord, UsageRecord};
use crate::rollup::to_i64;

/// The statement the buffer of [`events`] answers, columns in its field order.
pub(crate) const COPY_EVENTS: &str = "COPY usage_events (time_ms, request_id, namespace, api_key, channel, model, \
    upstream_model, status, outcome, input_tokens, output_tokens, cached_input_tokens, cache_write_tokens, \
    reasoning_tokens, estimated, cost_nanos, duration_ms, ttft_ms, replica, attempts, client_request_id) \
    FROM STDIN (FORMAT binary)";

/// Fields per row of [`COPY_EVENTS`].
const FIELDS: i16 = 21;

/// The signature, flags and header extension length that open a binary `COPY`.
const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// The field count that closes a binary `COPY`.
const TRAILER: i16 = -1;

/// `jsonb`'s binary form: a version byte, then the JSON text.
const JSONB_VERSION: u8 = 1;

/// Bytes a typical row takes (numbers, short names, one attempt), to size the buffer once.
const ROW_BYTES: usize = 384;

/// The binary `COPY` body of `records` for [`COPY_EVENTS`]: the same values,
/// range checks and attempts JSON as the events insert, so both store the same rows.
pub(crate) fn events(records: &[UsageRecord]) -> Result<Vec<u8>, StoreError> {
    let mut out = Row(Vec::with_capacity(HEADER.len() + records.len() * ROW_BYTES + 2));
    out.0.extend_from_slice(HEADER);
    for r in records {
        out.0.extend_from_slice(&FIELDS.to_be_bytes());
        out.bigint(r.time);
        out.text(&r.request_id)?;
        out.text(&r.namespace)?;
        out.text(&r.api_key)?;
        out.text(r.channel.as_deref().unwrap_or_default())?;
        out.text(&r.model)?;
        out.text(&r.upstream_model)?;
        out.int(i32::from(r.status));
        out.text(r.outcome.as_str())?;
        out.bigint(to_i64("input_tokens", r.input_tokens)?);
        out.bigint(to_i64("output_tokens", r.output_tokens)?);
        out.bigint(to_i64("cached_input_tokens", r.cached_input_tokens)?);
        out.bigint(to_i64("cache_write_tokens", r.cache_write_tokens)?);
        out.bigint(to_i64("reasoning_tokens", r.reasoning_tokens)?);
        out.boolean(r.estimated);
        out.bigint(to_i64("cost_nanos", r.cost_nanos)?);
        out.bigint(to_i64("duration_ms", r.duration_ms)?);
        match r.ttft_ms {
            Some(t) => out.bigint(to_i64("ttft_ms", t)?),
            None => out.null(),
        }
        out.text(&r.replica)?;
        out.attempts(&r.attempts)?;
        match &r.client_request_id {
            Some(id) => out.text(id)?,
            None => out.null(),
        }
    }
    out.0.extend_from_slice(&TRAILER.to_be_bytes());
    Ok(out.0)
}

/// The buffer, with one writer per field type: a big-endian `i32` length
/// (`-1` for NULL), then the value in the type's binary form.
struct Row(Vec<u8>);

impl Row {
    fn len(&mut self, field: &'static str, n: usize) -> Result<(), StoreError> {
        let n = i32::try_from(n).map_err(|_| StoreError::OutOfRange { field, value: n as u64 })?;
        self.0.extend_from_slice(&n.to_be_bytes());
        Ok(())
    }

    fn bigint(&mut self, v: i64) {
        self.0.extend_from_slice(&8i32.to_be_bytes());
        self.0.extend_from_slice(&v.to_be_bytes());
    }

    fn int(&mut self, v: i32) {
        self.0.extend_from_slice(&4i32.to_be_bytes());
        self.0.extend_from_slice(&v.to_be_bytes());
    }

    fn boolean(&mut self, v: bool) {
        self.0.extend_from_slice(&1i32.to_be_bytes());
        self.0.push(u8::from(v));
    }

    fn null(&mut self) {
        self.0.extend_from_slice(&(-1i32).to_be_bytes());
    }

    fn text(&mut self, v: &str) -> Result<(), StoreError> {
        self.len("text length", v.len())?;
        self.0.extend_from_slice(v.as_bytes());
        Ok(())
    }

    /// The attempts as `jsonb`, written in place, then the length in front
    /// of it. The JSON text is serde's for `[AttemptRecord]` (a test holds
    /// them equal), written member by member: serde_json's serializer took
    /// more instructions per record than the rest of the row together.
    fn attempts(&mut self, attempts: &[AttemptRecord]) -> Result<(), StoreError> {
        let at = self.0.len();
        self.0.extend_from_slice(&[0; 4]);
        self.0.push(JSONB_VERSION);
        let out = &mut self.0;
        out.push(b'[');
        for (i, a) in attempts.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"channel\":");
            serde_json::to_writer(&mut *out, a.channel.as_str())?;
            out.extend_from_slice(b",\"status\":");
            serde_json::to_writer(&mut *out, &a.status)?;
            out.extend_from_slice(b",\"error\":");
            match &a.error {
                Some(e) => serde_json::to_writer(&mut *out, e.as_str())?,
                None => out.extend_from_slice(b"null"),
            }
            out.extend_from_slice(b",\"ttft_ms\":");
            match a.ttft_ms {
                Some(t) => serde_json::to_writer(&mut *out, &t)?,
                None => out.extend_from_slice(b"null"),
            }
            out.push(b'}');
        }
        out.push(b']');
        let n = self.0.len() - at - 4;
        let n = i32::try_from(n).map_err(|_| StoreError::OutOfRange { field: "attempts length", value: n as u64 })?;
        self.0[at..at + 4].copy_from_slice(&n.to_be_bytes());
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;
    use crate::record::tests::sample;

    #[test]
    fn a_row_is_twenty_one_length_prefixed_fields_between_header_and_trailer() {
        let mut r = sample();
        r.ttft_ms = None;
        let body = events(&[r.clone()]).unwrap();
        assert!(body.starts_with(HEADER));
        assert!(body.ends_with(&TRAILER.to_be_bytes()));
        let mut at = HEADER.len();
        let mut take = |n: usize| {
            let s = &body[at..at + n];
            at += n;
            s.to_vec()
        };
        assert_eq!(take(2), FIELDS.to_be_bytes());
        let mut fields = Vec::new();
        for _ in 0..FIELDS {
            let len = i32::from_be_bytes(take(4).try_into().unwrap());
            fields.push((len >= 0).then(|| take(len as usize)));
        }
        assert_eq!(take(2), TRAILER.to_be_bytes());
        assert_eq!(fields[0].as_deref(), Some(&r.time.to_be_bytes()[..]));
        assert_eq!(fields[1].as_deref(), Some(r.request_id.as_bytes()));
        assert_eq!(fields[7].as_deref(), Some(&200i32.to_be_bytes()[..]));
        assert_eq!(fields[8].as_deref(), Some(&b"ok"[..]));
        assert_eq!(fields[14].as_deref(), Some(&[0u8][..]));
        assert_eq!(fields[17], None, "ttft_ms is NULL");
        let attempts = fields[19].clone().unwrap();
        assert_eq!(attempts[0], JSONB_VERSION);
        assert_eq!(attempts[1..], serde_json::to_vec(&r.attempts).unwrap());
        assert_eq!(fields[20], None, "client_request_id is NULL when the client sent none");
        r.client_request_id = Some("mine".into());
        let body = events(&[r]).unwrap();
        assert!(body.ends_with(&[&4i32.to_be_bytes()[..], b"mine", &TRAILER.to_be_bytes()].concat()));
    }

    #[test]
    fn attempts_are_the_json_serde_writes() {
        let mut r = sample();
        for attempts in [
            vec![],
            vec![
                AttemptRecord {
                    channel: "a\"b\\c".into(),
                    status: 429,
                    error: Some("rate \"limited\"\n".into()),
                    ttft_ms: None,
                },
                AttemptRecord { channel: "ünï".into(), status: 200, error: None, ttft_ms: Some(u64::MAX) },
            ],
        ] {
            r.attempts = attempts;
            let mut row = Row(Vec::new());
            row.attempts(&r.attempts).unwrap();
            assert_eq!(row.0[4], JSONB_VERSION);
            assert_eq!(row.0[5..], serde_json::to_vec(&r.attempts).unwrap());
            assert_eq!(i32::from_be_bytes(row.0[..4].try_into().unwrap()) as usize, row.0.len() - 4);
        }
    }

    #[test]
    fn amounts_beyond_the_column_are_refused_as_before() {
        let mut r = sample();
        r.cost_nanos = u64::MAX;
        assert!(matches!(events(&[r]), Err(StoreError::OutOfRange { field: "cost_nanos", .. })));
    }
}

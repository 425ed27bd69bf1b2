//! `GET /admin/v1/usage/export?format=csv|jsonl`: every matching record,
//! streamed. Pages of [`PAGE`] records are read with the keyset cursor and
//! written to the body as they come, so memory stays at one page whatever the
//! export's size, and a slow client slows the reads (the body is polled only
//! as the connection drains).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, header};
use weaver_crds::money::Usd;
use weaver_store::{RecordFilter, RecordPage, UsageRecord, UsageStore};

use crate::UsageApi;
use crate::auth::{Authorize, Resource};
use crate::error::ApiError;
use crate::keys::KeyDirectory;
use crate::params::{FILTERS, Params, RECORD_FILTERS};

/// Records read from the store per page of the export.
pub const PAGE: u32 = 1000;

const FORMAT: &[&str] = &["format"];

/// The CSV header: the record's JSON fields, in the same order.
pub const CSV_COLUMNS: [&str; 19] = [
    "request_id",
    "client_request_id",
    "time",
    "namespace",
    "api_key",
    "channel",
    "model",
    "upstream_model",
    "status",
    "outcome",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "reasoning_tokens",
    "estimated",
    "cost_usd",
    "duration_ms",
    "ttft_ms",
    "attempts",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Csv,
    Jsonl,
}

impl Format {
    fn parse(text: Option<&str>) -> Result<Format, ApiError> {
        match text {
            None | Some("jsonl") => Ok(Format::Jsonl),
            Some("csv") => Ok(Format::Csv),
            Some(other) => {
                Err(ApiError::bad_parameter("format", format!("unknown format {other:?}; expected csv or jsonl")))
            }
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Format::Csv => "text/csv; charset=utf-8",
            Format::Jsonl => "application/x-ndjson",
        }
    }

    fn disposition(self) -> &'static str {
        match self {
            Format::Csv => "attachment; filename=\"usage.csv\"",
            Format::Jsonl => "attachment; filename=\"usage.jsonl\"",
        }
    }

    /// One page, encoded; the CSV header goes before the first.
    fn encode(self, records: &[UsageRecord], header: bool) -> Result<Bytes, std::io::Error> {
        match self {
            Format::Jsonl => {
                let mut out = Vec::with_capacity(records.len() * 512);
                for r in records {
                    serde_json::to_writer(&mut out, &r.api())?;
                    out.push(b'\n');
                }
                Ok(out.into())
            }
            Format::Csv => {
                let mut w = csv::WriterBuilder::new()
                    .has_headers(false)
                    .from_writer(Vec::with_capacity(records.len() * 384 + if header { 256 } else { 0 }));
                if header {
                    w.write_record(CSV_COLUMNS).map_err(std::io::Error::other)?;
                }
                for r in records {
                    w.write_record(csv_row(r)?).map_err(std::io::Error::other)?;
                }
                w.into_inner().map(Bytes::from).map_err(|e| std::io::Error::other(e.to_string()))
            }
        }
    }
}

/// A record as CSV fields, in [`CSV_COLUMNS`] order: what the JSON form holds,
/// with empty fields for nulls and the attempts as one JSON array.
fn csv_row(r: &UsageRecord) -> Result<[String; 19], std::io::Error> {
    let time = jiff::Timestamp::from_millisecond(r.time).map_err(std::io::Error::other)?;
    Ok([
        r.request_id.clone(),
        r.client_request_id.clone().unwrap_or_default(),
        time.to_string(),
        r.namespace.to_string(),
        r.api_key.to_string(),
        r.channel.as_deref().unwrap_or_default().to_owned(),
        r.model.to_string(),
        r.upstream_model.to_string(),
        r.status.to_string(),
        r.outcome.as_str().to_owned(),
        r.input_tokens.to_string(),
        r.output_tokens.to_string(),
        r.cached_input_tokens.to_string(),
        r.reasoning_tokens.to_string(),
        r.estimated.to_string(),
        Usd(r.cost_nanos).to_string(),
        r.duration_ms.to_string(),
        r.ttft_ms.map(|t| t.to_string()).unwrap_or_default(),
        serde_json::to_string(&r.attempts)?,
    ])
}

/// Where the export stands between two pages.
struct Pages<S> {
    store: S,
    filter: RecordFilter,
    format: Format,
    /// The first page, read before the response was committed.
    first: Option<RecordPage>,
    cursor: Option<String>,
    header: bool,
    done: bool,
}

impl<S: UsageStore + 'static> Pages<S> {
    /// The next encoded page; `None` after the last one. A store failure
    /// mid-export ends the body with an error, so the client sees a broken
    /// transfer instead of a short file that looks complete.
    async fn next(mut self) -> Option<(Result<Bytes, std::io::Error>, Self)> {
        if self.done {
            return None;
        }
        let page = match self.first.take() {
            Some(page) => page,
            None => match self.store.records(&self.filter, self.cursor.as_deref(), PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(error = %e, category = e.category(), "usage export stopped: the store failed");
                    self.done = true;
                    return Some((Err(std::io::Error::other("the usage store failed mid-export")), self));
                }
            },
        };
        self.cursor = page.next_cursor;
        self.done = self.cursor.is_none();
        let encoded = self.format.encode(&page.records, std::mem::take(&mut self.header));
        if encoded.is_err() {
            self.done = true;
        }
        Some((encoded, self))
    }
}

pub(crate) async fn handle<S: UsageStore + Clone + 'static, A: Authorize, K: KeyDirectory>(
    State(api): State<Arc<UsageApi<S, A, K>>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(query.as_deref());
    let visible = api.visible(&headers, Resource::Usage, &params).await?;
    params.check(&[FILTERS, RECORD_FILTERS, FORMAT])?;
    let mut filter = params.record_filter()?;
    let format = Format::parse(params.one("format")?)?;
    let first = match visible.namespaces() {
        Some(namespaces) => {
            filter.usage.namespaces = namespaces;
            // Read before answering, so a store that does not answer is a 503
            // and not a broken download.
            api.store.records(&filter, None, PAGE).await.map_err(ApiError::from_store)?
        }
        None => RecordPage::default(),
    };
    let pages = Pages {
        store: api.store.clone(),
        filter,
        format,
        first: Some(first),
        cursor: None,
        header: format == Format::Csv,
        done: false,
    };
    let body = Body::from_stream(futures_util::stream::unfold(pages, Pages::next));
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(format.content_type())),
        (header::CONTENT_DISPOSITION, HeaderValue::from_static(format.disposition())),
    ];
    Ok((headers, body).into_response())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly")]
mod tests {
    use super::*;
    use weaver_store::{AttemptRecord, Outcome};

    fn record() -> UsageRecord {
        UsageRecord {
            request_id: "req,\"1\"\nx".into(),
            client_request_id: None,
            time: 1_700_000_000_123,
            namespace: "team-a".into(),
            api_key: "ci".into(),
            channel: None,
            model: "gpt-4o-mini".into(),
            upstream_model: "gpt-4o-mini-2024-07-18".into(),
            status: 502,
            outcome: Outcome::UpstreamError,
            input_tokens: 12,
            output_tokens: 0,
            cached_input_tokens: 0,
            cache_write_tokens: 0,
            reasoning_tokens: 0,
            estimated: false,
            cost_nanos: 1_800,
            duration_ms: 85,
            ttft_ms: None,
            replica: "gw-0".into(),
            attempts: vec![AttemptRecord {
                channel: "a".into(),
                status: 500,
                error: Some("boom, \"bad\"".into()),
                ttft_ms: None,
            }],
            bodies: None,
        }
    }

    #[test]
    fn csv_quotes_what_needs_it_and_reads_back_as_the_json_form() {
        let bytes = Format::Csv.encode(&[record()], true).unwrap();
        let mut reader = csv::Reader::from_reader(bytes.as_ref());
        assert_eq!(reader.headers().unwrap().iter().collect::<Vec<_>>(), CSV_COLUMNS);
        let rows: Vec<csv::StringRecord> = reader.records().collect::<Result<_, _>>().unwrap();
        assert_eq!(rows.len(), 1);
        let json = serde_json::to_value(record().api()).unwrap();
        for (column, field) in CSV_COLUMNS.iter().zip(rows[0].iter()) {
            if *column == "attempts" {
                assert_eq!(serde_json::from_str::<serde_json::Value>(field).unwrap(), json["attempts"]);
                continue;
            }
            let expected = match &json[column] {
                serde_json::Value::Null => String::new(),
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            assert_eq!(field, expected, "{column}");
        }
    }

    #[test]
    fn jsonl_is_one_api_record_per_line() {
        let bytes = Format::Jsonl.encode(&[record(), record()], false).unwrap();
        let lines: Vec<&str> = std::str::from_utf8(&bytes).unwrap().lines().collect();
        assert_eq!(lines.len(), 2);
        let parsed: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(parsed, serde_json::to_value(record().api()).unwrap());
    }
}

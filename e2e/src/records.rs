//! Reading back what the gateways metered: every usage record a store holds
//! for a filter, and the check that it holds exactly the requests a test made.

use std::collections::HashSet;

use weaver_store::{Outcome, RecordFilter, Store, UsageRecord, UsageStore as _};

/// Every record matching `filter`, walking the store's keyset pages.
pub async fn all(store: &Store, filter: &RecordFilter) -> anyhow::Result<Vec<UsageRecord>> {
    let (mut records, mut cursor) = (Vec::new(), None);
    loop {
        let page = store.records(filter, cursor.as_deref(), 1000).await?;
        records.extend(page.records);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(records),
        }
    }
}

/// The id a record's request is known by to the test that sent it: the
/// client's own id when it sent one, else the gateway's (from the answer).
pub fn sent_id(r: &UsageRecord) -> &str {
    r.client_request_id.as_deref().unwrap_or(&r.request_id)
}

/// Checks that `records` are exactly the requests with ids `expected` (see
/// [`sent_id`]), each once: none missing, none twice, none from elsewhere.
pub fn ensure_exactly(records: &[UsageRecord], expected: &HashSet<String>) -> anyhow::Result<()> {
    let unique: HashSet<&str> = records.iter().map(sent_id).collect();
    anyhow::ensure!(unique.len() == records.len(), "{} records in the store twice", records.len() - unique.len());
    let missing: Vec<&String> = expected.iter().filter(|id| !unique.contains(id.as_str())).collect();
    let extra: Vec<&UsageRecord> = records.iter().filter(|r| !expected.contains(sent_id(r))).collect();
    anyhow::ensure!(
        missing.is_empty() && extra.is_empty(),
        "of {} requests made, {} have no record (e.g. {:?}); {} records are of no request made (e.g. {:?})",
        expected.len(),
        missing.len(),
        missing.first(),
        extra.len(),
        extra.first()
    );
    Ok(())
}

/// One metered request as a gateway would write it: `tokens` (input,
/// output), `cost` in nano-dollars, now.
pub fn record(
    ns: &str,
    key: &str,
    channel: Option<&str>,
    id: &str,
    outcome: Outcome,
    tokens: (u64, u64),
    cost: u64,
) -> UsageRecord {
    UsageRecord {
        request_id: format!("{ns}-{id}"),
        client_request_id: None,
        time: weaver_store::now_ms(),
        namespace: ns.into(),
        api_key: key.into(),
        channel: channel.map(Into::into),
        model: "gpt-4o-mini".into(),
        upstream_model: "gpt-4o-mini-2024-07-18".into(),
        status: if outcome == Outcome::Ok { 200 } else { 502 },
        outcome,
        input_tokens: tokens.0,
        output_tokens: tokens.1,
        cached_input_tokens: 0,
        cache_write_tokens: 0,
        reasoning_tokens: 0,
        estimated: false,
        cost_nanos: cost,
        duration_ms: 120,
        ttft_ms: Some(40),
        replica: "e2e".into(),
        attempts: Vec::new(),
        bodies: None,
    }
}

//! Reading back what the gateways metered: every usage record a store holds
//! for a filter, and the check that it holds exactly the requests a test made.

use std::collections::HashSet;

use weaver_store::{RecordFilter, Store, UsageRecord, UsageStore as _};

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

/// Checks that `records` are exactly the requests with ids `expected`, each
/// once: none missing, none twice, none from elsewhere.
pub fn ensure_exactly(records: &[UsageRecord], expected: &HashSet<String>) -> anyhow::Result<()> {
    let unique: HashSet<&str> = records.iter().map(|r| r.request_id.as_str()).collect();
    anyhow::ensure!(unique.len() == records.len(), "{} records in the store twice", records.len() - unique.len());
    let missing: Vec<&String> = expected.iter().filter(|id| !unique.contains(id.as_str())).collect();
    let extra: Vec<&UsageRecord> = records.iter().filter(|r| !expected.contains(&r.request_id)).collect();
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

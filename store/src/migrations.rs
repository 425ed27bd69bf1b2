//! The schema, embedded in the binary and applied in version order at start-up.
//! Applied versions are recorded in `weaver_store_migrations`; a migration is never
//! edited once released — a change is a new file.

pub(crate) struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

pub(crate) const POSTGRES: &[Migration] = &[
    Migration { version: 1, name: "usage", sql: include_str!("../migrations/postgres/0001_usage.sql") },
    Migration { version: 2, name: "usage_bodies", sql: include_str!("../migrations/postgres/0002_usage_bodies.sql") },
    Migration { version: 3, name: "budget_ledger", sql: include_str!("../migrations/postgres/0003_budget_ledger.sql") },
    Migration {
        version: 4,
        name: "request_id_index",
        sql: include_str!("../migrations/postgres/0004_request_id_index.sql"),
    },
    Migration {
        version: 5,
        name: "client_request_id",
        sql: include_str!("../migrations/postgres/0005_client_request_id.sql"),
    },
];

pub(crate) const SQLITE: &[Migration] = &[
    Migration { version: 1, name: "usage", sql: include_str!("../migrations/sqlite/0001_usage.sql") },
    Migration { version: 2, name: "usage_bodies", sql: include_str!("../migrations/sqlite/0002_usage_bodies.sql") },
    Migration { version: 3, name: "budget_ledger", sql: include_str!("../migrations/sqlite/0003_budget_ledger.sql") },
    Migration {
        version: 4,
        name: "request_id_index",
        sql: include_str!("../migrations/sqlite/0004_request_id_index.sql"),
    },
    Migration {
        version: 5,
        name: "client_request_id",
        sql: include_str!("../migrations/sqlite/0005_client_request_id.sql"),
    },
];

pub(crate) const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS weaver_store_migrations \
    (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_ms BIGINT NOT NULL)";

/// The migrations `current` lacks; an error when the database is newer than the code
/// (an older replica must not write into a schema it does not know).
pub(crate) fn pending(all: &'static [Migration], current: i64) -> Result<&'static [Migration], crate::StoreError> {
    let newest = all.last().map_or(0, |m| m.version);
    if current > newest {
        return Err(crate::StoreError::SchemaTooNew(current));
    }
    Ok(&all[all.partition_point(|m| m.version <= current)..])
}

-- Usage events, one row per request (SQLite: the standalone store; retention deletes
-- old rows). Same columns as on Postgres; attempts and latency sketches are JSON text.
CREATE TABLE usage_events (
    time_ms             INTEGER NOT NULL,
    request_id          TEXT    NOT NULL,
    namespace           TEXT    NOT NULL,
    api_key             TEXT    NOT NULL,
    channel             TEXT    NOT NULL, -- '' when no channel answered
    model               TEXT    NOT NULL,
    upstream_model      TEXT    NOT NULL,
    status              INTEGER NOT NULL,
    outcome             TEXT    NOT NULL,
    input_tokens        INTEGER NOT NULL,
    output_tokens       INTEGER NOT NULL,
    cached_input_tokens INTEGER NOT NULL,
    cache_write_tokens  INTEGER NOT NULL,
    reasoning_tokens    INTEGER NOT NULL,
    estimated           INTEGER NOT NULL,
    cost_nanos          INTEGER NOT NULL, -- nano-dollars
    duration_ms         INTEGER NOT NULL,
    ttft_ms             INTEGER,
    replica             TEXT    NOT NULL,
    attempts            TEXT    NOT NULL,
    PRIMARY KEY (time_ms, request_id)
) WITHOUT ROWID;

CREATE INDEX usage_events_namespace ON usage_events (namespace, time_ms, request_id);
CREATE INDEX usage_events_key ON usage_events (namespace, api_key, time_ms);

CREATE TABLE usage_hourly (
    bucket_ms           INTEGER NOT NULL,
    namespace           TEXT    NOT NULL,
    api_key             TEXT    NOT NULL,
    model               TEXT    NOT NULL,
    channel             TEXT    NOT NULL,
    requests            INTEGER NOT NULL,
    errors              INTEGER NOT NULL,
    input_tokens        INTEGER NOT NULL,
    output_tokens       INTEGER NOT NULL,
    cached_input_tokens INTEGER NOT NULL,
    cost_nanos          INTEGER NOT NULL,
    latency             TEXT    NOT NULL, -- JSON array: index = bucket, value = count
    PRIMARY KEY (bucket_ms, namespace, api_key, model, channel)
) WITHOUT ROWID;
CREATE INDEX usage_hourly_key ON usage_hourly (namespace, api_key, bucket_ms);

CREATE TABLE usage_daily (
    bucket_ms           INTEGER NOT NULL,
    namespace           TEXT    NOT NULL,
    api_key             TEXT    NOT NULL,
    model               TEXT    NOT NULL,
    channel             TEXT    NOT NULL,
    requests            INTEGER NOT NULL,
    errors              INTEGER NOT NULL,
    input_tokens        INTEGER NOT NULL,
    output_tokens       INTEGER NOT NULL,
    cached_input_tokens INTEGER NOT NULL,
    cost_nanos          INTEGER NOT NULL,
    latency             TEXT    NOT NULL,
    PRIMARY KEY (bucket_ms, namespace, api_key, model, channel)
) WITHOUT ROWID;
CREATE INDEX usage_daily_key ON usage_daily (namespace, api_key, bucket_ms);

-- Usage events: append-only, one row per request, partitioned by UTC day on time_ms
-- (unix milliseconds) so retention drops whole partitions instead of deleting rows.
-- Partitions are created ahead by the store's maintain() and on demand by inserts.
-- The primary key must contain the partition key; a replayed record carries the same
-- time and request id, so (time_ms, request_id) makes replays idempotent.
CREATE TABLE usage_events (
    time_ms             bigint  NOT NULL,
    request_id          text    NOT NULL,
    namespace           text    NOT NULL,
    api_key             text    NOT NULL,
    channel             text    NOT NULL, -- '' when no channel answered
    model               text    NOT NULL,
    upstream_model      text    NOT NULL,
    status              integer NOT NULL,
    outcome             text    NOT NULL,
    input_tokens        bigint  NOT NULL,
    output_tokens       bigint  NOT NULL,
    cached_input_tokens bigint  NOT NULL,
    cache_write_tokens  bigint  NOT NULL,
    reasoning_tokens    bigint  NOT NULL,
    estimated           boolean NOT NULL,
    cost_nanos          bigint  NOT NULL, -- nano-dollars
    duration_ms         bigint  NOT NULL,
    ttft_ms             bigint,
    replica             text    NOT NULL,
    attempts            jsonb   NOT NULL,
    PRIMARY KEY (time_ms, request_id)
) PARTITION BY RANGE (time_ms);

-- Request logs of some namespaces, newest first; and one key's last hour (key_usage).
CREATE INDEX usage_events_namespace ON usage_events (namespace, time_ms, request_id);
CREATE INDEX usage_events_key ON usage_events (namespace, api_key, time_ms);

-- Element-wise sum of two dense latency sketches (index = bucket, value = count).
CREATE FUNCTION weaver_sketch_add(a bigint[], b bigint[]) RETURNS bigint[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(array_agg(coalesce(x, 0) + coalesce(y, 0) ORDER BY i), '{}')
    FROM unnest(a, b) WITH ORDINALITY AS t(x, y, i)
$$;

-- Rollups, kept current in the transaction that inserts the events. bucket_ms is the
-- start of the UTC hour (day); latency is a dense sketch of request durations.
CREATE TABLE usage_hourly (
    bucket_ms           bigint   NOT NULL,
    namespace           text     NOT NULL,
    api_key             text     NOT NULL,
    model               text     NOT NULL,
    channel             text     NOT NULL,
    requests            bigint   NOT NULL,
    errors              bigint   NOT NULL,
    input_tokens        bigint   NOT NULL,
    output_tokens       bigint   NOT NULL,
    cached_input_tokens bigint   NOT NULL,
    cost_nanos          bigint   NOT NULL,
    latency             bigint[] NOT NULL,
    PRIMARY KEY (bucket_ms, namespace, api_key, model, channel)
);
CREATE INDEX usage_hourly_key ON usage_hourly (namespace, api_key, bucket_ms);

CREATE TABLE usage_daily (LIKE usage_hourly INCLUDING ALL);

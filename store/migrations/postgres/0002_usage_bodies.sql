-- Request and response bodies of the keys that log them (redacted, each cut to the key's
-- cap), one row per logged request. Kept as long as the usage events: partitioned by UTC
-- day like usage_events, and each day's partition is dropped with the events'. Inserted
-- in the events' transaction for the records that were new, so replays add nothing.
CREATE TABLE usage_bodies (
    time_ms            bigint  NOT NULL,
    request_id         text    NOT NULL,
    request            text    NOT NULL,
    request_truncated  boolean NOT NULL,
    response           text    NOT NULL,
    response_truncated boolean NOT NULL,
    PRIMARY KEY (time_ms, request_id)
) PARTITION BY RANGE (time_ms);

-- One record's bodies by request id (the usage API's detail view).
CREATE INDEX usage_bodies_request ON usage_bodies (request_id);

-- Request and response bodies of the keys that log them (redacted, each cut to the key's
-- cap), one row per logged request; retention deletes them with the events.
CREATE TABLE usage_bodies (
    time_ms            INTEGER NOT NULL,
    request_id         TEXT    NOT NULL,
    request            TEXT    NOT NULL,
    request_truncated  INTEGER NOT NULL,
    response           TEXT    NOT NULL,
    response_truncated INTEGER NOT NULL,
    PRIMARY KEY (time_ms, request_id)
) WITHOUT ROWID;

CREATE INDEX usage_bodies_request ON usage_bodies (request_id);

-- The id the client chose for a request (`x-client-request-id`, or its own
-- `x-request-id`), NULL when it sent none. `request_id` is always the gateway's
-- own, so records of requests that reuse a client id never collide. Nullable,
-- so adding it rewrites no stored row.
ALTER TABLE usage_events ADD COLUMN client_request_id text;
-- The usage API's `request_id` filter matches either id.
CREATE INDEX usage_events_client_request ON usage_events (client_request_id);

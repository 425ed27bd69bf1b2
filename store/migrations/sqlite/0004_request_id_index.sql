-- The usage API's `request_id` filter (the UI's search by request id) finds
-- one record without reading the table.
CREATE INDEX usage_events_request ON usage_events (request_id);

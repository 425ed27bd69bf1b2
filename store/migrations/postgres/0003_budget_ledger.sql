-- The budget ledger: per budget (an ApiKey, or a namespace with name '') and period
-- (start, unix ms), the limit in force, the spend settled by replicas, and the part
-- of the rest leased out to replicas (the sum of budget_leases.granted_nanos).
-- All amounts in nano-dollars. Leases are granted only from what is left
-- (limit - settled - leased), so a lowered limit only stops new leases.
CREATE TABLE budget_ledger (
    namespace     text   NOT NULL,
    name          text   NOT NULL,
    period_ms     bigint NOT NULL,
    limit_nanos   bigint NOT NULL,
    settled_nanos bigint NOT NULL,
    leased_nanos  bigint NOT NULL,
    updated_ms    bigint NOT NULL,
    PRIMARY KEY (namespace, name, period_ms)
);

-- The slice each replica holds; it expires unless renewed, so a crashed replica's
-- slice returns to the budget.
CREATE TABLE budget_leases (
    namespace     text   NOT NULL,
    name          text   NOT NULL,
    period_ms     bigint NOT NULL,
    replica       text   NOT NULL,
    granted_nanos bigint NOT NULL,
    expires_ms    bigint NOT NULL,
    PRIMARY KEY (namespace, name, period_ms, replica)
);

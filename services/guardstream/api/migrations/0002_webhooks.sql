-- Decision callbacks (api/delivery.py): each tenant's webhook, the posts the API sent to
-- review, and the outbox of deliveries (one per final decision's event id).

CREATE TABLE IF NOT EXISTS webhooks (
    tenant      text PRIMARY KEY,
    url         text NOT NULL,
    secret      text NOT NULL,  -- needed to sign: kept as given, shown once at registration
    created_at  timestamptz NOT NULL DEFAULT now(),
    disabled_at timestamptz     -- set by `guardstream webhooks remove`
);

CREATE TABLE IF NOT EXISTS webhook_watch (
    tenant     text NOT NULL,
    post_id    text NOT NULL,
    policy     text NOT NULL,
    watched_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, post_id)
);
CREATE INDEX IF NOT EXISTS webhook_watch_age ON webhook_watch (watched_at);

CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id              bigserial PRIMARY KEY,
    tenant          text NOT NULL,
    event_id        text NOT NULL,
    post_id         text NOT NULL,
    payload         bytea NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'delivered', 'dead')),
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    UNIQUE (tenant, event_id)
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due
    ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_by_tenant
    ON webhook_deliveries (tenant, id);

-- API keys of tenants (`guardstream api add-key`). A key reads `gsk_<key_id>_<secret>`: the
-- key_id is public (logs, list-keys, revoke-key), the 256-bit secret is shown once and only
-- the SHA-256 of the whole key is kept (a high-entropy key needs no slow hash).
CREATE TABLE api_keys (
    key_id      text PRIMARY KEY,
    key_hash    text NOT NULL,                    -- sha256 hex of the whole key
    tenant      text NOT NULL,
    name        text NOT NULL DEFAULT '',
    rate_per_s  double precision CHECK (rate_per_s > 0),  -- NULL: GUARDSTREAM_API_KEY_RATE_PER_S
    burst       integer CHECK (burst >= 1),               -- NULL: GUARDSTREAM_API_KEY_BURST
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_tenant ON api_keys (tenant);

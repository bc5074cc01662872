-- Erasure by author (`guardstream erase --author`): which posts of a tenant an author wrote.
-- The author id itself is never stored, only its tenant-scoped hash (`verdict.erasure.
-- author_key`). Rows outlive the post's text as long as the archive may hold the post's
-- review (GUARDSTREAM_RETENTION_ARCHIVE_DAYS), so an author's archived samples stay findable.
CREATE TABLE post_authors (
    tenant      text NOT NULL,
    post_id     text NOT NULL,
    author_key  text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (post_id, tenant)
);
CREATE INDEX post_authors_author ON post_authors (tenant, author_key);
CREATE INDEX post_authors_received ON post_authors (received_at);
-- Retention: relayed outbox rows and audit rows are purged by age.
CREATE INDEX outbox_sent ON outbox (sent_at) WHERE sent_at IS NOT NULL;
CREATE INDEX audit_at ON audit (at);

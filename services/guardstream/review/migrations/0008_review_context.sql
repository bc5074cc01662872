-- What a reviewer sees beside a task: earlier decisions on the same or similar content, and the
-- author's other decided posts. All of it tenant-scoped; never another tenant's rows.

-- The author's other posts come from post_authors (0008_erasure_author_index.sql): the
-- author as `verdict.erasure.author_key`, never the author id itself.

-- Derived from a task's post text (holds no text): its near-duplicate fingerprint (the verdict
-- layer's SimHash of the text's signal, with the signal's digits: posts whose digits differ
-- are different posts) and its sentence embedding (verdict/embeddings.py, little-endian
-- float16). Written by the review process's indexer once the text is there; erased with
-- the task (or the text).
CREATE TABLE task_vectors (
    seq         bigserial UNIQUE,                -- the in-process index reads what is new
    task_id     text PRIMARY KEY REFERENCES tasks (task_id) ON DELETE CASCADE,
    tenant      text NOT NULL,
    fingerprint bigint,                          -- NULL: too little signal to fingerprint
    digits      text NOT NULL DEFAULT '',
    model       text NOT NULL,
    vector      bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX task_vectors_tenant_seq ON task_vectors (tenant, seq);
CREATE INDEX task_vectors_near ON task_vectors (tenant, fingerprint, digits)
    WHERE fingerprint IS NOT NULL;
-- Exact duplicates: decided tasks of the same tenant and content key.
CREATE INDEX tasks_tenant_content_key ON tasks (tenant, content_key);

-- The casebook (争议案例手册, issue 22): per tenant and pack, about ten typical contested cases
-- with their decided label and the reviewers' reasons, assembled by `guardstream feedback
-- casebook` from clusters of contested decisions, curated by seniors in the console.
-- A refresh replaces only entries nobody touched: a pinned or edited entry stays as it is, and an
-- entry a senior retired stays retired (its cases are not proposed again).
CREATE TABLE casebook (
    id            text PRIMARY KEY,
    tenant        text NOT NULL,
    pack          text NOT NULL,               -- the policy pack's id (no version)
    lang          text NOT NULL,
    anchor        text NOT NULL,               -- the task nearest the cluster's centre
    title         text NOT NULL CHECK (char_length(title) BETWEEN 1 AND 120),
    reasoning     text NOT NULL CHECK (char_length(reasoning) BETWEEN 1 AND 2000),
    human_verdict text NOT NULL,
    verdicts      jsonb NOT NULL DEFAULT '{}',  -- human verdict -> count in the cluster
    categories    text[] NOT NULL DEFAULT '{}',
    reasons       text[] NOT NULL DEFAULT '{}',
    excerpt       text,                        -- the anchor's text preview (erased with it)
    size          integer NOT NULL CHECK (size >= 1),
    task_ids      text[] NOT NULL,             -- source items: review tasks …
    post_ids      text[] NOT NULL,             -- … and their posts
    state         text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'retired')),
    pinned        boolean NOT NULL DEFAULT false,
    edited        boolean NOT NULL DEFAULT false,
    retired_by    text,                        -- a reviewer id, or NULL: retired by a refresh
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    updated_by    text
);
CREATE INDEX casebook_tenant_pack ON casebook (tenant, pack, state);
CREATE INDEX casebook_post_ids ON casebook USING gin (post_ids);

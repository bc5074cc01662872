-- Review console store: tasks, reviewers and their credentials, reviews, audit, outbox.
-- Applied once at start-up (schema_migrations records it); never edit an applied file.

CREATE TABLE reviewers (
    id              text PRIMARY KEY,            -- pseudonymous reviewer id
    tenants         text[] NOT NULL,             -- tenants this reviewer may see; '*' = all
    role            text NOT NULL CHECK (role IN ('reviewer', 'senior', 'admin')),
    on_call         boolean NOT NULL DEFAULT false,
    password_hash   text NOT NULL,               -- scrypt, see review/auth.py
    last_assigned_at timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_tokens (
    token_hash  text PRIMARY KEY,                -- sha256 of a 256-bit random token
    reviewer_id text NOT NULL REFERENCES reviewers (id) ON DELETE CASCADE,
    expires_at  timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Text of posts, from posts.v1: decisions do not carry it. Rows without a task are purged
-- after GUARDSTREAM_REVIEW_POST_TEXT_TTL_S; rows of reviewed posts stay with their task.
CREATE TABLE post_texts (
    post_id     text PRIMARY KEY,
    tenant      text NOT NULL,
    kind        text NOT NULL,
    text        text NOT NULL,
    prompt      text,
    lang        text,
    region      text,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX post_texts_received ON post_texts (received_at);

CREATE TABLE tasks (
    task_id       text PRIMARY KEY,              -- hash of (post_id, policy): deterministic
    post_id       text NOT NULL,
    policy        text NOT NULL,
    tenant        text NOT NULL,
    lang          text,
    region        text,
    decision_id   text NOT NULL,
    post_event_id text NOT NULL,
    content_key   text NOT NULL,
    model_verdict text NOT NULL,
    categories    text[] NOT NULL DEFAULT '{}',
    confidence    double precision,
    reason        text NOT NULL,
    model         text NOT NULL,
    adapter       text,
    domain_tags   text[] NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL,
    deadline      timestamptz NOT NULL,
    warn_at       timestamptz NOT NULL,
    assign_by     timestamptz NOT NULL,
    -- workflow state; the SLA state is apart: an expired task stays decidable
    state         text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'assigned', 'decided')),
    sla           text NOT NULL DEFAULT 'ok' CHECK (sla IN ('ok', 'warning', 'expired')),
    downgrade_decision_id text,
    assignee      text REFERENCES reviewers (id),
    lock_expires_at timestamptz,
    decided_at    timestamptz,
    human_verdict text,
    late          boolean NOT NULL DEFAULT false,
    UNIQUE (post_id, policy)
);
CREATE INDEX tasks_open_by_deadline ON tasks (tenant, deadline) WHERE state <> 'decided';
CREATE INDEX tasks_open_deadline ON tasks (deadline) WHERE state <> 'decided';
CREATE INDEX tasks_decision ON tasks (decision_id);
CREATE INDEX tasks_assignee ON tasks (assignee) WHERE state = 'assigned';
CREATE INDEX tasks_decided ON tasks (decided_at) WHERE state = 'decided';

-- SLA events that arrived before their task (the task picks them up when created).
CREATE TABLE sla_marks (
    decision_id text PRIMARY KEY,
    sla         text NOT NULL,
    downgrade_decision_id text,
    at          timestamptz NOT NULL
);

CREATE TABLE reviews (
    review_id   text PRIMARY KEY,                -- hash of (task, stage, reviewer)
    task_id     text NOT NULL REFERENCES tasks (task_id),
    stage       text NOT NULL CHECK (stage IN ('first', 'qa')),
    reviewer    text NOT NULL REFERENCES reviewers (id),
    outcome     text NOT NULL CHECK (outcome IN ('confirm', 'correct')),
    verdict     text NOT NULL,
    categories  text[] NOT NULL DEFAULT '{}',
    reason      text CHECK (char_length(reason) <= 50),
    tags        text[] NOT NULL CHECK (cardinality(tags) >= 1),
    late        boolean NOT NULL DEFAULT false,
    action      text,                            -- what the human decision did (first stage)
    human_decision_id text,
    reviewed_at timestamptz NOT NULL
);
CREATE UNIQUE INDEX reviews_one_first ON reviews (task_id) WHERE stage = 'first';
CREATE UNIQUE INDEX reviews_one_qa_each ON reviews (task_id, reviewer) WHERE stage = 'qa';

-- Who did what, when. Written in the transaction of the action it records.
CREATE TABLE audit (
    id        bigserial PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    actor     text,                              -- reviewer id; NULL when unauthenticated
    action    text NOT NULL,
    outcome   text NOT NULL CHECK (outcome IN ('ok', 'denied', 'rejected')),
    tenant    text,
    task_id   text,
    detail    jsonb NOT NULL DEFAULT '{}'        -- what changed; never post text
);
CREATE INDEX audit_task ON audit (task_id);

-- Events and cache writes committed with the state change, sent by the relay afterwards.
CREATE TABLE outbox (
    id        bigserial PRIMARY KEY,
    kind      text NOT NULL CHECK (kind IN ('event', 'human_verdict')),
    topic     text NOT NULL,                     -- logical topic (core.topics.Topic value)
    key       text NOT NULL,
    payload   bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    sent_at   timestamptz
);
CREATE INDEX outbox_unsent ON outbox (kind, id) WHERE sent_at IS NULL;

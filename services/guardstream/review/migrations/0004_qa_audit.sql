-- QA audits (the seeds' 质检): each period's sample of first reviews becomes a queue that
-- senior reviewers work through in the console. One batch per period (the primary key makes
-- sampling idempotent across restarts and replicas); an item is done once a QA-stage review
-- of its task exists. `closed_at` is set when the batch's agreement was evaluated (all items
-- decided, or the next period's batch was sampled) and its alert, if any, queued.
CREATE TABLE qa_batches (
    period        text PRIMARY KEY,              -- "2026-11" or "2026-W47": the reviews' period
    since         timestamptz NOT NULL,          -- first reviews given in [since, until)
    until         timestamptz NOT NULL,
    size          integer NOT NULL CHECK (size >= 0),  -- requested; fewer when fewer reviews
    min_agreement double precision NOT NULL,     -- the bar in force when sampled
    sampled_at    timestamptz NOT NULL,
    closed_at     timestamptz,
    agreed        integer,                       -- at close: re-reviews agreeing / compared
    compared      integer,
    alert_id      text                           -- the qa_agreement_low alert queued, if any
);

CREATE TABLE qa_items (
    period    text NOT NULL REFERENCES qa_batches (period),
    task_id   text NOT NULL REFERENCES tasks (task_id),
    tenant    text NOT NULL,                     -- copied from the task: queue reads by tenant
    reviewer  text NOT NULL,                     -- the first reviewer being checked
    PRIMARY KEY (period, task_id)
);
CREATE INDEX qa_items_task ON qa_items (task_id);
CREATE INDEX reviews_first_at ON reviews (reviewed_at) WHERE stage = 'first';

-- Response moderation: the model's refusal label (from the decision) and the reviewer's.
ALTER TABLE tasks ADD COLUMN model_refusal boolean;
ALTER TABLE reviews ADD COLUMN refusal boolean;

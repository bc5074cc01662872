-- Every human review also becomes a feedback sample for the archive (guardstream.feedback),
-- queued in the same transaction as the review and written by the outbox relay.
ALTER TABLE outbox DROP CONSTRAINT outbox_kind_check;
ALTER TABLE outbox ADD CONSTRAINT outbox_kind_check
    CHECK (kind IN ('event', 'human_verdict', 'feedback_sample'));

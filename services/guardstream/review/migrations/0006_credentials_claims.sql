-- Credentials that can be taken back, and a bound on the claims one reviewer holds.
--
-- A disabled reviewer cannot log in and none of their tokens or sessions is accepted (they are
-- also deleted when the reviewer is disabled or their password changes). Console sessions live
-- here, not only in the signed cookie, so logging out ends them on the server.

ALTER TABLE reviewers ADD COLUMN disabled_at timestamptz;   -- set: no login, token or session

CREATE INDEX api_tokens_reviewer ON api_tokens (reviewer_id);
CREATE INDEX api_tokens_expiry ON api_tokens (expires_at);

CREATE TABLE console_sessions (
    session_hash text PRIMARY KEY,               -- sha256 of the session id the cookie carries
    reviewer_id  text NOT NULL REFERENCES reviewers (id) ON DELETE CASCADE,
    expires_at   timestamptz NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX console_sessions_reviewer ON console_sessions (reviewer_id);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);

-- How many tasks one reviewer may hold (state 'assigned') at once. One row; the review
-- process writes GUARDSTREAM_REVIEW_MAX_CLAIMS into it when it opens the store.
CREATE TABLE claim_limit (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    max_claims integer NOT NULL CHECK (max_claims >= 1)
);
INSERT INTO claim_limit (max_claims) VALUES (1);

-- Enforced by the database for every writer (claim, round-robin assignment, a hand-written
-- UPDATE): the reviewer's row is locked first, so concurrent assignments to one reviewer take
-- turns, and under READ COMMITTED the count (a new statement, a new snapshot) sees every
-- assignment committed before the lock was granted. Tasks a reviewer held before this
-- migration stay held; the bound applies to new assignments.
CREATE FUNCTION enforce_claim_limit() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    held integer;
    cap integer;
BEGIN
    IF NEW.state <> 'assigned' OR NEW.assignee IS NULL THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.state = 'assigned' AND OLD.assignee = NEW.assignee THEN
        RETURN NEW;  -- the same holder: nothing new is held
    END IF;
    PERFORM 1 FROM reviewers WHERE id = NEW.assignee FOR UPDATE;
    SELECT max_claims INTO cap FROM claim_limit;
    SELECT count(*) INTO held FROM tasks
        WHERE assignee = NEW.assignee AND state = 'assigned' AND task_id <> NEW.task_id;
    IF held >= cap THEN
        RAISE EXCEPTION 'reviewer % holds % of % claims', NEW.assignee, held, cap
            USING ERRCODE = 'check_violation', CONSTRAINT = 'tasks_claim_limit';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER tasks_claim_limit BEFORE INSERT OR UPDATE OF state, assignee ON tasks
    FOR EACH ROW EXECUTE FUNCTION enforce_claim_limit();

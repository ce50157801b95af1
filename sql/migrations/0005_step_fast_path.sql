-- The per-step checkpoint, cheaper for Postgres. A step is the hot path (one round trip each),
-- and profiling the backend (callgrind, instructions per committed step) showed most of its CPU
-- going to overhead around the one row it writes, not to the row:
-- * cairn_runner.complete_step (0004) is a two-statement SQL function. A SQL function that is
--   not inlined (SECURITY DEFINER never is) has its statements parsed, analysed and planned
--   afresh at every call (Postgres up to 17), and it then runs two more plpgsql functions
--   (authorize, complete_step), which run a third (fence);
-- * cairn.hash_token is declared IMMUTABLE but calls convert_to (STABLE), so it is never
--   inlined: one more SQL function planned at every call;
-- * the CHECK on steps.kind is an IN list that the executor deserialises and simplifies again
--   for every INSERT (about a tenth of the whole step).
-- So: the runner's complete_step becomes one plpgsql function whose usual path is one INSERT
-- that checks the token and the fence itself; the kind check moves to a domain (checked from
-- the type cache); hash_token becomes inlinable. The security properties are unchanged: the
-- runner role still only executes cairn_runner functions (SECURITY DEFINER, fixed
-- search_path), the token is checked on every write, and a superseded attempt gets CN001.

-- STABLE like convert_to, so the planner inlines it wherever it is used (authorize, and the
-- step below). Same result as before.
CREATE OR REPLACE FUNCTION cairn.hash_token(p_token text) RETURNS bytea
LANGUAGE sql STABLE AS $$ SELECT sha256(convert_to(p_token, 'UTF8')) $$;

-- steps.kind: the same rule as a domain. A domain's check is prepared once per session (type
-- cache), a table's CHECK for every statement. The column keeps type text for every reader
-- (a domain is reported as its base type). No table rewrite: the domain gets its constraint
-- after the column changes type, and adding it checks the existing rows.
ALTER TABLE cairn.steps DROP CONSTRAINT IF EXISTS steps_kind_check;
CREATE DOMAIN cairn.step_kind AS text;
ALTER TABLE cairn.steps ALTER COLUMN kind TYPE cairn.step_kind;
ALTER DOMAIN cairn.step_kind ADD CONSTRAINT step_kind_check
    CHECK (VALUE IN ('step', 'wait', 'sleep', 'spawn', 'join', 'emit'));

-- A completed step, for the runner. The usual case (right token, current attempt of a running
-- run, no cancel requested, a new key) is one INSERT; anything else inserts nothing and takes
-- the general path (authorize, then cairn.complete_step), which raises the same errors as
-- before (CN001 for another token or a superseded attempt, CN004), stores the step and
-- cancels the run when cancellation was requested, and is a no-op for a key already stored.
CREATE OR REPLACE FUNCTION cairn_runner.complete_step(p_token text, p_run_id uuid,
    p_attempt integer, p_key text, p_result jsonb, p_duration_ms bigint, p_tries integer,
    p_usd double precision, p_tokens_in bigint, p_tokens_out bigint, p_model text,
    p_usage_meta jsonb)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- The fence's shared attempt lock (see cairn.fence), taken before the INSERT below reads
    -- the run: that statement's snapshot then includes any new attempt started before we got
    -- the lock. Written as an expression, not PERFORM, so plpgsql evaluates it directly
    -- instead of running a query.
    IF pg_advisory_xact_lock_shared(cairn.attempt_lock_key(p_run_id)) IS NULL THEN
    END IF;
    INSERT INTO cairn.steps (run_id, key, kind, result, attempt, tries, started_at,
                             usd, tokens_in, tokens_out, model, usage_meta)
    SELECT p_run_id, p_key, 'step', p_result, p_attempt, p_tries,
           now() - p_duration_ms * interval '1 millisecond',
           p_usd::numeric, p_tokens_in, p_tokens_out, p_model, p_usage_meta
    FROM cairn.runs r
    WHERE r.id = p_run_id
      AND r.token_hash = cairn.hash_token(p_token)
      AND r.attempt = p_attempt AND r.state = 'running' AND NOT r.cancel_requested
    ON CONFLICT (run_id, key) DO NOTHING;
    IF FOUND THEN
        RETURN false;
    END IF;
    PERFORM cairn.authorize(p_token, p_run_id);
    RETURN cairn.complete_step(p_run_id, p_attempt, p_key, p_result, p_duration_ms, p_tries,
                               p_usd, p_tokens_in, p_tokens_out, p_model, p_usage_meta);
END $$;

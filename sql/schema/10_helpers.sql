----------------------------------------------------------------------------------------------
-- Helpers

-- What this schema serves. Launchers and SDKs check it before they work with a database:
-- * launcher_contract: what the operator and `cairn dev` rely on (tables, launcher functions).
--   A migration raises it only when launchers built before it can no longer work here; an
--   operator of the previous release must keep starting, so that `helm rollback` works.
-- * runner_oldest .. runner_newest: the runner protocols served (schemas cairn_runner_v<N>).
CREATE FUNCTION cairn.engine_info()
RETURNS TABLE (launcher_contract integer, runner_oldest integer, runner_newest integer)
LANGUAGE sql STABLE AS $$ SELECT 1, 1, 1 $$;

CREATE FUNCTION cairn.is_terminal(p_state text) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$ SELECT p_state IN ('succeeded', 'failed', 'cancelled') $$;

-- STABLE like convert_to, so the planner inlines it wherever it is used.
CREATE FUNCTION cairn.hash_token(p_token text) RETURNS bytea
LANGUAGE sql STABLE AS $$ SELECT sha256(convert_to(p_token, 'UTF8')) $$;

-- A run's attempt lock: every write of a running attempt holds it shared (in fence); taking a
-- run away from its attempt (start_attempt, record_crash) holds it exclusively. So a superseded
-- attempt can never slip a write in after its successor started. Advisory locks live in memory:
-- unlike a row lock, they add no tuple write to the per-step round trip.
CREATE FUNCTION cairn.attempt_lock_key(p_run_id uuid) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$ SELECT hashtextextended(p_run_id::text, 1) $$;

-- Rejects writes from anything but the current attempt of a running run.
CREATE FUNCTION cairn.fence(p_run_id uuid, p_attempt integer) RETURNS cairn.runs
LANGUAGE plpgsql AS $$
DECLARE
    r cairn.runs;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(cairn.attempt_lock_key(p_run_id));
    SELECT * INTO r FROM cairn.runs WHERE id = p_run_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'run % does not exist', p_run_id USING ERRCODE = 'CN004';
    END IF;
    IF r.attempt <> p_attempt OR r.state <> 'running' THEN
        RAISE EXCEPTION 'attempt % of run "%" is no longer current (run is % at attempt %)',
            p_attempt, r.name, r.state, r.attempt
            USING ERRCODE = 'CN001',
                  HINT = 'this process was superseded; it must stop without writing';
    END IF;
    RETURN r;
END $$;

-- A new attempt token: 244 random bits (gen_random_uuid draws from the strong random source).
-- It is returned once; runs keep only its hash.
CREATE FUNCTION cairn.new_token() RETURNS text
LANGUAGE sql VOLATILE AS $$
    SELECT replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '')
$$;

-- Refuses a call that does not carry the token of the run's current attempt, the same way a
-- superseded attempt is refused (CN001): the process must stop without writing.
CREATE FUNCTION cairn.authorize(p_token text, p_run_id uuid) RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
    PERFORM 1 FROM cairn.runs
    WHERE id = p_run_id AND token_hash = cairn.hash_token(p_token);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the token of this process is no longer current for run % (superseded, or issued for another run)', p_run_id
            USING ERRCODE = 'CN001',
                  HINT = 'a flow process may only touch the run and attempt it was launched for';
    END IF;
END $$;

-- Serialises emitting an event with registering a wait for it, so no wake-up is lost.
CREATE FUNCTION cairn.lock_event(p_namespace text, p_name text) RETURNS void
LANGUAGE sql AS $$
    SELECT pg_advisory_xact_lock(hashtextextended(p_namespace || '/' || p_name, 0))
$$;

-- Whether an event reaches a run's wait. One addressed to a run reaches that run only. One
-- sent to the namespace reaches the runs that existed when it was emitted (to the second, the
-- precision of Kubernetes timestamps), and a run created after it only if the run's wait asked
-- for earlier events (include_earlier): so a run created again under a reused name waits for
-- a new event.
CREATE FUNCTION cairn.event_reaches(p_for_run uuid, p_emitted_at timestamptz, p_run_id uuid,
                                    p_run_created_at timestamptz, p_include_earlier boolean)
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_for_run IS NOT NULL THEN p_for_run = p_run_id
                ELSE p_include_earlier OR p_emitted_at >= p_run_created_at END
$$;

CREATE FUNCTION cairn.end_attempt(p_run_id uuid, p_attempt integer, p_outcome text, p_detail text)
RETURNS void LANGUAGE sql AS $$
    UPDATE cairn.attempts SET ended_at = now(), outcome = p_outcome, detail = p_detail
    WHERE run_id = p_run_id AND attempt = p_attempt AND ended_at IS NULL
$$;

CREATE FUNCTION cairn.checkpoint(p_run_id uuid, p_attempt integer, p_key text, p_kind text,
                                 p_result jsonb, p_started_at timestamptz)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO cairn.steps (run_id, key, kind, result, attempt, started_at)
    VALUES (p_run_id, p_key, p_kind, p_result, p_attempt, coalesce(p_started_at, now()))
    ON CONFLICT (run_id, key) DO NOTHING
$$;

-- Parks a running run: the process exits after this and a supervisor relaunches it on wake.
-- Parking and finishing change a run's row in one UPDATE each, also revoking the attempt's
-- token (token_hash): from then on it opens nothing, wherever a copy of it is left (its
-- Secret, a log). One UPDATE per transaction matters: a second update of a row the same
-- transaction wrote makes Postgres re-check its foreign key, which share-locks the parent run,
-- and two children finishing at once then deadlock on their parent (on_run_finished).
CREATE FUNCTION cairn.suspend(p_run_id uuid, p_attempt integer, p_state text,
                              p_wake_at timestamptz, p_waiting_for jsonb)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE cairn.runs
    SET state = p_state, wake_at = p_wake_at, waiting_for = p_waiting_for, updated_at = now(),
        token_hash = NULL
    WHERE id = p_run_id;
    PERFORM cairn.end_attempt(p_run_id, p_attempt, 'suspended', p_state);
END $$;

-- Ends a run for good; `p_crashed` counts the crash that ended it.
CREATE FUNCTION cairn.finish(p_run_id uuid, p_state text, p_result jsonb, p_error jsonb,
                             p_crashed boolean DEFAULT false)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE cairn.runs
    SET state = p_state, result = p_result, error = p_error, finished_at = now(),
        updated_at = now(), wake_at = NULL, waiting_for = NULL, token_hash = NULL,
        cancel_requested = cancel_requested OR p_state = 'cancelled',
        crashes = crashes + p_crashed::integer
    WHERE id = p_run_id;
    DELETE FROM cairn.waits WHERE run_id = p_run_id;
END $$;

CREATE FUNCTION cairn.delete_steps() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM cairn.steps WHERE run_id = OLD.id;
    RETURN OLD;
END $$;

CREATE TRIGGER runs_delete_steps BEFORE DELETE ON cairn.runs
FOR EACH ROW EXECUTE FUNCTION cairn.delete_steps();


-- Migration 0002: retention. Finished runs and old events can be deleted in bulk (cairn.gc),
-- so a busy installation's tables stay the size of its recent work; an event can be deleted
-- with the FlowEvent that delivered it (cairn.delete_event). Indexes make both cheap. And an
-- attempt's token is revoked when the attempt ends, so the copies left behind (its Secret)
-- open nothing; every function that ends an attempt now writes the run's row once (two
-- writes of a child's row in one transaction share-lock its parent: two children finishing
-- at once could deadlock).


CREATE INDEX runs_finished_idx ON cairn.runs (finished_at)
    WHERE parent_id IS NULL AND finished_at IS NOT NULL;
CREATE INDEX events_emitted_idx ON cairn.events (emitted_at);

CREATE FUNCTION cairn.gc(p_runs_before timestamptz, p_events_before timestamptz,
                         p_namespace text DEFAULT NULL)
RETURNS TABLE (runs integer, events integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_runs   integer := 0;
    v_events integer := 0;
BEGIN
    IF p_runs_before IS NOT NULL THEN
        WITH gone AS (
            DELETE FROM cairn.runs r
            WHERE r.parent_id IS NULL AND r.finished_at < p_runs_before
              AND (p_namespace IS NULL OR r.namespace = p_namespace)
            RETURNING 1)
        SELECT count(*) INTO v_runs FROM gone;
    END IF;
    IF p_events_before IS NOT NULL THEN
        WITH gone AS (
            DELETE FROM cairn.events e
            WHERE e.emitted_at < p_events_before
              AND (p_namespace IS NULL OR e.namespace = p_namespace)
              AND NOT EXISTS (SELECT 1 FROM cairn.waits w
                              WHERE w.kind = 'event' AND w.namespace = e.namespace
                                AND w.event_name = e.name)
            RETURNING 1)
        SELECT count(*) INTO v_events FROM gone;
    END IF;
    RETURN QUERY SELECT v_runs, v_events;
END $$;

CREATE FUNCTION cairn.delete_event(p_namespace text, p_name text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM cairn.lock_event(p_namespace, p_name);
    DELETE FROM cairn.events WHERE namespace = p_namespace AND name = p_name;
    RETURN FOUND;
END $$;

-- A run's row is written once by whatever ends its attempt, revoking the token with it.
CREATE OR REPLACE FUNCTION cairn.suspend(p_run_id uuid, p_attempt integer, p_state text,
                              p_wake_at timestamptz, p_waiting_for jsonb)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE cairn.runs
    SET state = p_state, wake_at = p_wake_at, waiting_for = p_waiting_for, updated_at = now(),
        token_hash = NULL
    WHERE id = p_run_id;
    PERFORM cairn.end_attempt(p_run_id, p_attempt, 'suspended', p_state);
END $$;

-- finish gains p_crashed (record_crash counts the crash in the same UPDATE).
DROP FUNCTION cairn.finish(uuid, text, jsonb, jsonb);
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

CREATE OR REPLACE FUNCTION cairn.record_crash(p_run_id uuid, p_attempt integer, p_reason text,
                                   p_retry_delay_ms bigint)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    r cairn.runs;
BEGIN
    PERFORM pg_advisory_xact_lock(cairn.attempt_lock_key(p_run_id));
    SELECT * INTO r FROM cairn.runs WHERE id = p_run_id FOR UPDATE;
    IF NOT FOUND OR r.attempt <> p_attempt OR r.state <> 'running' THEN
        RETURN coalesce(r.state, 'missing');   -- already settled by someone else
    END IF;
    PERFORM cairn.end_attempt(p_run_id, p_attempt, 'crashed', p_reason);
    -- One UPDATE of the run on each path (see cairn.suspend).
    IF r.cancel_requested THEN
        PERFORM cairn.finish(p_run_id, 'cancelled', NULL, '{"message": "cancelled"}'::jsonb, true);
    ELSIF p_retry_delay_ms IS NOT NULL THEN
        UPDATE cairn.runs
        SET state = 'retrying', wake_at = now() + p_retry_delay_ms * interval '1 millisecond',
            waiting_for = jsonb_build_object('retry_after', p_reason), updated_at = now(),
            crashes = crashes + 1, token_hash = NULL
        WHERE id = p_run_id;
    ELSE
        PERFORM cairn.finish(p_run_id, 'failed', NULL, jsonb_build_object(
            'message', format('gave up after %s crashed attempts; last: %s', r.crashes + 1, p_reason),
            'kind', 'crashed'), true);
    END IF;
    RETURN (SELECT state FROM cairn.runs WHERE id = p_run_id);
END $$;

CREATE OR REPLACE FUNCTION cairn.cancel_run(p_run_id uuid) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    r cairn.runs;
    v_child uuid;
BEGIN
    -- Children first: every path locks a child before its parent, so none can deadlock.
    FOR v_child IN SELECT id FROM cairn.runs WHERE parent_id = p_run_id AND NOT cairn.is_terminal(state) LOOP
        PERFORM cairn.cancel_run(v_child);
    END LOOP;
    SELECT * INTO r FROM cairn.runs WHERE id = p_run_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'run % does not exist', p_run_id USING ERRCODE = 'CN004';
    END IF;
    IF cairn.is_terminal(r.state) THEN
        RETURN r.state;
    END IF;
    IF r.state = 'running' THEN
        UPDATE cairn.runs SET cancel_requested = true, updated_at = now() WHERE id = p_run_id;
    ELSE
        PERFORM cairn.finish(p_run_id, 'cancelled', NULL, '{"message": "cancelled"}'::jsonb);
    END IF;
    RETURN (SELECT state FROM cairn.runs WHERE id = p_run_id);
END $$;

-- 0001's ALTER DEFAULT PRIVILEGES IN SCHEMA cairn cannot revoke PUBLIC's EXECUTE (a default
-- given per schema only adds to the global one), so every migration that adds functions
-- revokes it at its end.
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA cairn FROM PUBLIC;

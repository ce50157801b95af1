-- Run deadlines and retrying a failed run.

-- Fails a run that has outlived its deadline (`p_deadline_seconds` after it was created, by the
-- database clock), whatever it is doing: a parked run ends at once; a running attempt is fenced
-- off (its next write is refused, so it pays for nothing more) and its launcher stops it.
-- Unfinished children are cancelled. Returns the run's state afterwards; a run still inside its
-- deadline is left alone.
CREATE FUNCTION cairn.expire_run(p_run_id uuid, p_deadline_seconds bigint) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    r       cairn.runs;
    v_child uuid;
BEGIN
    -- Exclusive, like start_attempt: no write of the running attempt is half done meanwhile.
    PERFORM pg_advisory_xact_lock(cairn.attempt_lock_key(p_run_id));
    SELECT * INTO r FROM cairn.runs WHERE id = p_run_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'run % does not exist', p_run_id USING ERRCODE = 'CN004';
    END IF;
    IF cairn.is_terminal(r.state) OR r.created_at + p_deadline_seconds * interval '1 second' > now() THEN
        RETURN r.state;
    END IF;
    -- Children first, then the run: the same row-lock order as cancel_run.
    FOR v_child IN SELECT id FROM cairn.runs WHERE parent_id = p_run_id AND NOT cairn.is_terminal(state) LOOP
        PERFORM cairn.cancel_run(v_child);
    END LOOP;
    PERFORM 1 FROM cairn.runs WHERE id = p_run_id FOR UPDATE;
    IF r.state = 'running' THEN
        PERFORM cairn.end_attempt(p_run_id, r.attempt, 'failed', 'deadline exceeded');
    END IF;
    PERFORM cairn.finish(p_run_id, 'failed', NULL, jsonb_build_object(
        'message', format('deadline exceeded: the run did not finish within %s seconds', p_deadline_seconds),
        'kind', 'deadline'));
    RETURN 'failed';
END $$;

-- Retries a failed run from its last checkpoint: completed steps stay, the step that failed runs
-- again in a new attempt with a fresh crash budget. Only failed runs can be retried (CN005).
CREATE FUNCTION cairn.retry_run(p_run_id uuid) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    r cairn.runs;
BEGIN
    PERFORM pg_advisory_xact_lock(cairn.attempt_lock_key(p_run_id));
    SELECT * INTO r FROM cairn.runs WHERE id = p_run_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'run % does not exist', p_run_id USING ERRCODE = 'CN004';
    END IF;
    IF r.state <> 'failed' THEN
        RAISE EXCEPTION 'run "%" is %; only a failed run can be retried', r.name, r.state
            USING ERRCODE = 'CN005',
                  HINT = 'cancel a running run instead, or create a new run';
    END IF;
    UPDATE cairn.runs
    SET state = 'pending', crashes = 0, result = NULL, error = NULL, finished_at = NULL,
        cancel_requested = false, updated_at = now()
    WHERE id = p_run_id;
    RETURN 'pending';
END $$;

-- Migration 0004: a flow process told to stop (SIGTERM) finishes the step in flight, then
-- gives its run back (cairn_runner_v1.release, new in the runner protocol; SDKs from before it
-- never call it): the run is pending again at once and the stop is not counted as a crash.


CREATE FUNCTION cairn.release(p_run_id uuid, p_attempt integer)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM cairn.fence(p_run_id, p_attempt);
    UPDATE cairn.runs
    SET state = 'pending', wake_at = NULL, waiting_for = NULL, updated_at = now(),
        token_hash = NULL
    WHERE id = p_run_id;
    PERFORM cairn.end_attempt(p_run_id, p_attempt, 'suspended', 'stopped');
END $$;

CREATE FUNCTION cairn_runner_v1.release(p_token text, p_run_id uuid, p_attempt integer)
RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT cairn.authorize(p_token, p_run_id);
    SELECT cairn.release(p_run_id, p_attempt);
$$;

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA cairn, cairn_runner_v1 FROM PUBLIC;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA cairn_runner_v1 TO cairn_runner;

-- Migration 0005: an attempt whose process never started (its launcher was killed between the
-- claim and the pod, or the pod went before the process began) is launched again under the
-- same number with a fresh token (cairn.reissue), and is not counted as a crash. A process's
-- handshake now records that it connected (attempts.connected_at). An attempt running across
-- the upgrade has none: if its pod is then lost, it is launched again like one that never
-- started (its steps are checkpointed; the loss is not counted as a crash).

ALTER TABLE cairn.attempts ADD COLUMN connected_at timestamptz;


CREATE FUNCTION cairn.new_token() RETURNS text
LANGUAGE sql VOLATILE AS $$
    SELECT replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '')
$$;

CREATE OR REPLACE FUNCTION cairn_runner.handshake(p_token text, p_run_id uuid, p_attempt integer,
                                       p_protocol integer, p_sdk text)
RETURNS TABLE (served boolean, oldest integer, newest integer, message text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_oldest  integer;
    v_newest  integer;
    v_message text;
BEGIN
    -- Ordered against cairn.reissue, which replaces the token of an attempt never connected.
    PERFORM pg_advisory_xact_lock_shared(cairn.attempt_lock_key(p_run_id));
    PERFORM cairn.authorize(p_token, p_run_id);
    UPDATE cairn.attempts SET connected_at = now()
    WHERE run_id = p_run_id AND attempt = p_attempt AND connected_at IS NULL;
    SELECT i.runner_oldest, i.runner_newest INTO v_oldest, v_newest FROM cairn.engine_info() i;
    IF p_protocol BETWEEN v_oldest AND v_newest THEN
        RETURN QUERY SELECT true, v_oldest, v_newest, NULL::text;
        RETURN;
    END IF;
    v_message := format(
        'this flow''s image was built with %s, which speaks runner protocol %s, but this Cairn engine serves runner protocols %s to %s: %s',
        p_sdk, p_protocol, v_oldest, v_newest,
        CASE WHEN p_protocol < v_oldest
             THEN 'rebuild the image with a newer Cairn SDK, then retry the run'
             ELSE 'upgrade Cairn (the operator, or cairn dev) first, then retry the run' END);
    PERFORM cairn.fail_run(p_run_id, p_attempt,
                           jsonb_build_object('message', v_message, 'kind', 'protocol'));
    RETURN QUERY SELECT false, v_oldest, v_newest, v_message;
END $$;

CREATE OR REPLACE FUNCTION cairn.claim(p_run_id uuid, p_max_running integer, p_max_in_namespace integer)
RETURNS TABLE (attempt integer, token text, refused text)
LANGUAGE plpgsql AS $$
DECLARE
    v_attempt integer;
    v_refused text;
    v_token   text;
BEGIN
    SELECT s.attempt, s.refused INTO v_attempt, v_refused
    FROM cairn.start_attempt_within(p_run_id, p_max_running, p_max_in_namespace) s;
    IF v_attempt IS NOT NULL THEN
        v_token := cairn.new_token();
        UPDATE cairn.runs SET token_hash = cairn.hash_token(v_token) WHERE id = p_run_id;
    END IF;
    RETURN QUERY SELECT v_attempt, v_token, v_refused;
END $$;

CREATE FUNCTION cairn.reissue(p_run_id uuid, p_attempt integer) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_token text;
BEGIN
    PERFORM pg_advisory_xact_lock(cairn.attempt_lock_key(p_run_id));
    IF NOT EXISTS (SELECT 1 FROM cairn.runs r
                   JOIN cairn.attempts a ON a.run_id = r.id AND a.attempt = r.attempt
                   WHERE r.id = p_run_id AND r.attempt = p_attempt AND r.state = 'running'
                     AND a.connected_at IS NULL) THEN
        RETURN NULL;
    END IF;
    v_token := cairn.new_token();
    UPDATE cairn.runs SET token_hash = cairn.hash_token(v_token), updated_at = now()
    WHERE id = p_run_id;
    RETURN v_token;
END $$;

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA cairn FROM PUBLIC;

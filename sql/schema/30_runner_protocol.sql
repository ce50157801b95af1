----------------------------------------------------------------------------------------------
-- The runner protocol: everything a flow process may call.
--
-- `cairn_runner.handshake` is the one function whose signature never changes: every SDK calls
-- it first, stating its protocol. The protocol's functions live in `cairn_runner_v1`; a new
-- protocol gets a schema of its own next to the old one, which is dropped only when no SDK
-- still served speaks it. Each function checks the attempt's token, then does what the
-- function of the same name in schema `cairn` does, with the owner's rights (SECURITY
-- DEFINER, with a fixed search_path so nothing the caller creates can be picked up).

CREATE SCHEMA cairn_runner;
CREATE SCHEMA cairn_runner_v1;

-- Whether this engine serves the SDK's protocol. When it does not, the run fails here, with a
-- message naming both sides' versions (the process then exits; relaunching it could never
-- help), and `served` is false.
CREATE FUNCTION cairn_runner.handshake(p_token text, p_run_id uuid, p_attempt integer,
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

CREATE FUNCTION cairn_runner_v1.load_run(p_token text, p_run_id uuid, p_attempt integer)
RETURNS TABLE (namespace text, name text, flow text, input jsonb, steps jsonb)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT cairn.authorize(p_token, p_run_id);
    SELECT * FROM cairn.load_run(p_run_id, p_attempt);
$$;

-- A completed step: the hot path, one round trip per step, so written for Postgres's CPU (a
-- SQL function that is not inlined, and SECURITY DEFINER never is, is planned afresh at every
-- call; plpgsql keeps its plans). The usual case (right token, current attempt of a running
-- run, no cancel requested, a new key) is one INSERT that checks the token and the fence
-- itself; anything else inserts nothing and takes the general path (authorize, then
-- cairn.complete_step), which raises the same errors (CN001 for another token or a superseded
-- attempt, CN004), cancels the run when cancellation was requested, and is a no-op for a key
-- already stored. Only a step with a cost checks the budgets (cairn.park_over_budget).
CREATE FUNCTION cairn_runner_v1.complete_step(p_token text, p_run_id uuid,
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
        RETURN p_usd IS NOT NULL AND cairn.park_over_budget(p_run_id, p_attempt);
    END IF;
    PERFORM cairn.authorize(p_token, p_run_id);
    RETURN cairn.complete_step(p_run_id, p_attempt, p_key, p_result, p_duration_ms, p_tries,
                               p_usd, p_tokens_in, p_tokens_out, p_model, p_usage_meta);
END $$;

CREATE FUNCTION cairn_runner_v1.complete_run(p_token text, p_run_id uuid, p_attempt integer,
                                             p_result jsonb)
RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT cairn.authorize(p_token, p_run_id);
    SELECT cairn.complete_run(p_run_id, p_attempt, p_result);
$$;

CREATE FUNCTION cairn_runner_v1.fail_run(p_token text, p_run_id uuid, p_attempt integer,
                                         p_error jsonb)
RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT cairn.authorize(p_token, p_run_id);
    SELECT cairn.fail_run(p_run_id, p_attempt, p_error);
$$;

CREATE FUNCTION cairn_runner_v1.acknowledge_cancel(p_token text, p_run_id uuid,
                                                   p_attempt integer)
RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT cairn.authorize(p_token, p_run_id);
    SELECT cairn.acknowledge_cancel(p_run_id, p_attempt);
$$;

CREATE FUNCTION cairn_runner_v1.release(p_token text, p_run_id uuid, p_attempt integer)
RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT cairn.authorize(p_token, p_run_id);
    SELECT cairn.release(p_run_id, p_attempt);
$$;

-- p_include_earlier: the wait takes an event sent to the namespace before the run was created
-- (cairn.event_reaches). SDKs from before it call the overload without it.
CREATE FUNCTION cairn_runner_v1.await_event(p_token text, p_run_id uuid, p_attempt integer,
    p_key text, p_event text, p_timeout_ms bigint, p_question text, p_schema jsonb,
    p_include_earlier boolean)
RETURNS TABLE (outcome text, payload jsonb, deadline timestamptz)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT cairn.authorize(p_token, p_run_id);
    SELECT * FROM cairn.await_event(p_run_id, p_attempt, p_key, p_event, p_timeout_ms,
                                    p_question, p_schema, p_include_earlier);
$$;

CREATE FUNCTION cairn_runner_v1.await_event(p_token text, p_run_id uuid, p_attempt integer,
    p_key text, p_event text, p_timeout_ms bigint, p_question text, p_schema jsonb)
RETURNS TABLE (outcome text, payload jsonb, deadline timestamptz)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT * FROM cairn_runner_v1.await_event(p_token, p_run_id, p_attempt, p_key, p_event,
                                              p_timeout_ms, p_question, p_schema, false);
$$;

CREATE FUNCTION cairn_runner_v1.sleep(p_token text, p_run_id uuid, p_attempt integer,
    p_key text, p_until timestamptz, p_duration_ms bigint, p_inline_max_ms bigint)
RETURNS TABLE (outcome text, remaining_ms bigint)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT cairn.authorize(p_token, p_run_id);
    SELECT * FROM cairn.sleep(p_run_id, p_attempt, p_key, p_until, p_duration_ms,
                              p_inline_max_ms);
$$;

CREATE FUNCTION cairn_runner_v1.spawn_child(p_token text, p_run_id uuid, p_attempt integer,
    p_key text, p_child_name text, p_flow text, p_input jsonb)
RETURNS uuid
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT cairn.authorize(p_token, p_run_id);
    SELECT cairn.spawn_child(p_run_id, p_attempt, p_key, p_child_name, p_flow, p_input);
$$;

CREATE FUNCTION cairn_runner_v1.join_children(p_token text, p_run_id uuid, p_attempt integer,
                                              p_key text, p_children uuid[])
RETURNS TABLE (outcome text, results jsonb)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT cairn.authorize(p_token, p_run_id);
    SELECT * FROM cairn.join_children(p_run_id, p_attempt, p_key, p_children);
$$;

-- The waits (in the run's own namespace) an event emitted by this run would complete: their
-- schemas are checked before emitting.
CREATE FUNCTION cairn_runner_v1.event_waiters(p_token text, p_run_id uuid, p_event text)
RETURNS TABLE (run_name text, question text, schema jsonb)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT cairn.authorize(p_token, p_run_id);
    SELECT w.* FROM cairn.runs r, cairn.event_waiters(r.namespace, p_event) w
    WHERE r.id = p_run_id;
$$;

CREATE FUNCTION cairn_runner_v1.emit(p_token text, p_run_id uuid, p_attempt integer,
                                     p_key text, p_event text, p_payload jsonb)
RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT cairn.authorize(p_token, p_run_id);
    SELECT cairn.emit_from_run(p_run_id, p_attempt, p_key, p_event, p_payload);
$$;


-- Before and after a flow writes an object to the artifact store (cairn.touch_artifact).
CREATE FUNCTION cairn_runner_v1.touch_artifact(p_token text, p_run_id uuid, p_digest text,
                                               p_size bigint, p_content_type text)
RETURNS boolean
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT cairn.authorize(p_token, p_run_id);
    SELECT cairn.touch_artifact(p_run_id, p_digest, p_size, p_content_type);
$$;

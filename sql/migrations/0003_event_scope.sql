-- Migration 0003: events reach the runs they were meant for. An event is sent either to its
-- whole namespace, as before, or to one run (`kubectl cairn approve` addresses the run it
-- names, so a run created again under a reused name is not answered by the earlier run's
-- approval). An event sent to the namespace reaches the runs that existed when it was emitted,
-- and earlier ones only when the flow asks (include_earlier, a new runner-protocol overload of
-- await_event; the old one keeps working for SDKs from before it). Runs and events carry their
-- Kubernetes objects' creation times. Launchers from before it keep working: every new
-- parameter of a function they call has a default.

ALTER TABLE cairn.waits ADD COLUMN include_earlier boolean NOT NULL DEFAULT false;

ALTER TABLE cairn.events ADD COLUMN for_run uuid REFERENCES cairn.runs (id) ON DELETE CASCADE;
ALTER TABLE cairn.events DROP CONSTRAINT events_pkey;
CREATE UNIQUE INDEX events_broadcast_key ON cairn.events (namespace, name) WHERE for_run IS NULL;
CREATE UNIQUE INDEX events_addressed_key ON cairn.events (for_run, name) WHERE for_run IS NOT NULL;


CREATE FUNCTION cairn.event_reaches(p_for_run uuid, p_emitted_at timestamptz, p_run_id uuid,
                                    p_run_created_at timestamptz, p_include_earlier boolean)
RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_for_run IS NOT NULL THEN p_for_run = p_run_id
                ELSE p_include_earlier OR p_emitted_at >= p_run_created_at END
$$;

DROP FUNCTION cairn.await_event(uuid, integer, text, text, bigint, text, jsonb);
CREATE FUNCTION cairn.await_event(p_run_id uuid, p_attempt integer, p_key text, p_event text,
                                  p_timeout_ms bigint, p_question text, p_schema jsonb,
                                  p_include_earlier boolean)
RETURNS TABLE (outcome text, payload jsonb, deadline timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    r cairn.runs := cairn.fence(p_run_id, p_attempt);
    w cairn.waits;
    e cairn.events;
BEGIN
    IF r.cancel_requested THEN
        RETURN QUERY SELECT 'cancelled'::text, NULL::jsonb, NULL::timestamptz;
        RETURN;
    END IF;
    PERFORM cairn.lock_event(r.namespace, p_event);
    INSERT INTO cairn.waits (run_id, step_key, kind, namespace, event_name, question, schema,
                             deadline, include_earlier)
    VALUES (p_run_id, p_key, 'event', r.namespace, p_event, p_question, p_schema,
            now() + p_timeout_ms * interval '1 millisecond', p_include_earlier)
    ON CONFLICT (run_id, step_key) DO NOTHING;
    SELECT * INTO w FROM cairn.waits WHERE run_id = p_run_id AND step_key = p_key;
    SELECT * INTO e FROM cairn.events WHERE for_run = p_run_id AND name = p_event;
    IF e.name IS NULL THEN
        SELECT * INTO e FROM cairn.events
        WHERE namespace = r.namespace AND name = p_event AND for_run IS NULL
          AND cairn.event_reaches(NULL, emitted_at, p_run_id, r.created_at, w.include_earlier);
    END IF;

    IF e.name IS NOT NULL AND (w.deadline IS NULL OR e.emitted_at <= w.deadline) THEN
        PERFORM cairn.checkpoint(p_run_id, p_attempt, p_key, 'wait',
                                 jsonb_build_object('event', e.payload), w.created_at);
        DELETE FROM cairn.waits WHERE run_id = p_run_id AND step_key = p_key;
        RETURN QUERY SELECT 'received'::text, e.payload, w.deadline;
    ELSIF w.deadline IS NOT NULL AND w.deadline <= now() THEN
        PERFORM cairn.checkpoint(p_run_id, p_attempt, p_key, 'wait',
                                 jsonb_build_object('timed_out', true), w.created_at);
        DELETE FROM cairn.waits WHERE run_id = p_run_id AND step_key = p_key;
        RETURN QUERY SELECT 'timed_out'::text, NULL::jsonb, w.deadline;
    ELSE
        PERFORM cairn.suspend(p_run_id, p_attempt, 'waiting', w.deadline,
            jsonb_strip_nulls(jsonb_build_object('event', p_event, 'question', p_question,
                                                 'schema', p_schema, 'deadline', w.deadline)));
        RETURN QUERY SELECT 'suspended'::text, NULL::jsonb, w.deadline;
    END IF;
END $$;

DROP FUNCTION cairn.event_waiters(text, text);
CREATE FUNCTION cairn.event_waiters(p_namespace text, p_name text, p_for_run uuid DEFAULT NULL,
                                    p_emitted_at timestamptz DEFAULT NULL)
RETURNS TABLE (run_name text, question text, schema jsonb)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM cairn.lock_event(p_namespace, p_name);
    RETURN QUERY
    SELECT r.name, w.question, w.schema
    FROM cairn.waits w JOIN cairn.runs r ON r.id = w.run_id
    WHERE w.kind = 'event' AND w.namespace = p_namespace AND w.event_name = p_name
      AND cairn.event_reaches(p_for_run, least(coalesce(p_emitted_at, now()), now()), r.id,
                              r.created_at, w.include_earlier)
    ORDER BY r.name;
END $$;

DROP FUNCTION cairn.emit_event(text, text, jsonb, uuid);
CREATE FUNCTION cairn.emit_event(p_namespace text, p_name text, p_payload jsonb,
                                 p_emitted_by uuid DEFAULT NULL, p_for_run uuid DEFAULT NULL,
                                 p_emitted_at timestamptz DEFAULT NULL)
RETURNS TABLE (duplicate boolean, woken integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_emitted_at timestamptz := least(coalesce(p_emitted_at, now()), now());
    v_existing   jsonb;
    v_woken      integer;
BEGIN
    IF p_for_run IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM cairn.runs WHERE id = p_for_run AND namespace = p_namespace) THEN
        RAISE EXCEPTION 'event "%" is addressed to run % which does not exist in namespace "%"',
            p_name, p_for_run, p_namespace
            USING ERRCODE = 'CN004', HINT = 'the run was deleted; a run created again under its name needs its own event';
    END IF;
    PERFORM cairn.lock_event(p_namespace, p_name);
    INSERT INTO cairn.events (namespace, name, payload, emitted_by, for_run, emitted_at)
    VALUES (p_namespace, p_name, p_payload, p_emitted_by, p_for_run, v_emitted_at)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        SELECT payload INTO v_existing FROM cairn.events
        WHERE namespace = p_namespace AND name = p_name AND for_run IS NOT DISTINCT FROM p_for_run;
        IF v_existing = p_payload THEN
            RETURN QUERY SELECT true, 0;
            RETURN;
        END IF;
        RAISE EXCEPTION 'event "%" was already emitted % with a different payload', p_name,
            CASE WHEN p_for_run IS NULL THEN format('in namespace "%s"', p_namespace)
                 ELSE format('to run %s', p_for_run) END
            USING ERRCODE = 'CN002',
                  HINT = 'events are write-once (the first emit wins); use a new event name to send another value';
    END IF;
    WITH woken AS (
        UPDATE cairn.runs r SET state = 'pending', wake_at = NULL, updated_at = now()
        FROM cairn.waits w
        WHERE w.run_id = r.id AND w.kind = 'event' AND w.namespace = p_namespace
          AND w.event_name = p_name AND (w.deadline IS NULL OR w.deadline >= v_emitted_at)
          AND r.state = 'waiting'
          AND cairn.event_reaches(p_for_run, v_emitted_at, r.id, r.created_at, w.include_earlier)
        RETURNING r.id)
    SELECT count(*) INTO v_woken FROM woken;
    RETURN QUERY SELECT false, v_woken;
END $$;

CREATE FUNCTION cairn_runner_v1.await_event(p_token text, p_run_id uuid, p_attempt integer,
    p_key text, p_event text, p_timeout_ms bigint, p_question text, p_schema jsonb,
    p_include_earlier boolean)
RETURNS TABLE (outcome text, payload jsonb, deadline timestamptz)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT cairn.authorize(p_token, p_run_id);
    SELECT * FROM cairn.await_event(p_run_id, p_attempt, p_key, p_event, p_timeout_ms,
                                    p_question, p_schema, p_include_earlier);
$$;

CREATE OR REPLACE FUNCTION cairn_runner_v1.await_event(p_token text, p_run_id uuid, p_attempt integer,
    p_key text, p_event text, p_timeout_ms bigint, p_question text, p_schema jsonb)
RETURNS TABLE (outcome text, payload jsonb, deadline timestamptz)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT * FROM cairn_runner_v1.await_event(p_token, p_run_id, p_attempt, p_key, p_event,
                                              p_timeout_ms, p_question, p_schema, false);
$$;

DROP FUNCTION cairn.create_run(text, text, text, jsonb, integer, bigint, uuid);
CREATE FUNCTION cairn.create_run(p_namespace text, p_name text, p_flow text, p_input jsonb,
                                 p_max_attempts integer, p_retry_backoff_ms bigint,
                                 p_parent_id uuid DEFAULT NULL,
                                 p_created_at timestamptz DEFAULT NULL)
RETURNS TABLE (run_id uuid, created boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_id   uuid := gen_random_uuid();
    v_root uuid;
    r      cairn.runs;
BEGIN
    IF p_parent_id IS NOT NULL THEN
        SELECT root_id INTO v_root FROM cairn.runs WHERE id = p_parent_id;
    END IF;
    INSERT INTO cairn.runs (id, namespace, name, flow, input, parent_id, root_id,
                            max_attempts, retry_backoff_ms, created_at)
    VALUES (v_id, p_namespace, p_name, p_flow, p_input, p_parent_id, coalesce(v_root, v_id),
            p_max_attempts, p_retry_backoff_ms, least(coalesce(p_created_at, now()), now()))
    ON CONFLICT (namespace, name) DO NOTHING;
    IF FOUND THEN
        RETURN QUERY SELECT v_id, true;
        RETURN;
    END IF;
    SELECT * INTO r FROM cairn.runs WHERE namespace = p_namespace AND name = p_name;
    IF r.flow <> p_flow OR r.input <> p_input THEN
        RAISE EXCEPTION 'run "%" already exists in namespace "%" with a different %',
            p_name, p_namespace, CASE WHEN r.flow <> p_flow THEN 'flow ("' || r.flow || '")' ELSE 'input' END
            USING ERRCODE = 'CN003', HINT = 'choose another run name, or repeat the original request';
    END IF;
    RETURN QUERY SELECT r.id, false;
END $$;

CREATE OR REPLACE FUNCTION cairn.delete_event(p_namespace text, p_name text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM cairn.lock_event(p_namespace, p_name);
    DELETE FROM cairn.events WHERE namespace = p_namespace AND name = p_name AND for_run IS NULL;
    RETURN FOUND;
END $$;

-- As in 0002: PUBLIC's EXECUTE on the new functions goes; the runner role gets the new
-- overload of the runner protocol.
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA cairn, cairn_runner_v1 FROM PUBLIC;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA cairn_runner_v1 TO cairn_runner;

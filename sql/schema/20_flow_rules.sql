----------------------------------------------------------------------------------------------
-- What a flow does: the rules behind each call of the runner protocol (below), on behalf of
-- (run, attempt). Owner-only; flow processes reach them through cairn_runner_v<N>.

-- Everything a process needs to (re)enter its flow, in one round trip.
CREATE FUNCTION cairn.load_run(p_run_id uuid, p_attempt integer)
RETURNS TABLE (namespace text, name text, flow text, input jsonb, steps jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    r cairn.runs := cairn.fence(p_run_id, p_attempt);
BEGIN
    RETURN QUERY
    SELECT r.namespace, r.name, r.flow, r.input,
           coalesce((SELECT jsonb_object_agg(s.key, s.result) FROM cairn.steps s
                     WHERE s.run_id = p_run_id), '{}'::jsonb);
END $$;

-- Stores a completed step (its duration measured by the process, its times by the database).
-- Returns true when the process must stop at this step boundary: cancellation was requested
-- (the run is cancelled here), or the step's cost took the run past a budget (the run parks
-- here; see "Budgets" below). (The runner's usual path is the one-INSERT fast path in
-- cairn_runner_v1.complete_step; this is the general one.)
CREATE FUNCTION cairn.complete_step(p_run_id uuid, p_attempt integer, p_key text, p_result jsonb,
                                    p_duration_ms bigint, p_tries integer,
                                    p_usd double precision, p_tokens_in bigint, p_tokens_out bigint,
                                    p_model text, p_usage_meta jsonb)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    r cairn.runs := cairn.fence(p_run_id, p_attempt);
BEGIN
    INSERT INTO cairn.steps (run_id, key, kind, result, attempt, tries, started_at,
                             usd, tokens_in, tokens_out, model, usage_meta)
    VALUES (p_run_id, p_key, 'step', p_result, p_attempt, p_tries,
            now() - p_duration_ms * interval '1 millisecond',
            p_usd::numeric, p_tokens_in, p_tokens_out, p_model, p_usage_meta)
    ON CONFLICT (run_id, key) DO NOTHING;
    IF r.cancel_requested THEN
        PERFORM cairn.end_attempt(p_run_id, p_attempt, 'cancelled', NULL);
        PERFORM cairn.finish(p_run_id, 'cancelled', NULL,
                             jsonb_build_object('message', 'cancelled at step boundary after "' || p_key || '"'));
        RETURN true;
    END IF;
    RETURN p_usd IS NOT NULL AND cairn.park_over_budget(p_run_id, p_attempt);
END $$;

-- The flow finished: store its result (or error) and end the run.
CREATE FUNCTION cairn.complete_run(p_run_id uuid, p_attempt integer, p_result jsonb)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM cairn.fence(p_run_id, p_attempt);
    PERFORM cairn.end_attempt(p_run_id, p_attempt, 'completed', NULL);
    PERFORM cairn.finish(p_run_id, 'succeeded', p_result, NULL);
END $$;

CREATE FUNCTION cairn.fail_run(p_run_id uuid, p_attempt integer, p_error jsonb)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM cairn.fence(p_run_id, p_attempt);
    PERFORM cairn.end_attempt(p_run_id, p_attempt, 'failed', p_error ->> 'message');
    PERFORM cairn.finish(p_run_id, 'failed', NULL, p_error);
END $$;

-- A cancel seen by the process itself (at a wait, sleep or join).
CREATE FUNCTION cairn.acknowledge_cancel(p_run_id uuid, p_attempt integer)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM cairn.fence(p_run_id, p_attempt);
    PERFORM cairn.end_attempt(p_run_id, p_attempt, 'cancelled', NULL);
    PERFORM cairn.finish(p_run_id, 'cancelled', NULL, '{"message": "cancelled"}'::jsonb);
END $$;

-- A flow process told to stop (SIGTERM: a node drain, a deleted pod) ends its attempt at a
-- step boundary: the run is pending again at once, for a new process, and the stop is not a
-- crash (the attempt ends 'suspended', detail 'stopped').
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

-- Reached by a flow at `wait_for_event`. The outcome is checkpointed, including a timeout, so
-- replays never diverge. An event counts when it reaches the run (cairn.event_reaches) and was
-- emitted no later than the deadline; one addressed to the run comes first.
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

-- Events, emitted by flows (below) and from outside (launchers, FlowEvents).

-- The waits an emitted payload must satisfy: those it reaches (cairn.event_reaches; an event
-- sent to one run has p_for_run, one from outside a flow may be stamped with p_emitted_at).
-- Call it in the emitting transaction, before emit_event: it takes the event's lock, so no
-- new wait can appear between check and emit.
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

-- Emits an event (first write wins), to the namespace or, with p_for_run, to one run of it.
-- Emitting the same payload again is a no-op; another payload is a conflict. Wakes every run
-- it reaches that waits for it and whose deadline has not passed. p_emitted_at: when it was
-- sent (a FlowEvent's creationTimestamp), if earlier than now.
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

-- An emit from inside a flow: checkpointed as a step, so a replay does not emit again.
CREATE FUNCTION cairn.emit_from_run(p_run_id uuid, p_attempt integer, p_key text,
                                    p_name text, p_payload jsonb)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    r cairn.runs := cairn.fence(p_run_id, p_attempt);
BEGIN
    PERFORM cairn.emit_event(r.namespace, p_name, p_payload, p_run_id);
    PERFORM cairn.checkpoint(p_run_id, p_attempt, p_key, 'emit',
                             jsonb_build_object('event', p_name), NULL);
END $$;

-- The wake time is fixed the first time the sleep is reached. Returns 'done' (checkpointed),
-- 'inline' with the remaining time when it is short enough to sleep in-process, or 'suspended'.
CREATE FUNCTION cairn.sleep(p_run_id uuid, p_attempt integer, p_key text,
                            p_until timestamptz, p_duration_ms bigint, p_inline_max_ms bigint)
RETURNS TABLE (outcome text, remaining_ms bigint)
LANGUAGE plpgsql AS $$
DECLARE
    r cairn.runs := cairn.fence(p_run_id, p_attempt);
    w cairn.waits;
    v_remaining bigint;
BEGIN
    IF r.cancel_requested THEN
        RETURN QUERY SELECT 'cancelled'::text, 0::bigint;
        RETURN;
    END IF;
    INSERT INTO cairn.waits (run_id, step_key, kind, namespace, deadline)
    VALUES (p_run_id, p_key, 'sleep', r.namespace,
            coalesce(p_until, now() + p_duration_ms * interval '1 millisecond'))
    ON CONFLICT (run_id, step_key) DO NOTHING;
    SELECT * INTO w FROM cairn.waits WHERE run_id = p_run_id AND step_key = p_key;
    v_remaining := ceil(extract(epoch FROM (w.deadline - now())) * 1000)::bigint;

    IF v_remaining <= 0 THEN
        PERFORM cairn.checkpoint(p_run_id, p_attempt, p_key, 'sleep',
                                 jsonb_build_object('until', w.deadline), w.created_at);
        DELETE FROM cairn.waits WHERE run_id = p_run_id AND step_key = p_key;
        RETURN QUERY SELECT 'done'::text, 0::bigint;
    ELSIF v_remaining <= p_inline_max_ms THEN
        RETURN QUERY SELECT 'inline'::text, v_remaining;
    ELSE
        PERFORM cairn.suspend(p_run_id, p_attempt, 'sleeping', w.deadline,
                              jsonb_build_object('sleep', p_key, 'until', w.deadline));
        RETURN QUERY SELECT 'suspended'::text, v_remaining;
    END IF;
END $$;

-- Spawning is a checkpointed step: the child is created once, by name, whatever the replays.
CREATE FUNCTION cairn.spawn_child(p_run_id uuid, p_attempt integer, p_key text, p_child_name text,
                                  p_flow text, p_input jsonb)
RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    r       cairn.runs := cairn.fence(p_run_id, p_attempt);
    v_child uuid;
BEGIN
    SELECT c.run_id INTO v_child
    FROM cairn.create_run(r.namespace, p_child_name, p_flow, p_input,
                          r.max_attempts, r.retry_backoff_ms, p_run_id) c;
    PERFORM cairn.checkpoint(p_run_id, p_attempt, p_key, 'spawn',
                             jsonb_build_object('run_id', v_child, 'name', p_child_name), NULL);
    RETURN v_child;
END $$;

CREATE FUNCTION cairn.children_outcomes(p_children uuid[]) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT coalesce(jsonb_agg(jsonb_build_object('run_id', c.id, 'name', c.name, 'state', c.state,
                                                 'result', c.result, 'error', c.error)
                              ORDER BY k.ord), '[]'::jsonb)
    FROM unnest(p_children) WITH ORDINALITY AS k(id, ord)
    JOIN cairn.runs c ON c.id = k.id
$$;

-- Returns 'done' with the children's outcomes (checkpointed) when all are finished, else
-- suspends the run until the last one finishes (see on_run_finished).
CREATE FUNCTION cairn.join_children(p_run_id uuid, p_attempt integer, p_key text, p_children uuid[])
RETURNS TABLE (outcome text, results jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    r cairn.runs := cairn.fence(p_run_id, p_attempt);
    v_unfinished integer;
    v_results jsonb;
BEGIN
    IF r.cancel_requested THEN
        RETURN QUERY SELECT 'cancelled'::text, NULL::jsonb;
        RETURN;
    END IF;
    -- Lock our row before counting: a child finishing concurrently (on_run_finished locks it
    -- too) then either is counted as finished here or sees our wait and wakes us.
    PERFORM 1 FROM cairn.runs WHERE id = p_run_id FOR UPDATE;
    SELECT count(*) INTO v_unfinished FROM cairn.runs
    WHERE id = ANY (p_children) AND NOT cairn.is_terminal(state);
    IF v_unfinished = 0 THEN
        v_results := cairn.children_outcomes(p_children);
        PERFORM cairn.checkpoint(p_run_id, p_attempt, p_key, 'join', v_results,
            (SELECT created_at FROM cairn.waits WHERE run_id = p_run_id AND step_key = p_key));
        DELETE FROM cairn.waits WHERE run_id = p_run_id AND step_key = p_key;
        RETURN QUERY SELECT 'done'::text, v_results;
    ELSE
        INSERT INTO cairn.waits (run_id, step_key, kind, namespace, children)
        VALUES (p_run_id, p_key, 'children', r.namespace, p_children)
        ON CONFLICT (run_id, step_key) DO NOTHING;
        PERFORM cairn.suspend(p_run_id, p_attempt, 'waiting', NULL,
            jsonb_build_object('children', cardinality(p_children), 'unfinished', v_unfinished));
        RETURN QUERY SELECT 'suspended'::text, NULL::jsonb;
    END IF;
END $$;

----------------------------------------------------------------------------------------------
-- Budgets. A run may have a budget (runs.budget_usd) covering its whole tree. It is checked
-- whenever a step with a cost completes, in that step's transaction; past it, the run that
-- spent parks (state waiting, waiting_for.budget) until someone raises the budget
-- (cairn.set_budget). The process sees the step boundary's stop, as for a cancel, so runs on
-- SDKs from before budgets are held to them too.

-- The lock that orders budget checks and budget changes within a run tree (by its root).
CREATE FUNCTION cairn.budget_lock_key(p_run_id uuid) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT hashtextextended(root_id::text, 2) FROM cairn.runs WHERE id = p_run_id
$$;

-- The spend of a run's tree: its steps' costs and those of its children, at any depth.
CREATE FUNCTION cairn.tree_usd(p_run_id uuid) RETURNS numeric
LANGUAGE sql STABLE AS $$
    WITH RECURSIVE tree (id) AS (
        SELECT p_run_id
        UNION ALL
        SELECT r.id FROM cairn.runs r JOIN tree t ON r.parent_id = t.id)
    SELECT coalesce(sum(s.usd), 0) FROM cairn.steps s
    WHERE s.run_id IN (SELECT id FROM tree) AND s.origin IS NULL
$$;

-- The nearest budget a run is past: its own, else its parent's, and so on up (each run's
-- budget covers its whole tree). None when all hold.
CREATE FUNCTION cairn.exceeded_budget(p_run_id uuid)
RETURNS TABLE (run_id uuid, name text, spent numeric, budget numeric)
LANGUAGE sql STABLE AS $$
    WITH RECURSIVE chain (id, depth) AS (
        SELECT p_run_id, 0
        UNION ALL
        SELECT r.parent_id, c.depth + 1 FROM cairn.runs r JOIN chain c ON r.id = c.id
        WHERE r.parent_id IS NOT NULL)
    SELECT r.id, r.name, spend.usd, r.budget_usd
    FROM chain c
    JOIN cairn.runs r ON r.id = c.id
    CROSS JOIN LATERAL (SELECT cairn.tree_usd(r.id) AS usd) spend
    WHERE r.budget_usd IS NOT NULL AND spend.usd > r.budget_usd
    ORDER BY c.depth
    LIMIT 1
$$;

-- After a step with a cost: parks the run when a budget is past, and says so (true: the
-- process must stop here). The wait names the run whose budget to raise.
CREATE FUNCTION cairn.park_over_budget(p_run_id uuid, p_attempt integer) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    b record;
BEGIN
    -- Ordered against cairn.set_budget on the same tree: a raise either comes first (and this
    -- sees it) or waits for this to park (and then wakes it).
    PERFORM pg_advisory_xact_lock_shared(cairn.budget_lock_key(p_run_id));
    SELECT * INTO b FROM cairn.exceeded_budget(p_run_id);
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM cairn.suspend(p_run_id, p_attempt, 'waiting', NULL, jsonb_build_object(
        'budget', jsonb_build_object('run', b.name, 'spent', b.spent, 'limit', b.budget),
        'question', format('Run "%s" has spent $%s, past its budget of $%s. Raise the budget to go on?',
                           b.name, round(b.spent, 4), round(b.budget, 4))));
    RETURN true;
END $$;

-- Artifacts: the lock ordering a run recording the object it is about to write (shared)
-- against retention deleting unreferenced objects of the namespace (exclusive).
CREATE FUNCTION cairn.artifact_lock_key(p_namespace text) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$ SELECT hashtextextended('cairn.artifacts:' || p_namespace, 0) $$;

-- Records that run p_run_id is about to write the object p_digest of its namespace (or to
-- refer to it, when the store has it already): retention leaves it alone for a grace period.
-- Returns whether it was recorded already. A writer touches before writing and again after:
-- false the second time means retention took the record (and maybe the object) meanwhile, so
-- the object must be written again before a checkpoint may refer to it.
CREATE FUNCTION cairn.touch_artifact(p_run_id uuid, p_digest text, p_size bigint,
                                     p_content_type text)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_namespace text;
BEGIN
    SELECT namespace INTO v_namespace FROM cairn.runs WHERE id = p_run_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'run % does not exist', p_run_id USING ERRCODE = 'CN004';
    END IF;
    PERFORM pg_advisory_xact_lock_shared(cairn.artifact_lock_key(v_namespace));
    UPDATE cairn.artifacts SET touched_at = now()
    WHERE namespace = v_namespace AND digest = p_digest;
    IF FOUND THEN
        RETURN true;
    END IF;
    INSERT INTO cairn.artifacts (namespace, digest, size, content_type)
    VALUES (v_namespace, p_digest, p_size, p_content_type)
    ON CONFLICT (namespace, digest) DO UPDATE SET touched_at = now();
    RETURN false;
END $$;

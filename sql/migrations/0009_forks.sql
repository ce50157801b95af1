-- Migration 0009: forks (issue 17). A run can be made from another run's checkpoints: those
-- completed before a chosen step are copied (reused, not paid again), some may be given
-- another value (set), and events may be sent to the new run ahead of its waits. The source
-- run is never changed.

-- Where a checkpoint came from, when not from this run's own execution: `reused` (copied from
-- the run it was forked from) or `set` (given by whoever forked it). Neither was paid by this
-- run, so its cost counts nowhere (cairn.tree_usd, the totals).
ALTER TABLE cairn.steps ADD COLUMN origin text CHECK (origin IN ('reused', 'set'));
-- For a fork: {"run": name, "run_id": id, "step": key, "reused": n, "set": n}.
ALTER TABLE cairn.runs ADD COLUMN fork_of jsonb;

CREATE OR REPLACE FUNCTION cairn.tree_usd(p_run_id uuid) RETURNS numeric
LANGUAGE sql STABLE AS $$
    WITH RECURSIVE tree (id) AS (
        SELECT p_run_id
        UNION ALL
        SELECT r.id FROM cairn.runs r JOIN tree t ON r.parent_id = t.id)
    SELECT coalesce(sum(s.usd), 0) FROM cairn.steps s
    WHERE s.run_id IN (SELECT id FROM tree) AND s.origin IS NULL
$$;

-- When step p_step of run p_source began, for a fork from it: a checkpoint's start, an open
-- wait's, or for the step whose failure failed the run, the run's end (every checkpoint is
-- before it).
CREATE FUNCTION cairn.fork_point(p_source uuid, p_step text) RETURNS timestamptz
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_at timestamptz;
    r    cairn.runs;
BEGIN
    SELECT started_at INTO v_at FROM cairn.steps WHERE run_id = p_source AND key = p_step;
    IF FOUND THEN
        RETURN v_at;
    END IF;
    SELECT created_at INTO v_at FROM cairn.waits WHERE run_id = p_source AND step_key = p_step;
    IF FOUND THEN
        RETURN v_at;
    END IF;
    SELECT * INTO r FROM cairn.runs WHERE id = p_source;
    IF r.state = 'failed' AND r.error ->> 'step' = p_step THEN
        RETURN coalesce(r.finished_at, now());
    END IF;
    RAISE EXCEPTION 'run "%" has no step "%" (completed, waiting or failed) to fork from', r.name, p_step
        USING ERRCODE = 'CN004', HINT = '`inspect` lists a run''s steps by key (plan, plan#2, event:approve-x)';
END $$;

-- A new run (p_name, in the source's namespace, of its flow; created as cairn.create_run
-- creates one, with p_input, else the source's input) from run p_source's checkpoints
-- completed before step p_step began. p_outputs ({key: value}) gives
-- some of those steps another value; p_answers ({event: payload}) sends events to the new run
-- alone, so the waits for them are answered when reached. Idempotent by name: a fork that
-- exists is returned as it is. Returns the new run, whether it was made, and how many
-- checkpoints it reused. Sealed (sensitive) checkpoints are not copied: the fork runs those
-- steps again, so a value sealed for one run is opened by that run's code alone. A fork
-- point after a spawn whose child has not finished is refused: the fork would join a child
-- of its source that never wakes it.
CREATE FUNCTION cairn.fork_run(p_source uuid, p_name text, p_input jsonb, p_step text,
                               p_outputs jsonb, p_answers jsonb, p_max_attempts integer,
                               p_retry_backoff_ms bigint, p_created_at timestamptz DEFAULT NULL,
                               p_flowrun_uid uuid DEFAULT NULL)
RETURNS TABLE (run_id uuid, created boolean, reused integer)
LANGUAGE plpgsql AS $$
DECLARE
    src       cairn.runs;
    v_at      timestamptz;
    v_id      uuid;
    v_created boolean;
    v_key     text;
    v_reused  integer;
    v_set     integer;
BEGIN
    SELECT * INTO src FROM cairn.runs WHERE id = p_source;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'run % does not exist', p_source USING ERRCODE = 'CN004';
    END IF;
    v_at := cairn.fork_point(p_source, p_step);
    SELECT s.key INTO v_key
    FROM cairn.steps s JOIN cairn.runs c ON c.id = (s.result ->> 'run_id')::uuid
    WHERE s.run_id = p_source AND s.kind = 'spawn' AND s.completed_at <= v_at
      AND s.key <> p_step AND NOT cairn.is_terminal(c.state)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'run "%" started a child at "%" that has not finished: a fork after it would wait for a child of its source',
            src.name, v_key
            USING ERRCODE = 'CN005', HINT = 'fork from that step or an earlier one, or once the child has finished';
    END IF;
    SELECT c.run_id, c.created INTO v_id, v_created
    FROM cairn.create_run(src.namespace, p_name, src.flow, coalesce(p_input, src.input), p_max_attempts,
                          p_retry_backoff_ms, NULL, p_created_at, p_flowrun_uid) c;
    IF NOT v_created THEN
        RETURN QUERY SELECT v_id, false, 0;
        RETURN;
    END IF;
    FOR v_key IN SELECT jsonb_object_keys(coalesce(p_outputs, '{}')) LOOP
        IF NOT EXISTS (SELECT 1 FROM cairn.steps s WHERE s.run_id = p_source AND s.key = v_key
                       AND s.completed_at <= v_at AND s.key <> p_step AND s.kind = 'step'
                       AND coalesce(s.result ->> '$cairn', '') <> 'sealed') THEN
            RAISE EXCEPTION 'step "%" of run "%" is not one the fork reuses (the steps completed before "%", not waits, spawns or sensitive steps)',
                v_key, src.name, p_step
                USING ERRCODE = 'CN005',
                      HINT = 'give outputs to steps before the fork point; later ones run again';
        END IF;
    END LOOP;
    INSERT INTO cairn.steps (run_id, key, kind, result, attempt, tries, started_at, completed_at,
                             usd, tokens_in, tokens_out, model, usage_meta, origin)
    SELECT v_id, s.key, s.kind,
           CASE WHEN p_outputs ? s.key THEN
                CASE WHEN jsonb_typeof(p_outputs -> s.key) = 'object' AND (p_outputs -> s.key) ? '$cairn'
                     THEN jsonb_build_object('$cairn', 'value', 'value', p_outputs -> s.key)
                     ELSE p_outputs -> s.key END
                ELSE s.result END,
           -- A set value cost nothing: it came from whoever forked, not from a model.
           0, s.tries, s.started_at, s.completed_at,
           CASE WHEN p_outputs ? s.key THEN NULL ELSE s.usd END,
           CASE WHEN p_outputs ? s.key THEN NULL ELSE s.tokens_in END,
           CASE WHEN p_outputs ? s.key THEN NULL ELSE s.tokens_out END,
           CASE WHEN p_outputs ? s.key THEN NULL ELSE s.model END,
           CASE WHEN p_outputs ? s.key THEN NULL ELSE s.usage_meta END,
           CASE WHEN p_outputs ? s.key THEN 'set' ELSE 'reused' END
    FROM cairn.steps s
    WHERE s.run_id = p_source AND s.completed_at <= v_at AND s.key <> p_step
      AND coalesce(s.result ->> '$cairn', '') <> 'sealed';
    GET DIAGNOSTICS v_reused = ROW_COUNT;
    SELECT count(*) INTO v_set FROM jsonb_object_keys(coalesce(p_outputs, '{}'));
    PERFORM cairn.emit_event(src.namespace, a.key, a.value, NULL, v_id)
    FROM jsonb_each(coalesce(p_answers, '{}')) a;
    UPDATE cairn.runs
    SET fork_of = jsonb_build_object('run', src.name, 'run_id', src.id, 'step', p_step,
                                     'reused', v_reused - v_set, 'set', v_set)
    WHERE id = v_id;
    RETURN QUERY SELECT v_id, true, v_reused - v_set;
END $$;

-- As in 0002: PUBLIC's EXECUTE on the new functions goes.
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA cairn FROM PUBLIC;

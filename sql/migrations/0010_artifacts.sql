-- Migration 0010: artifacts (issue 17). Large step results and the objects flows store on
-- purpose live in an object store; checkpoints refer to them by digest. The engine records
-- each object a run is about to write, so that retention deletes only objects no checkpoint
-- refers to (and none being written).

-- Objects in the artifact store (engine/src/artifacts.rs), one row per namespace and digest:
-- recorded by the run about to write one, before the write (cairn.touch_artifact), so that
-- retention (cairn.artifacts_to_delete) never takes an object a step is being checkpointed with.
CREATE TABLE cairn.artifacts (
    namespace    text NOT NULL,
    digest       text NOT NULL CHECK (digest ~ '^sha256:[0-9a-f]{64}$'),
    size         bigint NOT NULL,
    content_type text NOT NULL,
    touched_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, digest)
);
-- Retention's candidates: a namespace's records not touched for the grace period.
CREATE INDEX artifacts_touched_idx ON cairn.artifacts (namespace, touched_at);

-- The object a checkpoint refers to: an artifact's digest, or a sealed value's kept in the
-- store. NULL for a checkpoint held whole in its row.
CREATE FUNCTION cairn.artifact_digest(p_result jsonb) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE p_result ->> '$cairn'
           WHEN 'artifact' THEN p_result ->> 'digest'
           WHEN 'sealed' THEN p_result -> 'artifact' ->> 'digest' END
$$;

-- Retention asks whether any checkpoint still refers to an object.
CREATE INDEX steps_artifact_idx ON cairn.steps (cairn.artifact_digest(result))
    WHERE cairn.artifact_digest(result) IS NOT NULL;

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

-- Before and after a flow writes an object to the artifact store (cairn.touch_artifact).
CREATE FUNCTION cairn_runner_v1.touch_artifact(p_token text, p_run_id uuid, p_digest text,
                                               p_size bigint, p_content_type text)
RETURNS boolean
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT cairn.authorize(p_token, p_run_id);
    SELECT cairn.touch_artifact(p_run_id, p_digest, p_size, p_content_type);
$$;

-- Retention of artifacts: deletes the records of up to p_limit objects of p_namespace that no
-- checkpoint refers to and that no run recorded since p_before, and returns their digests.
-- Call it in a transaction and delete the objects before committing: it holds the namespace's
-- artifact lock, so a run about to write one of them waits, then records it anew.
CREATE FUNCTION cairn.artifacts_to_delete(p_namespace text, p_before timestamptz,
                                          p_limit integer)
RETURNS SETOF text
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(cairn.artifact_lock_key(p_namespace));
    RETURN QUERY
    DELETE FROM cairn.artifacts a
    WHERE a.namespace = p_namespace
      AND a.digest IN (
          SELECT o.digest FROM cairn.artifacts o
          WHERE o.namespace = p_namespace AND o.touched_at < p_before
            AND NOT EXISTS (SELECT 1 FROM cairn.steps s JOIN cairn.runs r ON r.id = s.run_id
                            WHERE cairn.artifact_digest(s.result) = o.digest
                              AND cairn.artifact_digest(s.result) IS NOT NULL
                              AND r.namespace = p_namespace)
          LIMIT p_limit)
    RETURNING a.digest;
END $$;

-- Forks share artifacts by reference: they take the artifact lock (see cairn.artifacts_to_delete).
-- A new run (p_name, in the source's namespace, of its flow; created as cairn.create_run
-- creates one, with p_input, else the source's input) from run p_source's checkpoints
-- completed before step p_step began. p_outputs ({key: value}) gives
-- some of those steps another value; p_answers ({event: payload}) sends events to the new run
-- alone, so the waits for them are answered when reached. Idempotent by name: a fork that
-- exists is returned as it is. Returns the new run, whether it was made, and how many
-- checkpoints it reused (artifacts shared by reference). Sealed (sensitive) checkpoints are not copied: the fork runs those
-- steps again, so a value sealed for one run is opened by that run's code alone. A fork
-- point after a spawn whose child has not finished is refused: the fork would join a child
-- of its source that never wakes it.
CREATE OR REPLACE FUNCTION cairn.fork_run(p_source uuid, p_name text, p_input jsonb, p_step text,
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
    -- The copies refer to the source's artifacts: retention (cairn.artifacts_to_delete) must
    -- see them before it judges those objects unreferenced, even if the source goes meanwhile.
    PERFORM pg_advisory_xact_lock_shared(cairn.artifact_lock_key(src.namespace));
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

-- As in 0002: PUBLIC's EXECUTE on the new functions goes; the runner role gets the runner
-- protocol's new one.
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA cairn, cairn_runner_v1 FROM PUBLIC;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA cairn_runner_v1 TO cairn_runner;

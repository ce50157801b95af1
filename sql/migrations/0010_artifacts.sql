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
CREATE FUNCTION cairn.touch_artifact(p_run_id uuid, p_digest text, p_size bigint,
                                     p_content_type text)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_namespace text;
BEGIN
    SELECT namespace INTO v_namespace FROM cairn.runs WHERE id = p_run_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'run % does not exist', p_run_id USING ERRCODE = 'CN004';
    END IF;
    PERFORM pg_advisory_xact_lock_shared(cairn.artifact_lock_key(v_namespace));
    INSERT INTO cairn.artifacts (namespace, digest, size, content_type)
    VALUES (v_namespace, p_digest, p_size, p_content_type)
    ON CONFLICT (namespace, digest) DO UPDATE SET touched_at = now();
END $$;

-- Before a flow writes an object to the artifact store (cairn.touch_artifact).
CREATE FUNCTION cairn_runner_v1.touch_artifact(p_token text, p_run_id uuid, p_digest text,
                                               p_size bigint, p_content_type text)
RETURNS void
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

-- As in 0002: PUBLIC's EXECUTE on the new functions goes; the runner role gets the runner
-- protocol's new one.
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA cairn, cairn_runner_v1 FROM PUBLIC;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA cairn_runner_v1 TO cairn_runner;

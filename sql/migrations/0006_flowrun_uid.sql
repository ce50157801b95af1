-- Migration 0006: runs know the FlowRun they belong to (runs.flowrun_uid), so the operator needs
-- no finalizer on FlowRuns: it forgets a run when its FlowRun is deleted (cairn.forget_flowrun),
-- or when its namespace goes (cairn.forget_namespace), and a FlowRun created again under a name
-- never adopts the rows of a deleted one (cairn.create_run drops them). A finalizer that
-- outlived the operator's rights kept namespaces from being deleted. Runs from before are bound
-- to their FlowRun the next time the operator looks at it.

ALTER TABLE cairn.runs ADD COLUMN flowrun_uid uuid;
CREATE UNIQUE INDEX runs_flowrun_uid_key ON cairn.runs (flowrun_uid) WHERE flowrun_uid IS NOT NULL;

DROP FUNCTION cairn.create_run(text, text, text, jsonb, integer, bigint, uuid, timestamptz);
-- Idempotent by (namespace, name): the same request returns the existing run; a different
-- flow or input under the same name is a conflict. p_created_at: when the run was asked for
-- (its FlowRun's creationTimestamp), if earlier than now. p_flowrun_uid: the FlowRun the run
-- belongs to. A row of the same name bound to another FlowRun is a leftover of one deleted
-- while no launcher saw it: it is dropped (with its children) and the run starts clean. A row
-- bound to none (a child the engine made, a run from before migration 0006) is bound to it.
CREATE FUNCTION cairn.create_run(p_namespace text, p_name text, p_flow text, p_input jsonb,
                                 p_max_attempts integer, p_retry_backoff_ms bigint,
                                 p_parent_id uuid DEFAULT NULL,
                                 p_created_at timestamptz DEFAULT NULL,
                                 p_flowrun_uid uuid DEFAULT NULL)
RETURNS TABLE (run_id uuid, created boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_id   uuid := gen_random_uuid();
    v_root uuid;
    r      cairn.runs;
BEGIN
    IF p_flowrun_uid IS NOT NULL THEN
        DELETE FROM cairn.runs
        WHERE namespace = p_namespace AND name = p_name
          AND flowrun_uid IS NOT NULL AND flowrun_uid <> p_flowrun_uid;
    END IF;
    IF p_parent_id IS NOT NULL THEN
        SELECT root_id INTO v_root FROM cairn.runs WHERE id = p_parent_id;
    END IF;
    INSERT INTO cairn.runs (id, namespace, name, flow, input, parent_id, root_id,
                            max_attempts, retry_backoff_ms, created_at, flowrun_uid)
    VALUES (v_id, p_namespace, p_name, p_flow, p_input, p_parent_id, coalesce(v_root, v_id),
            p_max_attempts, p_retry_backoff_ms, least(coalesce(p_created_at, now()), now()),
            p_flowrun_uid)
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
    IF r.flowrun_uid IS NULL AND p_flowrun_uid IS NOT NULL THEN
        UPDATE cairn.runs SET flowrun_uid = p_flowrun_uid WHERE id = r.id;
    END IF;
    RETURN QUERY SELECT r.id, false;
END $$;

-- Forgets the run of a deleted FlowRun: cancels it (its children too) and deletes its rows.
-- The run is the one bound to that FlowRun, else the unbound one of its name (made before
-- migration 0006). False when there is none.
CREATE FUNCTION cairn.forget_flowrun(p_flowrun_uid uuid, p_namespace text, p_name text)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_id uuid;
BEGIN
    SELECT id INTO v_id FROM cairn.runs
    WHERE flowrun_uid = p_flowrun_uid
       OR (flowrun_uid IS NULL AND namespace = p_namespace AND name = p_name);
    IF v_id IS NULL THEN
        RETURN false;
    END IF;
    PERFORM cairn.cancel_run(v_id);
    DELETE FROM cairn.runs WHERE id = v_id;
    RETURN true;
END $$;

-- Forgets a namespace that is being deleted or is gone: its runs (children with their
-- parents) and its events. Returns how many runs went.
CREATE FUNCTION cairn.forget_namespace(p_namespace text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_runs integer;
BEGIN
    DELETE FROM cairn.runs WHERE namespace = p_namespace AND parent_id IS NULL;
    GET DIAGNOSTICS v_runs = ROW_COUNT;
    DELETE FROM cairn.events WHERE namespace = p_namespace;
    RETURN v_runs;
END $$;

-- As in 0002: PUBLIC's EXECUTE on the new functions goes.
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA cairn FROM PUBLIC;

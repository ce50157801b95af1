-- Migration 0012: per-flow concurrency limits (issue 19). A FlowRun's run belongs to a
-- concurrency group (its Flow) with an optional key computed from its input. A claim admits a
-- run to its group only with room under the Flow's limits (`concurrency.max`, and
-- `concurrency.maxPerKey` per key); a refused run is queued, and queued runs are admitted in
-- creation order as places free (NOTIFY cairn_admit names the next). An admitted run holds its
-- place until it finishes, through its waits. Deciding here, under the claim's lock, keeps the
-- limits across launcher restarts and leader changes.

ALTER TABLE cairn.runs
    ADD COLUMN concurrency_group text,
    ADD COLUMN concurrency_key text,
    ADD COLUMN queued_at timestamptz,
    ADD COLUMN admitted_at timestamptz;
CREATE INDEX runs_concurrency_idx ON cairn.runs (namespace, concurrency_group, concurrency_key)
    WHERE concurrency_group IS NOT NULL AND state NOT IN ('succeeded', 'failed', 'cancelled');
-- The runs queued for a place, in the order they are admitted.
CREATE INDEX runs_queued_idx ON cairn.runs (namespace, concurrency_group, created_at, id)
    WHERE queued_at IS NOT NULL AND admitted_at IS NULL AND state = 'pending';

-- Runs started before this migration are in no group: they hold no place.
DROP FUNCTION cairn.create_run(text, text, text, jsonb, integer, bigint, uuid, timestamptz, uuid);
DROP FUNCTION cairn.claim(uuid, integer, integer);
DROP FUNCTION cairn.start_attempt_within(uuid, integer, integer);

-- Idempotent by (namespace, name): the same request returns the existing run; a different
-- flow or input under the same name is a conflict. p_created_at: when the run was asked for
-- (its FlowRun's creationTimestamp), if earlier than now. p_flowrun_uid: the FlowRun the run
-- belongs to. A row of the same name bound to another FlowRun is a leftover of one deleted
-- while no launcher saw it: it is dropped (with its children) and the run starts clean. A row
-- bound to none (a child the engine made, a run from before migration 0006) is bound to it.
-- p_concurrency_group and p_concurrency_key: the Flow whose concurrency limits the run is held
-- to, and its key (see start_attempt_within); kept as first given.
CREATE FUNCTION cairn.create_run(p_namespace text, p_name text, p_flow text, p_input jsonb,
                                 p_max_attempts integer, p_retry_backoff_ms bigint,
                                 p_parent_id uuid DEFAULT NULL,
                                 p_created_at timestamptz DEFAULT NULL,
                                 p_flowrun_uid uuid DEFAULT NULL,
                                 p_concurrency_group text DEFAULT NULL,
                                 p_concurrency_key text DEFAULT NULL)
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
                            max_attempts, retry_backoff_ms, created_at, flowrun_uid,
                            concurrency_group, concurrency_key)
    VALUES (v_id, p_namespace, p_name, p_flow, p_input, p_parent_id, coalesce(v_root, v_id),
            p_max_attempts, p_retry_backoff_ms, least(coalesce(p_created_at, now()), now()),
            p_flowrun_uid, p_concurrency_group, p_concurrency_key)
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

-- Names for a message: the first ten, then how many more.
CREATE FUNCTION cairn.some_names(p_names text[]) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_names IS NULL OR cardinality(p_names) = 0 THEN NULL
                ELSE array_to_string(p_names[1:10], ', ')
                     || CASE WHEN cardinality(p_names) > 10
                             THEN format(' and %s more', cardinality(p_names) - 10) ELSE '' END
           END
$$;

-- Why a pending run may not yet be admitted to its concurrency group (its Flow), or NULL when
-- it may: at most `p_max_per_flow` of the group's runs, and `p_max_per_key` of those with its
-- key, are admitted and unfinished at once (NULL: no limit). Runs refused before it that could
-- go first do: queued runs are admitted in creation order.
CREATE FUNCTION cairn.concurrency_refusal(r cairn.runs, p_max_per_flow integer,
                                          p_max_per_key integer)
RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_holding bigint;
    v_ahead   bigint;
    v_holders text;
BEGIN
    IF p_max_per_key IS NOT NULL THEN
        SELECT count(*), cairn.some_names(array_agg(name ORDER BY admitted_at, name))
        INTO v_holding, v_holders
        FROM cairn.runs h
        WHERE h.namespace = r.namespace AND h.concurrency_group = r.concurrency_group
          AND h.concurrency_key IS NOT DISTINCT FROM r.concurrency_key
          AND h.admitted_at IS NOT NULL AND NOT cairn.is_terminal(h.state);
        SELECT count(*) INTO v_ahead FROM cairn.runs w
        WHERE w.namespace = r.namespace AND w.concurrency_group = r.concurrency_group
          AND w.concurrency_key IS NOT DISTINCT FROM r.concurrency_key
          AND w.queued_at IS NOT NULL AND w.admitted_at IS NULL AND w.state = 'pending'
          AND (w.created_at, w.id) < (r.created_at, r.id);
        IF v_holding + v_ahead >= p_max_per_key THEN
            RETURN format('Flow "%s" allows %s run(s) at a time per key %s (concurrency.maxPerKey); running: %s%s',
                r.concurrency_group, p_max_per_key, coalesce(to_json(r.concurrency_key)::text, 'null'),
                coalesce(v_holders, 'none'),
                CASE WHEN v_ahead > 0 THEN format('; %s earlier run(s) wait first', v_ahead) ELSE '' END);
        END IF;
    END IF;
    IF p_max_per_flow IS NOT NULL THEN
        SELECT count(*), cairn.some_names(array_agg(name ORDER BY admitted_at, name))
        INTO v_holding, v_holders
        FROM cairn.runs h
        WHERE h.namespace = r.namespace AND h.concurrency_group = r.concurrency_group
          AND h.admitted_at IS NOT NULL AND NOT cairn.is_terminal(h.state);
        -- Earlier queued runs go first, unless their own key is full.
        SELECT count(*) INTO v_ahead FROM cairn.runs w
        WHERE w.namespace = r.namespace AND w.concurrency_group = r.concurrency_group
          AND w.queued_at IS NOT NULL AND w.admitted_at IS NULL AND w.state = 'pending'
          AND (w.created_at, w.id) < (r.created_at, r.id)
          AND (p_max_per_key IS NULL OR (
              SELECT count(*) FROM cairn.runs h
              WHERE h.namespace = w.namespace AND h.concurrency_group = w.concurrency_group
                AND h.concurrency_key IS NOT DISTINCT FROM w.concurrency_key
                AND h.admitted_at IS NOT NULL AND NOT cairn.is_terminal(h.state)) < p_max_per_key);
        IF v_holding + v_ahead >= p_max_per_flow THEN
            RETURN format('Flow "%s" allows %s run(s) at a time (concurrency.max); running: %s%s',
                r.concurrency_group, p_max_per_flow, coalesce(v_holders, 'none'),
                CASE WHEN v_ahead > 0 THEN format('; %s earlier run(s) wait first', v_ahead) ELSE '' END);
        END IF;
    END IF;
    RETURN NULL;
END $$;

-- Tells the launchers (NOTIFY cairn_admit) which queued runs of a concurrency group to try
-- again: the earliest of the key, and the earliest of each of the group's first five keys
-- waiting (the earliest of the group may have a full key). Each one admitted tells the next,
-- so freed places fill one by one, in creation order.
CREATE FUNCTION cairn.wake_queued(p_namespace text, p_group text, p_key text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    w record;
BEGIN
    FOR w IN
        (SELECT namespace, name FROM cairn.runs
         WHERE namespace = p_namespace AND concurrency_group = p_group
           AND concurrency_key IS NOT DISTINCT FROM p_key
           AND queued_at IS NOT NULL AND admitted_at IS NULL AND state = 'pending'
         ORDER BY created_at, id LIMIT 1)
        UNION
        (SELECT namespace, name FROM (
             SELECT DISTINCT ON (concurrency_key) namespace, name, created_at, id FROM cairn.runs
             WHERE namespace = p_namespace AND concurrency_group = p_group
               AND queued_at IS NOT NULL AND admitted_at IS NULL AND state = 'pending'
             ORDER BY concurrency_key, created_at, id) first_of_each_key
         ORDER BY created_at, id LIMIT 5)
    LOOP
        PERFORM pg_notify('cairn_admit',
                          json_build_object('namespace', w.namespace, 'name', w.name)::text);
    END LOOP;
END $$;

-- Claims the next attempt of a pending run, like start_attempt, within the limits: fewer than
-- `p_max_running` runs running in all and `p_max_in_namespace` in the run's namespace (the
-- running budget), and, on its first claim, room in its concurrency group (see
-- concurrency_refusal). NULL: no limit. Returns the attempt, or NULL with why the run waits and
-- what holds it ('concurrency' or 'budget'). A run admitted to its group holds its place until
-- it finishes, through its waits; one refused is queued for it.
CREATE FUNCTION cairn.start_attempt_within(p_run_id uuid, p_max_running integer,
                                           p_max_in_namespace integer,
                                           p_max_per_flow integer DEFAULT NULL,
                                           p_max_per_key integer DEFAULT NULL)
RETURNS TABLE (attempt integer, refused text, held_by text)
LANGUAGE plpgsql AS $$
DECLARE
    r         cairn.runs;
    v_running bigint;
    v_refused text;
    v_attempt integer;
BEGIN
    -- One claim at a time, so two launchers never both take the last slot.
    PERFORM pg_advisory_xact_lock(hashtextextended('cairn.running_budget', 0));
    SELECT * INTO r FROM cairn.runs WHERE id = p_run_id;
    IF r.state IS DISTINCT FROM 'pending' THEN
        RETURN QUERY SELECT NULL::integer, NULL::text, NULL::text;   -- claimed elsewhere, or over
        RETURN;
    END IF;
    IF r.concurrency_group IS NOT NULL AND r.admitted_at IS NULL THEN
        v_refused := cairn.concurrency_refusal(r, p_max_per_flow, p_max_per_key);
        IF v_refused IS NOT NULL THEN
            UPDATE cairn.runs SET queued_at = now() WHERE id = p_run_id AND queued_at IS NULL;
            RETURN QUERY SELECT NULL::integer, v_refused, 'concurrency'::text;
            RETURN;
        END IF;
    END IF;
    IF p_max_running IS NOT NULL THEN
        SELECT count(*) INTO v_running FROM cairn.runs WHERE state = 'running';
        IF v_running >= p_max_running THEN
            RETURN QUERY SELECT NULL::integer, format(
                'waiting for a slot: %s of %s flow pods are running', v_running, p_max_running),
                'budget'::text;
            RETURN;
        END IF;
    END IF;
    IF p_max_in_namespace IS NOT NULL THEN
        SELECT count(*) INTO v_running FROM cairn.runs
        WHERE state = 'running' AND namespace = r.namespace;
        IF v_running >= p_max_in_namespace THEN
            RETURN QUERY SELECT NULL::integer, format(
                'waiting for a slot: %s of %s flow pods are running in namespace "%s"',
                v_running, p_max_in_namespace, r.namespace), 'budget'::text;
            RETURN;
        END IF;
    END IF;
    v_attempt := cairn.start_attempt(p_run_id);
    IF v_attempt IS NOT NULL AND r.concurrency_group IS NOT NULL AND r.admitted_at IS NULL THEN
        UPDATE cairn.runs SET admitted_at = now() WHERE id = p_run_id;
        -- A queued run admitted: the next in line may fit too.
        IF r.queued_at IS NOT NULL THEN
            PERFORM cairn.wake_queued(r.namespace, r.concurrency_group, r.concurrency_key);
        END IF;
    END IF;
    RETURN QUERY SELECT v_attempt, NULL::text, NULL::text;
END $$;

-- Claims the next attempt of a pending run within the limits (see start_attempt_within) and
-- issues the attempt's token, returned once and stored hashed.
CREATE FUNCTION cairn.claim(p_run_id uuid, p_max_running integer, p_max_in_namespace integer,
                            p_max_per_flow integer DEFAULT NULL,
                            p_max_per_key integer DEFAULT NULL)
RETURNS TABLE (attempt integer, token text, refused text, held_by text)
LANGUAGE plpgsql AS $$
DECLARE
    v_attempt integer;
    v_refused text;
    v_held_by text;
    v_token   text;
BEGIN
    SELECT s.attempt, s.refused, s.held_by INTO v_attempt, v_refused, v_held_by
    FROM cairn.start_attempt_within(p_run_id, p_max_running, p_max_in_namespace,
                                    p_max_per_flow, p_max_per_key) s;
    IF v_attempt IS NOT NULL THEN
        v_token := cairn.new_token();
        UPDATE cairn.runs SET token_hash = cairn.hash_token(v_token) WHERE id = p_run_id;
    END IF;
    RETURN QUERY SELECT v_attempt, v_token, v_refused, v_held_by;
END $$;

-- Retries a failed run from its last checkpoint: completed steps stay, the step that failed runs
-- again in a new attempt with a fresh crash budget. Only failed runs can be retried (CN005).
CREATE OR REPLACE FUNCTION cairn.retry_run(p_run_id uuid) RETURNS text
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
        cancel_requested = false, admitted_at = NULL, queued_at = NULL, updated_at = now()
    WHERE id = p_run_id;
    RETURN 'pending';
END $$;

-- A run that held a place in its concurrency group finished: the queued runs may go.
CREATE FUNCTION cairn.on_run_released() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM cairn.wake_queued(NEW.namespace, NEW.concurrency_group, NEW.concurrency_key);
    RETURN NULL;
END $$;

CREATE TRIGGER runs_released AFTER UPDATE OF state ON cairn.runs
FOR EACH ROW
WHEN (OLD.admitted_at IS NOT NULL AND NEW.concurrency_group IS NOT NULL
      AND cairn.is_terminal(NEW.state) AND NOT cairn.is_terminal(OLD.state))
EXECUTE FUNCTION cairn.on_run_released();

-- The launchers' functions are the owner's alone (as 50_triggers_and_grants.sql makes them).
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA cairn FROM PUBLIC;

----------------------------------------------------------------------------------------------
-- The launchers' functions (the operator, `cairn dev`, the CLI), as the owner role.

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

-- Claims a pending run for a new process: returns the new attempt number, or nothing when the
-- run is not pending (someone else launched it, or it was cancelled meanwhile).
CREATE FUNCTION cairn.start_attempt(p_run_id uuid) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_attempt integer;
BEGIN
    PERFORM pg_advisory_xact_lock(cairn.attempt_lock_key(p_run_id));
    UPDATE cairn.runs
    SET state = 'running', attempt = attempt + 1, wake_at = NULL, waiting_for = NULL,
        updated_at = now()
    WHERE id = p_run_id AND state = 'pending'
    RETURNING attempt INTO v_attempt;
    IF v_attempt IS NOT NULL THEN
        INSERT INTO cairn.attempts (run_id, attempt) VALUES (p_run_id, v_attempt);
    END IF;
    RETURN v_attempt;
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

-- An attempt whose process never reached the database (its launcher died between the claim
-- and the launch, or its pod went before the process started) is launched again under the
-- same number with a fresh token, which the old one can no longer open: not a crash. Returns
-- the token; NULL when the attempt is not the run's running one, or its process did start.
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

-- A launched process died while its run was still running (crash, kill, OOM, lost pod).
-- The supervisor's lifecycle policy passes the retry delay, or NULL to give up.
CREATE FUNCTION cairn.record_crash(p_run_id uuid, p_attempt integer, p_reason text,
                                   p_retry_delay_ms bigint)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    r cairn.runs;
BEGIN
    PERFORM pg_advisory_xact_lock(cairn.attempt_lock_key(p_run_id));
    SELECT * INTO r FROM cairn.runs WHERE id = p_run_id FOR UPDATE;
    IF NOT FOUND OR r.attempt <> p_attempt OR r.state <> 'running' THEN
        RETURN coalesce(r.state, 'missing');   -- already settled by someone else
    END IF;
    PERFORM cairn.end_attempt(p_run_id, p_attempt, 'crashed', p_reason);
    -- One UPDATE of the run on each path (see cairn.suspend).
    IF r.cancel_requested THEN
        PERFORM cairn.finish(p_run_id, 'cancelled', NULL, '{"message": "cancelled"}'::jsonb, true);
    ELSIF p_retry_delay_ms IS NOT NULL THEN
        UPDATE cairn.runs
        SET state = 'retrying', wake_at = now() + p_retry_delay_ms * interval '1 millisecond',
            waiting_for = jsonb_build_object('retry_after', p_reason), updated_at = now(),
            crashes = crashes + 1, token_hash = NULL
        WHERE id = p_run_id;
    ELSE
        PERFORM cairn.finish(p_run_id, 'failed', NULL, jsonb_build_object(
            'message', format('gave up after %s crashed attempts; last: %s', r.crashes + 1, p_reason),
            'kind', 'crashed'), true);
    END IF;
    RETURN (SELECT state FROM cairn.runs WHERE id = p_run_id);
END $$;

-- Makes every sleeping, retrying or timed-out waiting run whose time has come runnable.
CREATE FUNCTION cairn.wake_due() RETURNS integer
LANGUAGE sql AS $$
    WITH woken AS (
        UPDATE cairn.runs SET state = 'pending', wake_at = NULL, updated_at = now()
        WHERE wake_at <= now() AND state IN ('sleeping', 'retrying', 'waiting')
        RETURNING id)
    SELECT count(*)::integer FROM woken
$$;

-- Milliseconds until the next wake-up among unfinished runs (NULL when none), by the database clock.
CREATE FUNCTION cairn.next_wake_ms() RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT greatest(0, ceil(extract(epoch FROM (min(wake_at) - now())) * 1000))::bigint
    FROM cairn.runs WHERE wake_at IS NOT NULL AND state IN ('sleeping', 'retrying', 'waiting')
$$;

-- Cancels a run and its unfinished descendants. Parked runs end at once (their waits and timers
-- are cleared); a running one is flagged and stops at its next step boundary.
CREATE FUNCTION cairn.cancel_run(p_run_id uuid) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    r cairn.runs;
    v_child uuid;
BEGIN
    -- Children first: every path locks a child before its parent, so none can deadlock.
    FOR v_child IN SELECT id FROM cairn.runs WHERE parent_id = p_run_id AND NOT cairn.is_terminal(state) LOOP
        PERFORM cairn.cancel_run(v_child);
    END LOOP;
    SELECT * INTO r FROM cairn.runs WHERE id = p_run_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'run % does not exist', p_run_id USING ERRCODE = 'CN004';
    END IF;
    IF cairn.is_terminal(r.state) THEN
        RETURN r.state;
    END IF;
    IF r.state = 'running' THEN
        UPDATE cairn.runs SET cancel_requested = true, updated_at = now() WHERE id = p_run_id;
    ELSE
        PERFORM cairn.finish(p_run_id, 'cancelled', NULL, '{"message": "cancelled"}'::jsonb);
    END IF;
    RETURN (SELECT state FROM cairn.runs WHERE id = p_run_id);
END $$;

-- Fails a run that has outlived its deadline (`p_deadline_seconds` after it was created, by the
-- database clock), whatever it is doing: a parked run ends at once; a running attempt is fenced
-- off (its next write is refused, so it pays for nothing more) and its launcher stops it.
-- Unfinished children are cancelled. Returns the run's state afterwards; a run still inside its
-- deadline is left alone.
CREATE FUNCTION cairn.expire_run(p_run_id uuid, p_deadline_seconds bigint) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    r       cairn.runs;
    v_child uuid;
BEGIN
    -- Exclusive, like start_attempt: no write of the running attempt is half done meanwhile.
    PERFORM pg_advisory_xact_lock(cairn.attempt_lock_key(p_run_id));
    SELECT * INTO r FROM cairn.runs WHERE id = p_run_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'run % does not exist', p_run_id USING ERRCODE = 'CN004';
    END IF;
    IF cairn.is_terminal(r.state) OR r.created_at + p_deadline_seconds * interval '1 second' > now() THEN
        RETURN r.state;
    END IF;
    -- Children first, then the run: the same row-lock order as cancel_run.
    FOR v_child IN SELECT id FROM cairn.runs WHERE parent_id = p_run_id AND NOT cairn.is_terminal(state) LOOP
        PERFORM cairn.cancel_run(v_child);
    END LOOP;
    PERFORM 1 FROM cairn.runs WHERE id = p_run_id FOR UPDATE;
    IF r.state = 'running' THEN
        PERFORM cairn.end_attempt(p_run_id, r.attempt, 'failed', 'deadline exceeded');
    END IF;
    PERFORM cairn.finish(p_run_id, 'failed', NULL, jsonb_build_object(
        'message', format('deadline exceeded: the run did not finish within %s seconds', p_deadline_seconds),
        'kind', 'deadline'));
    RETURN 'failed';
END $$;

-- Retries a failed run from its last checkpoint: completed steps stay, the step that failed runs
-- again in a new attempt with a fresh crash budget. Only failed runs can be retried (CN005).
CREATE FUNCTION cairn.retry_run(p_run_id uuid) RETURNS text
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

-- Sets a run's budget (NULL: none). Refused below what its tree has already spent. Runs of the
-- tree parked at a budget go on when no budget above them is past any more. Returns how many
-- runs it woke.
CREATE FUNCTION cairn.set_budget(p_run_id uuid, p_usd numeric) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    r       cairn.runs;
    v_spent numeric;
    v_woken integer;
BEGIN
    -- Exclusive against the budget checks of the tree's steps (cairn.park_over_budget), so a
    -- run that parks does so before this looks for runs to wake.
    PERFORM pg_advisory_xact_lock(cairn.budget_lock_key(p_run_id));
    v_spent := cairn.tree_usd(p_run_id);
    SELECT * INTO r FROM cairn.runs WHERE id = p_run_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'run % does not exist', p_run_id USING ERRCODE = 'CN004';
    END IF;
    IF p_usd IS NOT NULL AND p_usd < v_spent THEN
        RAISE EXCEPTION 'a budget of $% for run "%" is below what it has already spent ($%)',
            p_usd, r.name, round(v_spent, 4)
            USING ERRCODE = 'CN005', HINT = 'give a budget above what was spent';
    END IF;
    UPDATE cairn.runs SET budget_usd = p_usd, updated_at = now() WHERE id = p_run_id;
    WITH RECURSIVE tree (id) AS (
        SELECT p_run_id
        UNION ALL
        SELECT c.id FROM cairn.runs c JOIN tree t ON c.parent_id = t.id),
    woken AS (
        UPDATE cairn.runs w SET state = 'pending', updated_at = now()
        FROM tree
        WHERE w.id = tree.id AND w.state = 'waiting' AND w.waiting_for ? 'budget'
          AND NOT EXISTS (SELECT 1 FROM cairn.exceeded_budget(w.id))
        RETURNING w.id)
    SELECT count(*) INTO v_woken FROM woken;
    RETURN v_woken;
END $$;

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
-- checkpoints it reused (artifacts shared by reference). Sealed (sensitive) checkpoints are not copied: the fork runs those
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

-- Retention. Deletes runs (with their children, steps, attempts and waits) that finished
-- before p_runs_before, and events emitted before p_events_before that no wait is waiting for;
-- NULL keeps that kind. Runs that a FlowRun mirrors go with their FlowRun (its TTL), not here:
-- the operator passes NULL for runs. Returns how many of each were deleted.
CREATE FUNCTION cairn.gc(p_runs_before timestamptz, p_events_before timestamptz,
                         p_namespace text DEFAULT NULL)
RETURNS TABLE (runs integer, events integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_runs   integer := 0;
    v_events integer := 0;
BEGIN
    IF p_runs_before IS NOT NULL THEN
        WITH gone AS (
            DELETE FROM cairn.runs r
            WHERE r.parent_id IS NULL AND r.finished_at < p_runs_before
              AND (p_namespace IS NULL OR r.namespace = p_namespace)
            RETURNING 1)
        SELECT count(*) INTO v_runs FROM gone;
    END IF;
    IF p_events_before IS NOT NULL THEN
        WITH gone AS (
            DELETE FROM cairn.events e
            WHERE e.emitted_at < p_events_before
              AND (p_namespace IS NULL OR e.namespace = p_namespace)
              AND NOT EXISTS (SELECT 1 FROM cairn.waits w
                              WHERE w.kind = 'event' AND w.namespace = e.namespace
                                AND w.event_name = e.name)
            RETURNING 1)
        SELECT count(*) INTO v_events FROM gone;
    END IF;
    RETURN QUERY SELECT v_runs, v_events;
END $$;

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

-- Deletes an event sent to the namespace (its FlowEvent was deleted): a later wait for that
-- name waits for a new emit. Returns whether there was one. (One sent to a run goes with it.)
CREATE FUNCTION cairn.delete_event(p_namespace text, p_name text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM cairn.lock_event(p_namespace, p_name);
    DELETE FROM cairn.events WHERE namespace = p_namespace AND name = p_name AND for_run IS NULL;
    RETURN FOUND;
END $$;

-- Returns (login, password) of the runner login, creating it on first use.
CREATE FUNCTION cairn.ensure_runner_login() RETURNS TABLE (login text, password text)
LANGUAGE plpgsql AS $$
DECLARE
    v_login    text := left(current_database(), 40) || '_runner_login';
    v_password text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('cairn.runner_login', 0));
    SELECT l.password INTO v_password FROM cairn.runner_login l WHERE l.login = v_login;
    IF v_password IS NULL
       OR NOT EXISTS (SELECT FROM pg_roles WHERE rolname = v_login) THEN
        v_password := replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '');
        IF EXISTS (SELECT FROM pg_roles WHERE rolname = v_login) THEN
            EXECUTE format('ALTER ROLE %I LOGIN PASSWORD %L', v_login, v_password);
            EXECUTE format('GRANT cairn_runner TO %I', v_login);
        ELSE
            EXECUTE format('CREATE ROLE %I LOGIN PASSWORD %L IN ROLE cairn_runner',
                           v_login, v_password);
        END IF;
        INSERT INTO cairn.runner_login VALUES (v_login, v_password)
        ON CONFLICT ON CONSTRAINT runner_login_pkey DO UPDATE SET password = EXCLUDED.password;
    END IF;
    RETURN QUERY SELECT v_login, v_password;
END $$;


-- Records the binary of the run tree rooted at p_root_id (`cairn dev`), unless it has one
-- already (the first pin wins: a tree never changes binary). Returns the tree's binary.
CREATE FUNCTION cairn.pin_binary(p_root_id uuid, p_sha256 text, p_built_from text)
RETURNS TABLE (sha256 text, built_from text)
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM cairn.runs WHERE id = p_root_id AND parent_id IS NOT NULL) THEN
        RAISE EXCEPTION 'run % is a child run: its tree''s root holds the binary', p_root_id
            USING ERRCODE = 'CN005';
    END IF;
    INSERT INTO cairn.run_binaries (root_id, sha256, built_from)
    VALUES (p_root_id, p_sha256, p_built_from)
    ON CONFLICT (root_id) DO NOTHING;
    RETURN QUERY SELECT b.sha256, b.built_from FROM cairn.run_binaries b WHERE b.root_id = p_root_id;
END $$;


-- The run's span context: the one it has, else `p_new` (for a child, in its parent's trace).
-- NULL when the run does not exist.
CREATE FUNCTION cairn.run_traceparent(p_run_id uuid, p_new text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_traceparent text;
BEGIN
    SELECT traceparent INTO v_traceparent FROM cairn.runs WHERE id = p_run_id;
    IF v_traceparent IS NULL THEN
        UPDATE cairn.runs r
        SET traceparent = coalesce(
                (SELECT '00-' || split_part(p.traceparent, '-', 2) || '-'
                        || split_part(p_new, '-', 3) || '-01'
                 FROM cairn.runs p WHERE p.id = r.parent_id AND p.traceparent IS NOT NULL),
                p_new)
        WHERE r.id = p_run_id AND r.traceparent IS NULL
        RETURNING r.traceparent INTO v_traceparent;
        -- Another launcher made it meanwhile: its one stands.
        IF v_traceparent IS NULL THEN
            SELECT traceparent INTO v_traceparent FROM cairn.runs WHERE id = p_run_id;
        END IF;
    END IF;
    RETURN v_traceparent;
END
$$;

-- Finished runs of the namespaces named (NULL: all) whose spans are still to be exported,
-- oldest first, with what those spans say: the run's parent span, its own cost and tokens (a
-- fork's reused steps were paid by its source), its attempts, and its waits (wait, sleep and
-- join steps, which span attempts). A run retried since its spans were exported has finished
-- again: its span goes again (now with its new end), and the attempts and waits after its
-- previous finish.
CREATE FUNCTION cairn.traces_to_export(p_namespaces text[], p_limit integer)
RETURNS TABLE (run_id uuid, namespace text, name text, flow text, state text,
               created_at timestamptz, finished_at timestamptz, traceparent text,
               parent_traceparent text, error jsonb, usd float8, tokens_in bigint,
               tokens_out bigint, attempts jsonb, waits jsonb)
LANGUAGE sql STABLE AS $$
    SELECT r.id, r.namespace, r.name, r.flow, r.state, r.created_at, r.finished_at,
           r.traceparent, p.traceparent, r.error,
           (SELECT sum(s.usd)::float8 FROM cairn.steps s WHERE s.run_id = r.id AND s.origin IS NULL),
           (SELECT sum(s.tokens_in)::bigint FROM cairn.steps s
            WHERE s.run_id = r.id AND s.origin IS NULL),
           (SELECT sum(s.tokens_out)::bigint FROM cairn.steps s
            WHERE s.run_id = r.id AND s.origin IS NULL),
           coalesce((SELECT jsonb_agg(jsonb_build_object(
                        'attempt', a.attempt, 'started_at', a.started_at, 'ended_at', a.ended_at,
                        'outcome', a.outcome, 'detail', a.detail) ORDER BY a.attempt)
                     FROM cairn.attempts a
                     WHERE a.run_id = r.id
                       AND (r.trace_exported_finish IS NULL OR a.started_at > r.trace_exported_finish)),
                    '[]'),
           coalesce((SELECT jsonb_agg(jsonb_build_object(
                        'key', s.key, 'kind', s.kind, 'started_at', s.started_at,
                        'completed_at', s.completed_at) ORDER BY s.started_at)
                     FROM cairn.steps s
                     WHERE s.run_id = r.id AND s.kind IN ('wait', 'sleep', 'join')
                       AND s.origin IS NULL
                       AND (r.trace_exported_finish IS NULL OR s.completed_at > r.trace_exported_finish)),
                    '[]')
    FROM cairn.runs r LEFT JOIN cairn.runs p ON p.id = r.parent_id
    WHERE r.traceparent IS NOT NULL AND r.finished_at IS NOT NULL
      AND (r.trace_exported_finish IS NULL OR r.trace_exported_finish < r.finished_at)
      AND (p_namespaces IS NULL OR r.namespace = ANY (p_namespaces))
    ORDER BY r.finished_at
    LIMIT p_limit
$$;

-- Records that the spans of these runs were exported, as of the finish they were read at: a
-- run retried meanwhile finishes again later, and goes again then.
CREATE FUNCTION cairn.traces_exported(p_run_ids uuid[], p_finished_at timestamptz[])
RETURNS void
LANGUAGE sql AS $$
    UPDATE cairn.runs r SET trace_exported_finish = e.finished_at
    FROM unnest(p_run_ids, p_finished_at) AS e (run_id, finished_at)
    WHERE r.id = e.run_id
$$;

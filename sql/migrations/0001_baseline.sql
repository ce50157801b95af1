-- Migration 0001, the baseline: the whole engine as of the first release, squashed from the
-- pre-release migrations: sql/schema/*.sql at that point, in order. Frozen: a later change
-- is a new migration plus the same change in sql/schema/, and tests/schema.rs checks that
-- the two build the same schema.

CREATE SCHEMA IF NOT EXISTS cairn;  -- the migrator creates it first, for its own table

-- Flow processes log in as a member of role `cairn_runner`, which may call the runner
-- protocol's functions and nothing else: no table, no function of schema `cairn`. The
-- launchers (the operator, `cairn dev`) keep the owner role. Roles are per server, so another
-- database on the same server may already have created it.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cairn_runner') THEN
        CREATE ROLE cairn_runner NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- another database on this server created it at the same moment
END $$;

-- Functions are executable by PUBLIC unless revoked, now and for later migrations.
ALTER DEFAULT PRIVILEGES IN SCHEMA cairn REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;

----------------------------------------------------------------------------------------------
-- Tables

CREATE TABLE cairn.runs (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    namespace        text NOT NULL,
    name             text NOT NULL,
    flow             text NOT NULL,
    input            jsonb NOT NULL,
    parent_id        uuid REFERENCES cairn.runs (id) ON DELETE CASCADE,
    root_id          uuid NOT NULL,
    state            text NOT NULL DEFAULT 'pending' CHECK (state IN (
                         'pending', 'running', 'waiting', 'sleeping', 'retrying',
                         'succeeded', 'failed', 'cancelled')),
    -- Launch counter: every process started for this run gets the next number (fencing token).
    attempt          integer NOT NULL DEFAULT 0,
    -- Crashed launches so far; the retry policy limits these, not suspensions.
    crashes          integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
    retry_backoff_ms bigint NOT NULL DEFAULT 1000 CHECK (retry_backoff_ms >= 0),
    -- When a sleeping, retrying or time-limited waiting run becomes runnable again.
    wake_at          timestamptz,
    -- A small description of the current wait, for people and tools (the waits table is the
    -- truth). One of: {"event", "question"?, "schema"?, "deadline"?}, {"children",
    -- "unfinished"}, {"sleep", "until"}, {"retry_after"} (cairn-engine's `Wait` parses it).
    waiting_for      jsonb,
    cancel_requested boolean NOT NULL DEFAULT false,
    result           jsonb,
    error            jsonb,
    -- SHA-256 of the current attempt's token (cairn.claim); the token itself is never stored.
    token_hash       bytea,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    UNIQUE (namespace, name)
);
CREATE INDEX runs_root_idx ON cairn.runs (root_id);
CREATE INDEX runs_parent_idx ON cairn.runs (parent_id);
CREATE INDEX runs_wake_idx ON cairn.runs (wake_at) WHERE wake_at IS NOT NULL;
-- The running budget counts these (cairn.claim).
CREATE INDEX runs_running_idx ON cairn.runs (namespace) WHERE state = 'running';

-- One row per launched process.
CREATE TABLE cairn.attempts (
    run_id     uuid NOT NULL REFERENCES cairn.runs (id) ON DELETE CASCADE,
    attempt    integer NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    ended_at   timestamptz,
    outcome    text CHECK (outcome IN ('completed', 'suspended', 'failed', 'crashed', 'cancelled')),
    detail     text,
    PRIMARY KEY (run_id, attempt)
);

-- steps.kind. A domain, not a CHECK on the table: a domain's check is prepared once per
-- session (type cache), a table's IN list is deserialised again for every INSERT, which was
-- about a tenth of the per-step cost. Readers see the column as text.
CREATE DOMAIN cairn.step_kind AS text
    CONSTRAINT step_kind_check CHECK (VALUE IN ('step', 'wait', 'sleep', 'spawn', 'join', 'emit'));

-- Checkpoints: the result of every completed step, keyed by name plus occurrence (`plan`, `plan#2`).
-- No foreign key: the insert is the hot path (one per step), a foreign key check would add a
-- trigger and a row lock on the run to every step, and fence() has just proved the run exists.
-- runs_delete_steps removes a run's steps with it.
CREATE TABLE cairn.steps (
    run_id       uuid NOT NULL,
    key          text NOT NULL,
    kind         cairn.step_kind NOT NULL,
    result       jsonb NOT NULL,
    attempt      integer NOT NULL,
    tries        integer NOT NULL DEFAULT 1,
    started_at   timestamptz NOT NULL,
    completed_at timestamptz NOT NULL DEFAULT now(),
    usd          numeric,
    tokens_in    bigint,
    tokens_out   bigint,
    model        text,
    usage_meta   jsonb,
    PRIMARY KEY (run_id, key)
);

-- What a run is blocked on. A row exists from the moment a wait is first reached until it is
-- checkpointed; its deadline is computed once, so every replay sees the same one.
CREATE TABLE cairn.waits (
    run_id     uuid NOT NULL REFERENCES cairn.runs (id) ON DELETE CASCADE,
    step_key   text NOT NULL,
    kind       text NOT NULL CHECK (kind IN ('event', 'sleep', 'children')),
    namespace  text NOT NULL,
    event_name text,
    question   text,
    schema     jsonb,
    children   uuid[],
    deadline   timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, step_key)
);
CREATE INDEX waits_event_idx ON cairn.waits (namespace, event_name) WHERE kind = 'event';
CREATE INDEX waits_children_idx ON cairn.waits USING gin (children) WHERE kind = 'children';

-- Named, durable, write-once events.
CREATE TABLE cairn.events (
    namespace   text NOT NULL,
    name        text NOT NULL,
    payload     jsonb NOT NULL,
    emitted_at  timestamptz NOT NULL DEFAULT now(),
    emitted_by  uuid REFERENCES cairn.runs (id) ON DELETE SET NULL,
    PRIMARY KEY (namespace, name)
);

-- The login flow processes use: one per database, in role cairn_runner, created by the
-- launcher (which needs CREATEROLE once) with a random password kept here for it.
CREATE TABLE cairn.runner_login (
    login    text PRIMARY KEY,
    password text NOT NULL
);

----------------------------------------------------------------------------------------------
-- Helpers

-- What this schema serves. Launchers and SDKs check it before they work with a database:
-- * launcher_contract: what the operator and `cairn dev` rely on (tables, launcher functions).
--   A migration raises it only when launchers built before it can no longer work here; an
--   operator of the previous release must keep starting, so that `helm rollback` works.
-- * runner_oldest .. runner_newest: the runner protocols served (schemas cairn_runner_v<N>).
CREATE FUNCTION cairn.engine_info()
RETURNS TABLE (launcher_contract integer, runner_oldest integer, runner_newest integer)
LANGUAGE sql STABLE AS $$ SELECT 1, 1, 1 $$;

CREATE FUNCTION cairn.is_terminal(p_state text) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$ SELECT p_state IN ('succeeded', 'failed', 'cancelled') $$;

-- STABLE like convert_to, so the planner inlines it wherever it is used.
CREATE FUNCTION cairn.hash_token(p_token text) RETURNS bytea
LANGUAGE sql STABLE AS $$ SELECT sha256(convert_to(p_token, 'UTF8')) $$;

-- A run's attempt lock: every write of a running attempt holds it shared (in fence); taking a
-- run away from its attempt (start_attempt, record_crash) holds it exclusively. So a superseded
-- attempt can never slip a write in after its successor started. Advisory locks live in memory:
-- unlike a row lock, they add no tuple write to the per-step round trip.
CREATE FUNCTION cairn.attempt_lock_key(p_run_id uuid) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$ SELECT hashtextextended(p_run_id::text, 1) $$;

-- Rejects writes from anything but the current attempt of a running run.
CREATE FUNCTION cairn.fence(p_run_id uuid, p_attempt integer) RETURNS cairn.runs
LANGUAGE plpgsql AS $$
DECLARE
    r cairn.runs;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(cairn.attempt_lock_key(p_run_id));
    SELECT * INTO r FROM cairn.runs WHERE id = p_run_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'run % does not exist', p_run_id USING ERRCODE = 'CN004';
    END IF;
    IF r.attempt <> p_attempt OR r.state <> 'running' THEN
        RAISE EXCEPTION 'attempt % of run "%" is no longer current (run is % at attempt %)',
            p_attempt, r.name, r.state, r.attempt
            USING ERRCODE = 'CN001',
                  HINT = 'this process was superseded; it must stop without writing';
    END IF;
    RETURN r;
END $$;

-- Refuses a call that does not carry the token of the run's current attempt, the same way a
-- superseded attempt is refused (CN001): the process must stop without writing.
CREATE FUNCTION cairn.authorize(p_token text, p_run_id uuid) RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
    PERFORM 1 FROM cairn.runs
    WHERE id = p_run_id AND token_hash = cairn.hash_token(p_token);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'the token of this process is no longer current for run % (superseded, or issued for another run)', p_run_id
            USING ERRCODE = 'CN001',
                  HINT = 'a flow process may only touch the run and attempt it was launched for';
    END IF;
END $$;

-- Serialises emitting an event with registering a wait for it, so no wake-up is lost.
CREATE FUNCTION cairn.lock_event(p_namespace text, p_name text) RETURNS void
LANGUAGE sql AS $$
    SELECT pg_advisory_xact_lock(hashtextextended(p_namespace || '/' || p_name, 0))
$$;

CREATE FUNCTION cairn.end_attempt(p_run_id uuid, p_attempt integer, p_outcome text, p_detail text)
RETURNS void LANGUAGE sql AS $$
    UPDATE cairn.attempts SET ended_at = now(), outcome = p_outcome, detail = p_detail
    WHERE run_id = p_run_id AND attempt = p_attempt AND ended_at IS NULL
$$;

CREATE FUNCTION cairn.checkpoint(p_run_id uuid, p_attempt integer, p_key text, p_kind text,
                                 p_result jsonb, p_started_at timestamptz)
RETURNS void LANGUAGE sql AS $$
    INSERT INTO cairn.steps (run_id, key, kind, result, attempt, started_at)
    VALUES (p_run_id, p_key, p_kind, p_result, p_attempt, coalesce(p_started_at, now()))
    ON CONFLICT (run_id, key) DO NOTHING
$$;

-- Parks a running run: the process exits after this and a supervisor relaunches it on wake.
CREATE FUNCTION cairn.suspend(p_run_id uuid, p_attempt integer, p_state text,
                              p_wake_at timestamptz, p_waiting_for jsonb)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE cairn.runs
    SET state = p_state, wake_at = p_wake_at, waiting_for = p_waiting_for, updated_at = now()
    WHERE id = p_run_id;
    PERFORM cairn.end_attempt(p_run_id, p_attempt, 'suspended', p_state);
END $$;

CREATE FUNCTION cairn.finish(p_run_id uuid, p_state text, p_result jsonb, p_error jsonb)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE cairn.runs
    SET state = p_state, result = p_result, error = p_error, finished_at = now(),
        updated_at = now(), wake_at = NULL, waiting_for = NULL
    WHERE id = p_run_id;
    DELETE FROM cairn.waits WHERE run_id = p_run_id;
END $$;

CREATE FUNCTION cairn.delete_steps() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM cairn.steps WHERE run_id = OLD.id;
    RETURN OLD;
END $$;

CREATE TRIGGER runs_delete_steps BEFORE DELETE ON cairn.runs
FOR EACH ROW EXECUTE FUNCTION cairn.delete_steps();

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
-- Returns true when cancellation was requested: the run is then cancelled here, at the step
-- boundary, and the process must stop. (The runner's usual path is the one-INSERT fast path in
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
    END IF;
    RETURN r.cancel_requested;
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

-- Reached by a flow at `wait_for_event`. The outcome is checkpointed, including a timeout, so
-- replays never diverge. An event counts when it was emitted no later than the deadline.
CREATE FUNCTION cairn.await_event(p_run_id uuid, p_attempt integer, p_key text, p_event text,
                                  p_timeout_ms bigint, p_question text, p_schema jsonb)
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
    INSERT INTO cairn.waits (run_id, step_key, kind, namespace, event_name, question, schema, deadline)
    VALUES (p_run_id, p_key, 'event', r.namespace, p_event, p_question, p_schema,
            now() + p_timeout_ms * interval '1 millisecond')
    ON CONFLICT (run_id, step_key) DO NOTHING;
    SELECT * INTO w FROM cairn.waits WHERE run_id = p_run_id AND step_key = p_key;
    SELECT * INTO e FROM cairn.events WHERE namespace = r.namespace AND name = p_event;

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

-- The waits an emitted payload must satisfy. Call it in the emitting transaction, before
-- emit_event: it takes the event's lock, so no new wait can appear between check and emit.
CREATE FUNCTION cairn.event_waiters(p_namespace text, p_name text)
RETURNS TABLE (run_name text, question text, schema jsonb)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM cairn.lock_event(p_namespace, p_name);
    RETURN QUERY
    SELECT r.name, w.question, w.schema
    FROM cairn.waits w JOIN cairn.runs r ON r.id = w.run_id
    WHERE w.kind = 'event' AND w.namespace = p_namespace AND w.event_name = p_name
    ORDER BY r.name;
END $$;

-- Emits an event (first write wins). Emitting the same payload again is a no-op; another
-- payload is a conflict. Wakes every run waiting for it whose deadline has not passed.
CREATE FUNCTION cairn.emit_event(p_namespace text, p_name text, p_payload jsonb,
                                 p_emitted_by uuid DEFAULT NULL)
RETURNS TABLE (duplicate boolean, woken integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_existing jsonb;
    v_woken    integer;
BEGIN
    PERFORM cairn.lock_event(p_namespace, p_name);
    INSERT INTO cairn.events (namespace, name, payload, emitted_by)
    VALUES (p_namespace, p_name, p_payload, p_emitted_by)
    ON CONFLICT (namespace, name) DO NOTHING;
    IF NOT FOUND THEN
        SELECT payload INTO v_existing FROM cairn.events WHERE namespace = p_namespace AND name = p_name;
        IF v_existing = p_payload THEN
            RETURN QUERY SELECT true, 0;
            RETURN;
        END IF;
        RAISE EXCEPTION 'event "%" was already emitted in namespace "%" with a different payload',
            p_name, p_namespace
            USING ERRCODE = 'CN002',
                  HINT = 'events are write-once (the first emit wins); use a new event name to send another value';
    END IF;
    WITH woken AS (
        UPDATE cairn.runs r SET state = 'pending', wake_at = NULL, updated_at = now()
        FROM cairn.waits w
        WHERE w.run_id = r.id AND w.kind = 'event' AND w.namespace = p_namespace
          AND w.event_name = p_name AND (w.deadline IS NULL OR w.deadline >= now())
          AND r.state = 'waiting'
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
    PERFORM cairn.authorize(p_token, p_run_id);
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
-- already stored.
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
        RETURN false;
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

CREATE FUNCTION cairn_runner_v1.await_event(p_token text, p_run_id uuid, p_attempt integer,
    p_key text, p_event text, p_timeout_ms bigint, p_question text, p_schema jsonb)
RETURNS TABLE (outcome text, payload jsonb, deadline timestamptz)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT cairn.authorize(p_token, p_run_id);
    SELECT * FROM cairn.await_event(p_run_id, p_attempt, p_key, p_event, p_timeout_ms,
                                    p_question, p_schema);
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

----------------------------------------------------------------------------------------------
-- The launchers' functions (the operator, `cairn dev`, the CLI), as the owner role.

-- Idempotent by (namespace, name): the same request returns the existing run; a different
-- flow or input under the same name is a conflict.
CREATE FUNCTION cairn.create_run(p_namespace text, p_name text, p_flow text, p_input jsonb,
                                 p_max_attempts integer, p_retry_backoff_ms bigint,
                                 p_parent_id uuid DEFAULT NULL)
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
                            max_attempts, retry_backoff_ms)
    VALUES (v_id, p_namespace, p_name, p_flow, p_input, p_parent_id, coalesce(v_root, v_id),
            p_max_attempts, p_retry_backoff_ms)
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

-- Claims the next attempt of a pending run, like start_attempt, if fewer than `p_max_running`
-- runs are running in all and fewer than `p_max_in_namespace` in the run's namespace (NULL: no
-- cap). Returns the attempt, or NULL and why the run must wait for a slot.
CREATE FUNCTION cairn.start_attempt_within(p_run_id uuid, p_max_running integer,
                                           p_max_in_namespace integer)
RETURNS TABLE (attempt integer, refused text)
LANGUAGE plpgsql AS $$
DECLARE
    v_namespace text;
    v_state     text;
    v_running   bigint;
BEGIN
    -- One claim at a time, so two launchers never both take the last slot.
    PERFORM pg_advisory_xact_lock(hashtextextended('cairn.running_budget', 0));
    SELECT namespace, state INTO v_namespace, v_state FROM cairn.runs WHERE id = p_run_id;
    IF v_state IS DISTINCT FROM 'pending' THEN
        RETURN QUERY SELECT NULL::integer, NULL::text;   -- claimed by someone else, or over
        RETURN;
    END IF;
    IF p_max_running IS NOT NULL THEN
        SELECT count(*) INTO v_running FROM cairn.runs WHERE state = 'running';
        IF v_running >= p_max_running THEN
            RETURN QUERY SELECT NULL::integer, format(
                'waiting for a slot: %s of %s flow pods are running', v_running, p_max_running);
            RETURN;
        END IF;
    END IF;
    IF p_max_in_namespace IS NOT NULL THEN
        SELECT count(*) INTO v_running FROM cairn.runs
        WHERE state = 'running' AND namespace = v_namespace;
        IF v_running >= p_max_in_namespace THEN
            RETURN QUERY SELECT NULL::integer, format(
                'waiting for a slot: %s of %s flow pods are running in namespace "%s"',
                v_running, p_max_in_namespace, v_namespace);
            RETURN;
        END IF;
    END IF;
    RETURN QUERY SELECT cairn.start_attempt(p_run_id), NULL::text;
END $$;

-- Claims the next attempt of a pending run within the running budget (see
-- start_attempt_within) and issues the attempt's token, returned once and stored hashed.
CREATE FUNCTION cairn.claim(p_run_id uuid, p_max_running integer, p_max_in_namespace integer)
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
        -- 244 random bits (gen_random_uuid draws from the strong random source).
        v_token := replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '');
        UPDATE cairn.runs SET token_hash = cairn.hash_token(v_token) WHERE id = p_run_id;
    END IF;
    RETURN QUERY SELECT v_attempt, v_token, v_refused;
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
    UPDATE cairn.runs SET crashes = crashes + 1 WHERE id = p_run_id;
    IF r.cancel_requested THEN
        PERFORM cairn.finish(p_run_id, 'cancelled', NULL, '{"message": "cancelled"}'::jsonb);
    ELSIF p_retry_delay_ms IS NOT NULL THEN
        UPDATE cairn.runs
        SET state = 'retrying', wake_at = now() + p_retry_delay_ms * interval '1 millisecond',
            waiting_for = jsonb_build_object('retry_after', p_reason), updated_at = now()
        WHERE id = p_run_id;
    ELSE
        PERFORM cairn.finish(p_run_id, 'failed', NULL, jsonb_build_object(
            'message', format('gave up after %s crashed attempts; last: %s', r.crashes + 1, p_reason),
            'kind', 'crashed'));
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
        UPDATE cairn.runs SET cancel_requested = true WHERE id = p_run_id;
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
        cancel_requested = false, updated_at = now()
    WHERE id = p_run_id;
    RETURN 'pending';
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

----------------------------------------------------------------------------------------------
-- Triggers: wake a joining parent, and broadcast every state change.

-- When a child finishes and it was the last unfinished child a parent's join waits for, the
-- parent becomes runnable. Locking the parent row orders this against join_children, which
-- locks it before counting unfinished children.
CREATE FUNCTION cairn.on_run_finished() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM cairn.runs WHERE id = NEW.parent_id FOR UPDATE;
    UPDATE cairn.runs p SET state = 'pending', updated_at = now()
    WHERE p.id = NEW.parent_id AND p.state = 'waiting'
      AND EXISTS (
          SELECT 1 FROM cairn.waits w
          WHERE w.run_id = p.id AND w.kind = 'children' AND NEW.id = ANY (w.children)
            AND NOT EXISTS (SELECT 1 FROM cairn.runs c
                            WHERE c.id = ANY (w.children) AND NOT cairn.is_terminal(c.state)));
    RETURN NULL;
END $$;

CREATE TRIGGER runs_finished AFTER UPDATE OF state ON cairn.runs
FOR EACH ROW
WHEN (NEW.parent_id IS NOT NULL AND cairn.is_terminal(NEW.state) AND NOT cairn.is_terminal(OLD.state))
EXECUTE FUNCTION cairn.on_run_finished();

-- Every change of a run's state, with the state it left (so a launcher knows when a slot of
-- the running budget frees).
CREATE FUNCTION cairn.notify_run() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('cairn_runs', json_build_object(
        'id', NEW.id, 'root_id', NEW.root_id, 'namespace', NEW.namespace, 'name', NEW.name,
        'state', NEW.state, 'attempt', NEW.attempt,
        'from', CASE WHEN TG_OP = 'UPDATE' THEN OLD.state END)::text);
    RETURN NULL;
END $$;

CREATE TRIGGER runs_notify AFTER INSERT OR UPDATE OF state ON cairn.runs
FOR EACH ROW
WHEN (pg_trigger_depth() < 8)
EXECUTE FUNCTION cairn.notify_run();

----------------------------------------------------------------------------------------------
-- Privileges: the runner role executes the runner protocol's functions and nothing else.

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA cairn, cairn_runner, cairn_runner_v1 FROM PUBLIC;
GRANT USAGE ON SCHEMA cairn_runner, cairn_runner_v1 TO cairn_runner;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA cairn_runner, cairn_runner_v1 TO cairn_runner;

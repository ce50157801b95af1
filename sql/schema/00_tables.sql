-- Cairn's durable engine: every rule about runs, steps, waits and events lives here, so the
-- SDKs, `cairn dev` and the operator stay thin. The files of sql/schema/, in the order of
-- their names, are the current schema, each read top to bottom: roles and tables (this file),
-- helpers, the rules behind a flow's calls, the runner protocol (what flow processes may
-- call), the launchers' functions, then the triggers that wake runs and broadcast changes.
--
-- They are the readable source. Databases are built by the migrations in sql/migrations/
-- (0001 is these files as of the baseline; each later migration moves a database from one
-- version to the next). Change both together: the schema test (tests/schema.rs) builds a
-- database each way and fails on any difference between their dumps.
--
-- Conventions
-- * Every write made on behalf of a running flow passes (run_id, attempt) and starts with
--   cairn.fence(), which rejects a superseded attempt (SQLSTATE CN001).
-- * Times come from the database clock (now()), never from a client.
-- * A run's `state` changes only here; each change is broadcast with NOTIFY on `cairn_runs`.
--
-- Error codes raised (class CN, "Cairn"):
--   CN001 fenced: the attempt is not the run's current running attempt, or the token is not its
--   CN002 event conflict: the event exists with a different payload
--   CN003 run conflict: a run with that name exists with another flow or input
--   CN004 not found
--   CN005 invalid request
--
-- Compatibility (see README, "Upgrading"): a run's pods keep the image, and so the SDK, they
-- started with. Flow processes call only the functions of a versioned schema,
-- `cairn_runner_v<N>` (the runner protocol N), after `cairn_runner.handshake`, whose signature
-- never changes. The engine serves the current and the previous protocol (cairn.engine_info).

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

-- Functions are executable by PUBLIC unless revoked, and a per-schema ALTER DEFAULT PRIVILEGES
-- cannot revoke that: the last section revokes it from every function, and every migration
-- that adds functions does the same at its end.

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
    -- When the run was asked for: its FlowRun's creationTimestamp, for runs the operator
    -- creates. Events sent to the whole namespace before it do not reach it (event_reaches).
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    UNIQUE (namespace, name),
    -- The FlowRun (its uid) the run belongs to, for runs the operator made.
    flowrun_uid      uuid,
    -- What the run's tree (its steps and its children's) may spend, in US dollars; NULL: no
    -- limit. Checked when a step with a cost completes (cairn.park_over_budget).
    budget_usd       numeric CHECK (budget_usd >= 0),
    -- For a fork: {"run": name, "run_id": id, "step": key, "reused": n, "set": n}
    -- (cairn.fork_run).
    fork_of          jsonb,
    -- The run's span in its OpenTelemetry trace (W3C traceparent); NULL until a launcher that
    -- traces launches it (cairn.run_traceparent).
    traceparent      text CHECK (traceparent ~ '^00-[0-9a-f]{32}-[0-9a-f]{16}-01$'),
    -- The finish (finished_at) whose spans were exported (cairn.traces_exported); a retried
    -- run finishes again.
    trace_exported_finish timestamptz,
    -- The concurrency group (its Flow) and key whose limits the run is held to (NULL: none).
    concurrency_group text,
    concurrency_key  text,
    -- When a claim was first refused for its group's limits, and when one was granted: from
    -- then until it finishes, the run holds a place in its group (cairn.start_attempt_within).
    queued_at        timestamptz,
    admitted_at      timestamptz
);
CREATE INDEX runs_root_idx ON cairn.runs (root_id);
CREATE INDEX runs_parent_idx ON cairn.runs (parent_id);
CREATE INDEX runs_wake_idx ON cairn.runs (wake_at) WHERE wake_at IS NOT NULL;
-- The running budget counts these (cairn.claim).
CREATE INDEX runs_running_idx ON cairn.runs (namespace) WHERE state = 'running';
-- Retention deletes finished runs by age (cairn.gc).
CREATE INDEX runs_finished_idx ON cairn.runs (finished_at)
    WHERE parent_id IS NULL AND finished_at IS NOT NULL;
CREATE UNIQUE INDEX runs_flowrun_uid_key ON cairn.runs (flowrun_uid) WHERE flowrun_uid IS NOT NULL;
-- Concurrency limits count a group's unfinished runs (cairn.concurrency_refusal).
CREATE INDEX runs_concurrency_idx ON cairn.runs (namespace, concurrency_group, concurrency_key)
    WHERE concurrency_group IS NOT NULL AND state NOT IN ('succeeded', 'failed', 'cancelled');
-- The runs queued for a place, in the order they are admitted.
CREATE INDEX runs_queued_idx ON cairn.runs (namespace, concurrency_group, created_at, id)
    WHERE queued_at IS NOT NULL AND admitted_at IS NULL AND state = 'pending';
-- The finished runs whose spans are still to be exported (cairn.traces_to_export).
CREATE INDEX runs_trace_export_idx ON cairn.runs (finished_at)
    WHERE traceparent IS NOT NULL AND finished_at IS NOT NULL
      AND (trace_exported_finish IS NULL OR trace_exported_finish < finished_at);

-- One row per launched process.
CREATE TABLE cairn.attempts (
    run_id     uuid NOT NULL REFERENCES cairn.runs (id) ON DELETE CASCADE,
    attempt    integer NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    ended_at   timestamptz,
    outcome    text CHECK (outcome IN ('completed', 'suspended', 'failed', 'crashed', 'cancelled')),
    detail     text,
    -- When its process first reached the database (the handshake). An attempt without it
    -- never started and may be launched again under its number (cairn.reissue).
    connected_at timestamptz,
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
    -- Where the checkpoint came from, when not from this run's own execution: `reused`
    -- (copied from the run it was forked from) or `set` (given by whoever forked it). Neither
    -- was paid by this run, so its cost counts nowhere (cairn.tree_usd, the totals).
    origin       text CHECK (origin IN ('reused', 'set')),
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
    -- The flow asked to take an event sent to the namespace before the run was created.
    include_earlier boolean NOT NULL DEFAULT false,
    PRIMARY KEY (run_id, step_key)
);
CREATE INDEX waits_event_idx ON cairn.waits (namespace, event_name) WHERE kind = 'event';
CREATE INDEX waits_children_idx ON cairn.waits USING gin (children) WHERE kind = 'children';

-- Named, durable, write-once events. An event is sent either to its whole namespace (for_run
-- NULL; write-once per namespace and name) or to one run (write-once per run and name), as
-- `kubectl cairn approve` does so that a later run reusing the name is not answered by it.
-- Which runs an event reaches: cairn.event_reaches.
CREATE TABLE cairn.events (
    namespace   text NOT NULL,
    name        text NOT NULL,
    payload     jsonb NOT NULL,
    emitted_at  timestamptz NOT NULL DEFAULT now(),
    emitted_by  uuid REFERENCES cairn.runs (id) ON DELETE SET NULL,
    for_run     uuid REFERENCES cairn.runs (id) ON DELETE CASCADE
);
CREATE UNIQUE INDEX events_broadcast_key ON cairn.events (namespace, name) WHERE for_run IS NULL;
CREATE UNIQUE INDEX events_addressed_key ON cairn.events (for_run, name) WHERE for_run IS NOT NULL;
CREATE INDEX events_emitted_idx ON cairn.events (emitted_at);

-- The login flow processes use: one per database, in role cairn_runner, created by the
-- launcher (which needs CREATEROLE once) with a random password kept here for it.
CREATE TABLE cairn.runner_login (
    login    text PRIMARY KEY,
    password text NOT NULL
);


-- The flow binary of each local run tree (`cairn dev`): the SHA-256 of the copy in its
-- content-addressed store, which every process of the tree runs, whatever is rebuilt later.
-- Runs the operator launches have none: their FlowRun pins an image digest.
CREATE TABLE cairn.run_binaries (
    root_id    uuid PRIMARY KEY REFERENCES cairn.runs (id) ON DELETE CASCADE,
    sha256     text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    -- The path it was copied from, for messages.
    built_from text NOT NULL,
    pinned_at  timestamptz NOT NULL DEFAULT now()
);

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

-- Least privilege for flow processes. Flow code is user code, and it runs in the process that
-- holds the database credentials, so:
-- * flow processes log in as a member of role `cairn_runner`, which can only call the functions
--   of schema `cairn_runner` below: no table, no function of schema `cairn`;
-- * each launched attempt gets a random token (only its hash is stored), and every one of those
--   functions checks it, so a process reads and writes only its own run, and only while its
--   attempt is the current one (a new attempt gets a new token).
-- The launchers (the operator, `cairn dev`) keep the owner role.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cairn_runner') THEN
        CREATE ROLE cairn_runner NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- another database on this server created it at the same moment
END $$;

-- Functions are executable by PUBLIC unless revoked, now and for later migrations.
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA cairn FROM PUBLIC;
ALTER DEFAULT PRIVILEGES IN SCHEMA cairn REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;

ALTER TABLE cairn.runs ADD COLUMN token_hash bytea;

CREATE FUNCTION cairn.hash_token(p_token text) RETURNS bytea
LANGUAGE sql IMMUTABLE AS $$ SELECT sha256(convert_to(p_token, 'UTF8')) $$;

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

----------------------------------------------------------------------------------------------
-- The runner's whole surface: each function checks the token, then does what the function of
-- the same name in schema `cairn` does, with the owner's rights (SECURITY DEFINER, with a
-- fixed search_path so nothing the caller creates can be picked up).

CREATE SCHEMA cairn_runner;

CREATE FUNCTION cairn_runner.load_run(p_token text, p_run_id uuid, p_attempt integer)
RETURNS TABLE (namespace text, name text, flow text, input jsonb, steps jsonb)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT cairn.authorize(p_token, p_run_id);
    SELECT * FROM cairn.load_run(p_run_id, p_attempt);
$$;

CREATE FUNCTION cairn_runner.complete_step(p_token text, p_run_id uuid, p_attempt integer,
    p_key text, p_result jsonb, p_duration_ms bigint, p_tries integer, p_usd double precision,
    p_tokens_in bigint, p_tokens_out bigint, p_model text, p_usage_meta jsonb)
RETURNS boolean
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT cairn.authorize(p_token, p_run_id);
    SELECT cairn.complete_step(p_run_id, p_attempt, p_key, p_result, p_duration_ms, p_tries,
                               p_usd, p_tokens_in, p_tokens_out, p_model, p_usage_meta);
$$;

CREATE FUNCTION cairn_runner.complete_run(p_token text, p_run_id uuid, p_attempt integer,
                                          p_result jsonb)
RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT cairn.authorize(p_token, p_run_id);
    SELECT cairn.complete_run(p_run_id, p_attempt, p_result);
$$;

CREATE FUNCTION cairn_runner.fail_run(p_token text, p_run_id uuid, p_attempt integer,
                                      p_error jsonb)
RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT cairn.authorize(p_token, p_run_id);
    SELECT cairn.fail_run(p_run_id, p_attempt, p_error);
$$;

CREATE FUNCTION cairn_runner.acknowledge_cancel(p_token text, p_run_id uuid, p_attempt integer)
RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT cairn.authorize(p_token, p_run_id);
    SELECT cairn.acknowledge_cancel(p_run_id, p_attempt);
$$;

CREATE FUNCTION cairn_runner.await_event(p_token text, p_run_id uuid, p_attempt integer,
    p_key text, p_event text, p_timeout_ms bigint, p_question text, p_schema jsonb)
RETURNS TABLE (outcome text, payload jsonb, deadline timestamptz)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT cairn.authorize(p_token, p_run_id);
    SELECT * FROM cairn.await_event(p_run_id, p_attempt, p_key, p_event, p_timeout_ms,
                                    p_question, p_schema);
$$;

CREATE FUNCTION cairn_runner.sleep(p_token text, p_run_id uuid, p_attempt integer, p_key text,
    p_until timestamptz, p_duration_ms bigint, p_inline_max_ms bigint)
RETURNS TABLE (outcome text, remaining_ms bigint)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT cairn.authorize(p_token, p_run_id);
    SELECT * FROM cairn.sleep(p_run_id, p_attempt, p_key, p_until, p_duration_ms,
                              p_inline_max_ms);
$$;

CREATE FUNCTION cairn_runner.spawn_child(p_token text, p_run_id uuid, p_attempt integer,
    p_key text, p_child_name text, p_flow text, p_input jsonb)
RETURNS uuid
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT cairn.authorize(p_token, p_run_id);
    SELECT cairn.spawn_child(p_run_id, p_attempt, p_key, p_child_name, p_flow, p_input);
$$;

CREATE FUNCTION cairn_runner.join_children(p_token text, p_run_id uuid, p_attempt integer,
                                           p_key text, p_children uuid[])
RETURNS TABLE (outcome text, results jsonb)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT cairn.authorize(p_token, p_run_id);
    SELECT * FROM cairn.join_children(p_run_id, p_attempt, p_key, p_children);
$$;

-- The waits (in the run's own namespace) an event emitted by this run would complete: their
-- schemas are checked before emitting.
CREATE FUNCTION cairn_runner.event_waiters(p_token text, p_run_id uuid, p_event text)
RETURNS TABLE (run_name text, question text, schema jsonb)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT cairn.authorize(p_token, p_run_id);
    SELECT w.* FROM cairn.runs r, cairn.event_waiters(r.namespace, p_event) w
    WHERE r.id = p_run_id;
$$;

CREATE FUNCTION cairn_runner.emit(p_token text, p_run_id uuid, p_attempt integer, p_key text,
                                  p_event text, p_payload jsonb)
RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT cairn.authorize(p_token, p_run_id);
    SELECT cairn.emit_from_run(p_run_id, p_attempt, p_key, p_event, p_payload);
$$;

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA cairn_runner FROM PUBLIC;
GRANT USAGE ON SCHEMA cairn_runner TO cairn_runner;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA cairn_runner TO cairn_runner;

----------------------------------------------------------------------------------------------
-- The login flow processes use: one per database, in role cairn_runner, created by the
-- launcher (which needs CREATEROLE once) with a random password kept here for it.

CREATE TABLE cairn.runner_login (
    login    text PRIMARY KEY,
    password text NOT NULL
);

-- Returns (login, password), creating the login on first use.
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

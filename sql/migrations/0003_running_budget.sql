-- The running budget: every running attempt holds a process and a database connection, so
-- launchers cap how many run at once, globally and per namespace.

CREATE INDEX runs_running_idx ON cairn.runs (namespace) WHERE state = 'running';

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

-- Notifications also say which state a run left, so a launcher knows when a slot frees.
CREATE OR REPLACE FUNCTION cairn.notify_run() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('cairn_runs', json_build_object(
        'id', NEW.id, 'root_id', NEW.root_id, 'namespace', NEW.namespace, 'name', NEW.name,
        'state', NEW.state, 'attempt', NEW.attempt,
        'from', CASE WHEN TG_OP = 'UPDATE' THEN OLD.state END)::text);
    RETURN NULL;
END $$;

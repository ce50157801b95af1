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

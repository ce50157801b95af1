-- Migration 0002: retention. Finished runs and old events can be deleted in bulk (cairn.gc),
-- so a busy installation's tables stay the size of its recent work; an event can be deleted
-- with the FlowEvent that delivered it (cairn.delete_event). Indexes make both cheap.

CREATE INDEX runs_finished_idx ON cairn.runs (finished_at)
    WHERE parent_id IS NULL AND finished_at IS NOT NULL;
CREATE INDEX events_emitted_idx ON cairn.events (emitted_at);

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

CREATE FUNCTION cairn.delete_event(p_namespace text, p_name text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM cairn.lock_event(p_namespace, p_name);
    DELETE FROM cairn.events WHERE namespace = p_namespace AND name = p_name;
    RETURN FOUND;
END $$;

-- 0001's ALTER DEFAULT PRIVILEGES IN SCHEMA cairn cannot revoke PUBLIC's EXECUTE (a default
-- given per schema only adds to the global one), so every migration that adds functions
-- revokes it at its end.
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA cairn FROM PUBLIC;

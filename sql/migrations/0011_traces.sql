-- Migration 0011: traces (issue 17). Each run is one OpenTelemetry trace, whatever number of
-- processes it takes: its span context is kept here, made at its first launch with tracing on
-- (engine/src/traces.rs), and once it finished a launcher exports the spans only the engine saw
-- whole (the run's, its attempts', its waits'). Launchers that do not trace never touch them.

ALTER TABLE cairn.runs
    -- The run's span (W3C traceparent); NULL until a launcher that traces launches it.
    ADD COLUMN traceparent text CHECK (traceparent ~ '^00-[0-9a-f]{32}-[0-9a-f]{16}-01$'),
    -- The finish (finished_at) whose spans were exported; a retried run finishes again.
    ADD COLUMN trace_exported_finish timestamptz;
-- The finished runs whose spans are still to be exported (a retried run finishes again).
CREATE INDEX runs_trace_export_idx ON cairn.runs (finished_at)
    WHERE traceparent IS NOT NULL AND finished_at IS NOT NULL
      AND (trace_exported_finish IS NULL OR trace_exported_finish < finished_at);

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

-- The launchers' functions are the owner's alone (as 50_triggers_and_grants.sql makes them).
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA cairn FROM PUBLIC;

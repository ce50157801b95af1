-- Migration 0008: spend budgets (issue 17). A run may have a budget in US dollars; the spend of
-- its tree (its steps and its children's, at any depth) is checked whenever a step with a cost
-- completes, in the same transaction. Past a budget, the run that spent parks, waiting for a
-- person to raise it (cairn.set_budget). Flow processes see it as the step boundary's stop
-- (complete_step returns true, as for a cancel), so runs on older SDKs are held to budgets too.

ALTER TABLE cairn.runs ADD COLUMN budget_usd numeric CHECK (budget_usd >= 0);

-- The lock that orders budget checks and budget changes within a run tree (by its root).
CREATE FUNCTION cairn.budget_lock_key(p_run_id uuid) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT hashtextextended(root_id::text, 2) FROM cairn.runs WHERE id = p_run_id
$$;

-- The spend of a run's tree: its steps' costs and those of its children, at any depth.
CREATE FUNCTION cairn.tree_usd(p_run_id uuid) RETURNS numeric
LANGUAGE sql STABLE AS $$
    WITH RECURSIVE tree (id) AS (
        SELECT p_run_id
        UNION ALL
        SELECT r.id FROM cairn.runs r JOIN tree t ON r.parent_id = t.id)
    SELECT coalesce(sum(s.usd), 0) FROM cairn.steps s WHERE s.run_id IN (SELECT id FROM tree)
$$;

-- The nearest budget a run is past: its own, else its parent's, and so on up (each run's
-- budget covers its whole tree). None when all hold.
CREATE FUNCTION cairn.exceeded_budget(p_run_id uuid)
RETURNS TABLE (run_id uuid, name text, spent numeric, budget numeric)
LANGUAGE sql STABLE AS $$
    WITH RECURSIVE chain (id, depth) AS (
        SELECT p_run_id, 0
        UNION ALL
        SELECT r.parent_id, c.depth + 1 FROM cairn.runs r JOIN chain c ON r.id = c.id
        WHERE r.parent_id IS NOT NULL)
    SELECT r.id, r.name, spend.usd, r.budget_usd
    FROM chain c
    JOIN cairn.runs r ON r.id = c.id
    CROSS JOIN LATERAL (SELECT cairn.tree_usd(r.id) AS usd) spend
    WHERE r.budget_usd IS NOT NULL AND spend.usd > r.budget_usd
    ORDER BY c.depth
    LIMIT 1
$$;

-- After a step with a cost: parks the run when a budget is past, and says so (true: the
-- process must stop here). The wait names the run whose budget to raise.
CREATE FUNCTION cairn.park_over_budget(p_run_id uuid, p_attempt integer) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    b record;
BEGIN
    -- Ordered against cairn.set_budget on the same tree: a raise either comes first (and this
    -- sees it) or waits for this to park (and then wakes it).
    PERFORM pg_advisory_xact_lock_shared(cairn.budget_lock_key(p_run_id));
    SELECT * INTO b FROM cairn.exceeded_budget(p_run_id);
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM cairn.suspend(p_run_id, p_attempt, 'waiting', NULL, jsonb_build_object(
        'budget', jsonb_build_object('run', b.name, 'spent', b.spent, 'limit', b.budget),
        'question', format('Run "%s" has spent $%s, past its budget of $%s. Raise the budget to go on?',
                           b.name, round(b.spent, 4), round(b.budget, 4))));
    RETURN true;
END $$;

CREATE OR REPLACE FUNCTION cairn.complete_step(p_run_id uuid, p_attempt integer, p_key text,
                                    p_result jsonb, p_duration_ms bigint, p_tries integer,
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
        RETURN true;
    END IF;
    RETURN p_usd IS NOT NULL AND cairn.park_over_budget(p_run_id, p_attempt);
END $$;

CREATE OR REPLACE FUNCTION cairn_runner_v1.complete_step(p_token text, p_run_id uuid,
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
        RETURN p_usd IS NOT NULL AND cairn.park_over_budget(p_run_id, p_attempt);
    END IF;
    PERFORM cairn.authorize(p_token, p_run_id);
    RETURN cairn.complete_step(p_run_id, p_attempt, p_key, p_result, p_duration_ms, p_tries,
                               p_usd, p_tokens_in, p_tokens_out, p_model, p_usage_meta);
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

-- As in 0002: PUBLIC's EXECUTE on the new functions goes.
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA cairn FROM PUBLIC;

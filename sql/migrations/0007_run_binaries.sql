-- Migration 0007: the flow binary each local run tree runs. `cairn dev` copies a run's binary
-- into a store addressed by its SHA-256 when the run is created and records the hash here, so
-- every process of the tree (children included) runs the same bytes whatever is rebuilt later:
-- the local twin of pinning an image digest. Runs the operator launches have none (their
-- FlowRun pins the image). Additive: launchers that do not know the table ignore it.

CREATE TABLE cairn.run_binaries (
    root_id    uuid PRIMARY KEY REFERENCES cairn.runs (id) ON DELETE CASCADE,
    sha256     text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    -- The path it was copied from, for messages.
    built_from text NOT NULL,
    pinned_at  timestamptz NOT NULL DEFAULT now()
);

-- Records the binary of the run tree rooted at p_root_id, unless it has one already (the first
-- pin wins: a tree never changes binary). Returns the tree's binary.
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

-- As in 0002: PUBLIC's EXECUTE on the new functions goes.
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA cairn FROM PUBLIC;

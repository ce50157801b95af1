//! The store of the flow binaries `cairn dev` runs. A run tree runs a copy of the binary it
//! started with, kept under `<CAIRN_HOME>/binaries/sha256/<its SHA-256>` and recorded with the
//! run (`cairn.run_binaries`), so rebuilding a flow changes new runs only: the local twin of
//! pinning an image digest. A copy, not a link: cargo and linkers may rewrite their output in
//! place.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use cairn_engine::launcher::PinnedBinary;
use sha2::{Digest, Sha256};

use crate::localdb::LocalPostgres;

pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// The store under the dev root (`CAIRN_HOME`, see `LocalPostgres::default_root`).
    pub fn open() -> Store {
        Store {
            dir: LocalPostgres::default_root().join("binaries/sha256"),
        }
    }

    /// Copies `binary` into the store, unless a copy of the same bytes is there, and returns
    /// its SHA-256 in hex.
    pub fn put(&self, binary: &Path) -> anyhow::Result<String> {
        let bytes =
            std::fs::read(binary).with_context(|| format!("cannot read {}", binary.display()))?;
        let sha256 = format!("{:x}", Sha256::digest(&bytes));
        let path = self.path(&sha256);
        if !path.exists() {
            std::fs::create_dir_all(&self.dir)
                .with_context(|| format!("cannot create {}", self.dir.display()))?;
            // Written aside, then renamed into place: a copy is whole or absent, also when
            // two commands store the same binary at once.
            let partial = self.dir.join(format!(".partial-{}", uuid::Uuid::new_v4()));
            std::fs::write(&partial, &bytes)
                .and_then(|()| {
                    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755))
                })
                .and_then(|()| std::fs::rename(&partial, &path))
                .with_context(|| {
                    format!(
                        "cannot store {} in {}",
                        binary.display(),
                        self.dir.display()
                    )
                })?;
        }
        Ok(sha256)
    }

    /// Where the copy with `sha256` is (or would be).
    pub fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(sha256)
    }

    /// The copy of a run tree's pinned binary, or why there is none to run.
    pub fn copy_of(&self, pinned: &PinnedBinary) -> anyhow::Result<PathBuf> {
        let copy = self.path(&pinned.sha256);
        anyhow::ensure!(
            copy.exists(),
            "its binary sha256:{} (built from {}) is not in the binary store ({}): this \
             CAIRN_HOME is not where the run was started; set CAIRN_HOME as it was, or delete the run",
            pinned.sha256,
            pinned.built_from,
            copy.display()
        );
        Ok(copy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_bytes_are_stored_once_and_a_rebuild_gets_a_copy_of_its_own() {
        let root = std::env::temp_dir().join(format!("cairn-store-{}", uuid::Uuid::new_v4()));
        let store = Store {
            dir: root.join("binaries/sha256"),
        };
        std::fs::create_dir_all(&root).unwrap();
        let built = root.join("flows");
        std::fs::write(&built, b"#!/bin/sh\necho one\n").unwrap();
        let first = store.put(&built).unwrap();
        assert_eq!(store.put(&built).unwrap(), first);
        std::fs::write(&built, b"#!/bin/sh\necho two\n").unwrap();
        let second = store.put(&built).unwrap();
        assert_ne!(first, second);
        assert_eq!(
            std::fs::read(store.path(&first)).unwrap(),
            b"#!/bin/sh\necho one\n"
        );
        let mode = std::fs::metadata(store.path(&second))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        std::fs::remove_dir_all(&root).unwrap();
    }
}

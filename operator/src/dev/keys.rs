//! The step keys of `cairn dev`: master keys in `<CAIRN_HOME>/step-keys`, made on first use
//! (readable by their owner only). Flow processes get their namespace's keys derived from them
//! (`checkpoint::StepKeys::for_namespace`), as on Kubernetes. Losing the file makes sensitive
//! steps' values unreadable: runs that replay one then fail, saying which key they need.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use cairn_engine::checkpoint::StepKeys;

use crate::localdb::LocalPostgres;

/// Where the master keys are.
pub fn path() -> PathBuf {
    LocalPostgres::default_root().join("step-keys")
}

/// The master keys, made on first use.
pub fn master() -> anyhow::Result<StepKeys> {
    load_or_create(&path())
}

fn load_or_create(path: &Path) -> anyhow::Result<StepKeys> {
    if !path.exists() {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        // Written aside, then linked into place (which fails if it exists): when two commands
        // make it at once, one wins, and neither ever reads a half-written file.
        let partial = path.with_extension(format!("partial-{}", uuid::Uuid::new_v4()));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&partial)
            .and_then(|mut file| {
                writeln!(file, "{}", StepKeys::generate().encode())?;
                file.sync_all()
            });
        let linked = written.and_then(|()| std::fs::hard_link(&partial, path));
        let _ = std::fs::remove_file(&partial);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
        }
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the step keys in {}", path.display()))?;
    StepKeys::parse(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: {e}; it holds base64 keys of 32 bytes, the one that seals first",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn keys_are_made_once_private_and_read_back() {
        let dir = std::env::temp_dir().join(format!("cairn-keys-{}", uuid::Uuid::new_v4()));
        let path = dir.join("step-keys");
        let made = load_or_create(&path).unwrap();
        assert_eq!(load_or_create(&path).unwrap(), made);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&path, "not keys").unwrap();
        let bad = load_or_create(&path).unwrap_err().to_string();
        assert!(bad.contains("step-keys") && bad.contains("base64"), "{bad}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

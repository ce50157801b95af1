//! Secret settings (the database URLs): from the environment, or from a file the environment
//! names. The Helm chart mounts them as files (a Secret as a volume) rather than passing them
//! in the environment, where `kubectl describe` and crash dumps would show them.

use std::path::Path;

use anyhow::{Context, bail};

/// The variable `name`, else the contents of the file that `name_FILE` names, without trailing
/// line breaks. `None` when neither is set.
pub fn secret(name: &str) -> anyhow::Result<Option<String>> {
    secret_from(name, |var| std::env::var_os(var))
}

/// [`secret`], with the environment given as a lookup.
fn secret_from(
    name: &str,
    env: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> anyhow::Result<Option<String>> {
    if let Some(value) = env(name).and_then(|v| v.into_string().ok())
        && !value.is_empty()
    {
        return Ok(Some(value));
    }
    let file_var = format!("{name}_FILE");
    let Some(path) = env(&file_var) else {
        return Ok(None);
    };
    let path = Path::new(&path);
    let value = std::fs::read_to_string(path).with_context(|| {
        format!(
            "{file_var}={}: cannot read it; mount the Secret holding {name} there, or unset {file_var}",
            path.display()
        )
    })?;
    let value = value.trim_end_matches(['\n', '\r']);
    if value.is_empty() {
        bail!(
            "{file_var}={}: the file is empty; it should hold {name}",
            path.display()
        );
    }
    Ok(Some(value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<std::ffi::OsString> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.get(name).map(Into::into)
    }

    #[test]
    fn the_variable_wins_then_the_file_it_names_then_nothing() {
        let dir = std::env::temp_dir().join(format!("cairn-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("url");
        std::fs::write(&file, "postgres://from-file/db\n").unwrap();
        let path = file.to_str().unwrap();
        let url = "CAIRN_DATABASE_URL";
        let from = |vars: &[(&str, &str)]| secret_from(url, lookup(vars)).unwrap();
        assert_eq!(
            from(&[
                (url, "postgres://env/db"),
                ("CAIRN_DATABASE_URL_FILE", path)
            ])
            .as_deref(),
            Some("postgres://env/db")
        );
        assert_eq!(
            from(&[("CAIRN_DATABASE_URL_FILE", path)]).as_deref(),
            Some("postgres://from-file/db"),
            "the file's trailing line break is not part of the URL"
        );
        assert_eq!(from(&[(url, "")]), None);
        std::fs::write(&file, "\n").unwrap();
        let empty = secret_from(url, lookup(&[("CAIRN_DATABASE_URL_FILE", path)]))
            .unwrap_err()
            .to_string();
        assert!(empty.contains("the file is empty"), "{empty}");
        let missing = secret_from(url, lookup(&[("CAIRN_DATABASE_URL_FILE", "/nowhere/url")]))
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("CAIRN_DATABASE_URL_FILE=/nowhere/url") && missing.contains("mount"),
            "{missing}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

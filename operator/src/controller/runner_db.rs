//! How flow pods reach the database: the runner's URL, handed to them in a Secret of their
//! namespace, and the CA certificate that URL names with `sslrootcert`. The operator reads the
//! CA file where its own URL says (a host path, or the chart's mount of `database.caSecret`),
//! puts its content in the same Secret, and pods find it mounted at [`CA_DIR`]: one setting
//! (the URL's TLS parameters) serves the operator and every flow pod alike.

use anyhow::Context as _;

/// The key of the CA certificate in the runner's Secret.
pub const CA_KEY: &str = "ca.crt";
/// Where flow pods have that key mounted.
pub const CA_DIR: &str = "/etc/cairn/db";

/// The runner's database URL as flow pods use it, and the CA they need for it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunnerDb {
    pub url: String,
    /// The PEM text of the file the URL's `sslrootcert` named, if it named one.
    pub ca: Option<String>,
}

impl RunnerDb {
    /// From the URL as the operator sees it: a `sslrootcert` naming a file is read here and
    /// replaced by the path pods mount it at (`system`, libpq's "the trusted roots", stays).
    pub fn from_url(url: &str) -> anyhow::Result<RunnerDb> {
        let mut parsed = url::Url::parse(url).with_context(|| {
            format!(
                "the runner's database URL is not a URL: {}",
                cairn_engine::schema::redact(url)
            )
        })?;
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(key, value)| (key.into_owned(), value.into_owned()))
            .collect();
        let Some((_, path)) = pairs
            .iter()
            .find(|(key, value)| key == "sslrootcert" && !value.is_empty() && value != "system")
        else {
            return Ok(RunnerDb {
                url: url.to_owned(),
                ca: None,
            });
        };
        let ca = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read sslrootcert={path} of the database URL (the CA flow pods must trust too); \
                 make the file readable by the operator, or mount it there (chart: database.caSecret)"
            )
        })?;
        let in_pods = format!("{CA_DIR}/{CA_KEY}");
        parsed
            .query_pairs_mut()
            .clear()
            .extend_pairs(pairs.iter().map(|(key, value)| match key.as_str() {
                "sslrootcert" => (key.as_str(), in_pods.as_str()),
                _ => (key.as_str(), value.as_str()),
            }));
        Ok(RunnerDb {
            url: parsed.to_string(),
            ca: Some(ca),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_named_by_the_url_is_carried_to_the_pods_path() {
        let dir = std::env::temp_dir().join(format!("cairn-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let url = format!(
            "postgres://runner:secret@db:5432/cairn?sslmode=verify-full&sslrootcert={}&application_name=x",
            ca.display()
        );
        let runner = RunnerDb::from_url(&url).unwrap();
        assert_eq!(runner.ca.as_deref(), Some("-----BEGIN CERTIFICATE-----\n"));
        assert_eq!(
            runner.url,
            "postgres://runner:secret@db:5432/cairn?sslmode=verify-full&sslrootcert=%2Fetc%2Fcairn%2Fdb%2Fca.crt&application_name=x"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn without_a_ca_file_the_url_is_kept_and_a_missing_one_says_what_to_do() {
        for url in [
            "postgres://r@db/cairn",
            "postgres://r@db/cairn?sslmode=require",
            "postgres://r@db/cairn?sslmode=verify-full&sslrootcert=system",
        ] {
            assert_eq!(
                RunnerDb::from_url(url).unwrap(),
                RunnerDb {
                    url: url.into(),
                    ca: None
                }
            );
        }
        let missing = RunnerDb::from_url("postgres://r:pw@db/c?sslrootcert=/nowhere/ca.pem")
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("sslrootcert=/nowhere/ca.pem")
                && missing.contains("database.caSecret"),
            "{missing}"
        );
        assert!(!missing.contains("pw"), "{missing}");
    }
}

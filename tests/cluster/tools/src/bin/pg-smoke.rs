//! Smoke-test payload for the test cluster: connects to Postgres with the URL in `PG_SMOKE_URL`
//! (falls back to `DATABASE_URL`), inserts one row carrying `PG_SMOKE_TOKEN` into `public.cluster_smoke`
//! (schema-qualified: the engine creates a `cairn` schema, which a user named cairn would
//! otherwise get first on its search path),
//! and exits 0. Retries the connection for up to 60 s (the pod network may need a moment).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

fn main() -> Result<()> {
    let url = std::env::var("PG_SMOKE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .context("set PG_SMOKE_URL (or DATABASE_URL) to a postgres:// URL")?;
    let token = std::env::var("PG_SMOKE_TOKEN").unwrap_or_else(|_| "pg-smoke".to_string());
    let host = std::env::var("HOSTNAME").unwrap_or_default();

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut client = loop {
        match postgres::Client::connect(&url, postgres::NoTls) {
            Ok(client) => break client,
            Err(e) if Instant::now() < deadline => {
                eprintln!(
                    "pg-smoke: connect failed, retrying: {:#}",
                    anyhow::Error::from(e)
                );
                std::thread::sleep(Duration::from_secs(2));
            }
            Err(e) => return Err(e).context("connecting to Postgres"),
        }
    };
    client.batch_execute(
        "CREATE TABLE IF NOT EXISTS public.cluster_smoke (
             id bigserial PRIMARY KEY,
             token text NOT NULL,
             pod text NOT NULL,
             inserted_at timestamptz NOT NULL DEFAULT now())",
    )?;
    client.execute(
        "INSERT INTO public.cluster_smoke (token, pod) VALUES ($1, $2)",
        &[&token, &host],
    )?;
    println!("pg-smoke: inserted token {token} from pod {host}");
    Ok(())
}

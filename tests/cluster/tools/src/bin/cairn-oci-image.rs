//! Turns a binary built on this machine into an OCI image archive for `ctr images import`.
//!
//! Example:
//!   cairn-oci-image --name localhost/cairn-agent:dev --binary target/release/cairn-agent \
//!       --output /tmp/cairn-agent.tar
//! The image holds the binary at /usr/local/bin/<file name> (its entrypoint), the shared libraries
//! `ldd` lists for it at their host paths, and /tmp. Prints `name=`, `manifest_digest=`,
//! `config_digest=` lines.

use std::path::PathBuf;

use anyhow::{Context, Result};
use cairn_cluster_tools::ImageSpec;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(version, about = "Build an OCI image archive from a local binary")]
struct Args {
    /// Fully qualified image name with tag, e.g. localhost/cairn-agent:dev.
    #[arg(long)]
    name: String,
    /// The binary to put in the image.
    #[arg(long)]
    binary: PathBuf,
    /// Where the binary goes in the image (default /usr/local/bin/<file name>).
    #[arg(long)]
    dest: Option<String>,
    /// Where to write the archive.
    #[arg(long, short)]
    output: PathBuf,
    /// Do not copy the shared libraries ldd lists (for static binaries).
    #[arg(long)]
    no_libs: bool,
    /// Add the host's CA bundle at /etc/ssl/certs/ca-certificates.crt.
    #[arg(long)]
    ca_certs: bool,
    /// Extra host file, as SRC:DEST (repeatable).
    #[arg(long = "add", value_name = "SRC:DEST")]
    add: Vec<String>,
    /// Environment variable KEY=VALUE for the image config (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Label KEY=VALUE for the image config (repeatable). A different label gives a different
    /// digest for the same binary.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    label: Vec<String>,
    /// Arguments after the entrypoint (the image's Cmd).
    #[arg(last = true)]
    cmd: Vec<String>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut spec = ImageSpec::new(&args.name)?;
    let file_name = args
        .binary
        .file_name()
        .and_then(|n| n.to_str())
        .context("binary path has no file name")?;
    let dest = args
        .dest
        .clone()
        .unwrap_or_else(|| format!("/usr/local/bin/{file_name}"));
    spec.add_binary_with_libs(&args.binary, &dest, !args.no_libs)?;
    if args.ca_certs {
        spec.copy_host_file(
            "/etc/ssl/certs/ca-certificates.crt".as_ref(),
            "/etc/ssl/certs/ca-certificates.crt",
        )?;
    }
    for item in &args.add {
        let (src, dst) = item
            .split_once(':')
            .with_context(|| format!("--add {item:?}: expected SRC:DEST"))?;
        spec.copy_host_file(src.as_ref(), dst)?;
    }
    for label in &args.label {
        let (k, v) = label
            .split_once('=')
            .with_context(|| format!("--label {label:?}: expected KEY=VALUE"))?;
        spec.labels.insert(k.to_string(), v.to_string());
    }
    spec.env = args.env.clone();
    if !spec.env.iter().any(|e| e.starts_with("PATH=")) {
        spec.env
            .insert(0, "PATH=/usr/local/bin:/usr/bin:/bin".to_string());
    }
    spec.entrypoint = vec![dest];
    spec.cmd = args.cmd.clone();
    let built = spec.write_archive(&args.output)?;
    println!("name={}", built.name);
    println!("manifest_digest={}", built.manifest_digest);
    println!("config_digest={}", built.config_digest);
    println!("archive={}", args.output.display());
    Ok(())
}

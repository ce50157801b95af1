//! Builds single-layer OCI image archives (the format `ctr images import` reads) from files on
//! this machine: a binary, the shared libraries `ldd` lists for it, and optional extra files.
//!
//! The archive is reproducible: same inputs, same digests (entries sorted, mtime 0, uid/gid 0,
//! JSON keys sorted). Different inputs (another binary, or another `--label`) give another digest,
//! which is how tests put a second image under the same tag.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use flate2::Compression;
use flate2::write::GzEncoder;
use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, DescriptorBuilder, ImageConfigurationBuilder,
    ImageIndexBuilder, ImageManifestBuilder, MediaType, Os, PlatformBuilder, RootFsBuilder,
    Sha256Digest,
};
use sha2::{Digest as _, Sha256};

/// Annotation containerd uses as the image name when importing an OCI archive.
pub const CONTAINERD_IMAGE_NAME: &str = "io.containerd.image.name";
/// Standard OCI annotation for the tag of a manifest in an index.
pub const OCI_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// One file (or directory) of the image's root file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir { mode: u32 },
    File { data: Vec<u8>, mode: u32 },
}

/// What goes into the image.
#[derive(Debug, Default)]
pub struct ImageSpec {
    /// Fully qualified name, e.g. `localhost/cairn-agent:dev`.
    pub name: String,
    /// Absolute paths inside the image -> content.
    pub files: BTreeMap<String, Entry>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub working_dir: Option<String>,
}

/// Digests of a built image.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub name: String,
    /// sha256:... of the manifest (what `ctr images ls` shows as DIGEST).
    pub manifest_digest: String,
    /// sha256:... of the config (the image ID that CRI reports for images without a repo digest).
    pub config_digest: String,
    pub layer_digest: String,
}

impl ImageSpec {
    pub fn new(name: &str) -> Result<Self> {
        check_image_name(name)?;
        let mut spec = ImageSpec {
            name: name.to_string(),
            ..Default::default()
        };
        // A world-writable /tmp, as most programs expect one.
        spec.add_dir("/tmp", 0o1777);
        Ok(spec)
    }

    /// Adds a directory and its parents (parents get mode 0755 unless already present).
    pub fn add_dir(&mut self, path: &str, mode: u32) {
        self.add_parents(path);
        self.files.insert(normalize(path), Entry::Dir { mode });
    }

    /// Adds a file with the given content and mode, creating parent directories.
    pub fn add_file(&mut self, path: &str, data: Vec<u8>, mode: u32) {
        self.add_parents(path);
        self.files
            .insert(normalize(path), Entry::File { data, mode });
    }

    /// Copies a host file (symlinks followed) into the image at `dest`, keeping its permission bits.
    pub fn copy_host_file(&mut self, src: &Path, dest: &str) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let data = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
        let mode = std::fs::metadata(src)?.permissions().mode() & 0o7777;
        self.add_file(dest, data, mode);
        Ok(())
    }

    /// Copies `binary` to `dest` and every shared library `ldd` lists for it to the same path
    /// in the image (including the ELF interpreter, e.g. /lib64/ld-linux-x86-64.so.2).
    pub fn add_binary_with_libs(
        &mut self,
        binary: &Path,
        dest: &str,
        with_libs: bool,
    ) -> Result<()> {
        self.copy_host_file(binary, dest)?;
        if with_libs {
            for lib in shared_libraries(binary)? {
                let dest = lib
                    .to_str()
                    .context("library path is not UTF-8")?
                    .to_string();
                self.copy_host_file(&lib, &dest)?;
            }
        }
        Ok(())
    }

    fn add_parents(&mut self, path: &str) {
        let path = normalize(path);
        let mut prefix = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            self.files
                .entry(prefix.clone())
                .or_insert(Entry::Dir { mode: 0o755 });
        }
    }

    /// The uncompressed layer tar (deterministic).
    pub fn layer_tar(&self) -> Result<Vec<u8>> {
        let mut builder = tar::Builder::new(Vec::new());
        builder.mode(tar::HeaderMode::Deterministic);
        for (path, entry) in &self.files {
            let mut header = tar::Header::new_gnu();
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            match entry {
                Entry::Dir { mode } => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(*mode);
                    header.set_size(0);
                    builder.append_data(&mut header, format!("{path}/"), std::io::empty())?;
                }
                Entry::File { data, mode } => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(*mode);
                    header.set_size(data.len() as u64);
                    builder.append_data(&mut header, path, data.as_slice())?;
                }
            }
        }
        Ok(builder.into_inner()?)
    }

    /// Writes the OCI image archive to `out` and returns the digests.
    pub fn write_archive(&self, out: &Path) -> Result<BuiltImage> {
        let layer = self.layer_tar()?;
        let diff_id = sha256_hex(&layer);
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(&layer)?;
        let layer_gz = gz.finish()?;
        let layer_digest = sha256_hex(&layer_gz);

        let (arch, os) = (host_arch(), Os::Linux);
        let mut config = ConfigBuilder::default();
        if !self.entrypoint.is_empty() {
            config = config.entrypoint(self.entrypoint.clone());
        }
        if !self.cmd.is_empty() {
            config = config.cmd(self.cmd.clone());
        }
        if !self.env.is_empty() {
            config = config.env(self.env.clone());
        }
        if !self.labels.is_empty() {
            config = config.labels(
                self.labels
                    .clone()
                    .into_iter()
                    .collect::<std::collections::HashMap<_, _>>(),
            );
        }
        if let Some(dir) = &self.working_dir {
            config = config.working_dir(dir.clone());
        }
        let image_config = ImageConfigurationBuilder::default()
            .architecture(arch.clone())
            .os(os.clone())
            .config(config.build()?)
            .rootfs(
                RootFsBuilder::default()
                    .typ("layers")
                    .diff_ids(vec![format!("sha256:{diff_id}")])
                    .build()?,
            )
            .build()?;
        let config_json = canonical_json(&image_config)?;
        let config_digest = sha256_hex(&config_json);

        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(descriptor(
                MediaType::ImageConfig,
                &config_digest,
                config_json.len(),
            )?)
            .layers(vec![descriptor(
                MediaType::ImageLayerGzip,
                &layer_digest,
                layer_gz.len(),
            )?])
            .build()?;
        let manifest_json = canonical_json(&manifest)?;
        let manifest_digest = sha256_hex(&manifest_json);

        let tag = self
            .name
            .rsplit_once(':')
            .map(|(_, t)| t.to_string())
            .unwrap_or_default();
        let manifest_desc = DescriptorBuilder::default()
            .media_type(MediaType::ImageManifest)
            .digest(sha256_digest(&manifest_digest)?)
            .size(manifest_json.len() as u64)
            .platform(
                PlatformBuilder::default()
                    .architecture(arch)
                    .os(os)
                    .build()?,
            )
            .annotations(
                [
                    (CONTAINERD_IMAGE_NAME.to_string(), self.name.clone()),
                    (OCI_REF_NAME.to_string(), tag),
                ]
                .into_iter()
                .collect::<std::collections::HashMap<_, _>>(),
            )
            .build()?;
        let index = ImageIndexBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageIndex)
            .manifests(vec![manifest_desc])
            .build()?;
        let index_json = canonical_json(&index)?;

        let file =
            std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
        let mut archive = tar::Builder::new(std::io::BufWriter::new(file));
        let mut put = |path: &str, data: &[u8]| -> Result<()> {
            let mut header = tar::Header::new_gnu();
            header.set_mode(0o644);
            header.set_mtime(0);
            header.set_size(data.len() as u64);
            header.set_entry_type(tar::EntryType::Regular);
            archive.append_data(&mut header, path, data)?;
            Ok(())
        };
        put("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        put(&format!("blobs/sha256/{layer_digest}"), &layer_gz)?;
        put(&format!("blobs/sha256/{config_digest}"), &config_json)?;
        put(&format!("blobs/sha256/{manifest_digest}"), &manifest_json)?;
        put("index.json", &index_json)?;
        archive.into_inner()?.flush()?;

        Ok(BuiltImage {
            name: self.name.clone(),
            manifest_digest: format!("sha256:{manifest_digest}"),
            config_digest: format!("sha256:{config_digest}"),
            layer_digest: format!("sha256:{layer_digest}"),
        })
    }
}

/// Shared libraries (absolute host paths) that `ldd` lists for `binary`; empty for a static binary.
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        // "not a dynamic executable" (exit 1) means a static binary: nothing to copy.
        if stdout.contains("not a dynamic executable")
            || stderr.contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        bail!("ldd {} failed: {stderr}", binary.display());
    }
    parse_ldd(&stdout)
}

/// Parses `ldd` output lines such as
/// `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` and `/lib64/ld-linux-x86-64.so.2 (0x...)`.
pub fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("statically linked") {
            continue;
        }
        let target = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    bail!("ldd: shared library {} not found", name.trim());
                }
                rest.split_whitespace().next().unwrap_or("")
            }
            None => line.split_whitespace().next().unwrap_or(""),
        };
        // linux-vdso.so.1 has no file; only absolute paths are real files.
        if target.starts_with('/') {
            libs.push(PathBuf::from(target));
        }
    }
    libs.sort();
    libs.dedup();
    Ok(libs)
}

/// Rejects names that containerd would rewrite to docker.io/library/... or that imply a pull.
pub fn check_image_name(name: &str) -> Result<()> {
    let (repo, tag) = name
        .rsplit_once(':')
        .filter(|(repo, tag)| !tag.contains('/') && !repo.is_empty())
        .with_context(|| {
            format!("image name {name:?} needs an explicit tag, e.g. localhost/cairn-agent:dev")
        })?;
    let first = repo.split('/').next().unwrap_or("");
    if !repo.contains('/') || !(first.contains('.') || first.contains(':') || first == "localhost")
    {
        bail!(
            "image name {name:?} must be fully qualified (registry host first, e.g. localhost/{repo}:{tag})"
        );
    }
    if tag == "latest" {
        bail!("do not use the tag 'latest' (kubelet would then always try to pull)");
    }
    Ok(())
}

fn normalize(path: &str) -> String {
    path.trim_start_matches('/')
        .trim_end_matches('/')
        .to_string()
}

fn sha256_hex(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

fn sha256_digest(hex: &str) -> Result<Sha256Digest> {
    hex.parse::<Sha256Digest>()
        .map_err(|e| anyhow::anyhow!("bad digest {hex}: {e}"))
}

fn descriptor(media_type: MediaType, hex: &str, size: usize) -> Result<Descriptor> {
    Ok(Descriptor::new(
        media_type,
        size as u64,
        sha256_digest(hex)?,
    ))
}

/// JSON with sorted object keys (serde_json's Map is a BTreeMap), so digests are reproducible
/// even though oci-spec keeps labels and annotations in HashMaps.
fn canonical_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(&serde_json::to_value(value)?)?)
}

fn host_arch() -> Arch {
    match std::env::consts::ARCH {
        "x86_64" => Arch::Amd64,
        "aarch64" => Arch::ARM64,
        other => Arch::Other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ldd_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd5c3f2000)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f0c1a000000)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0c19e00000)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f0c1a0b0000)\n";
        let libs = parse_ldd(text).unwrap();
        assert_eq!(
            libs,
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(parse_ldd("\tlibfoo.so => not found\n").is_err());
    }

    #[test]
    fn image_names_must_be_qualified_and_tagged() {
        assert!(check_image_name("localhost/cairn-agent:dev").is_ok());
        assert!(check_image_name("registry.k8s.io/pause:3.10").is_ok());
        assert!(check_image_name("cairn-agent:dev").is_err());
        assert!(check_image_name("localhost/cairn-agent").is_err());
        assert!(check_image_name("localhost/cairn-agent:latest").is_err());
    }

    #[test]
    fn archive_is_reproducible_and_labels_change_digest() {
        let dir = std::env::temp_dir().join(format!("cairn-oci-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let build = |label: Option<&str>, file: &str| {
            let mut spec = ImageSpec::new("localhost/test:1").unwrap();
            spec.add_file("/usr/local/bin/hello", b"#!/bin/true\n".to_vec(), 0o755);
            spec.entrypoint = vec!["/usr/local/bin/hello".into()];
            if let Some(l) = label {
                spec.labels.insert("variant".into(), l.into());
                spec.labels.insert("other".into(), "x".into());
            }
            spec.write_archive(&dir.join(file)).unwrap()
        };
        let a = build(Some("a"), "a.tar");
        let a2 = build(Some("a"), "a2.tar");
        let b = build(Some("b"), "b.tar");
        assert_eq!(a.manifest_digest, a2.manifest_digest);
        assert_eq!(
            std::fs::read(dir.join("a.tar")).unwrap(),
            std::fs::read(dir.join("a2.tar")).unwrap()
        );
        assert_ne!(a.manifest_digest, b.manifest_digest);
        assert_eq!(a.layer_digest, b.layer_digest);

        // The archive holds the layout, index and blobs, and the index names the image.
        let mut archive = tar::Archive::new(std::fs::File::open(dir.join("a.tar")).unwrap());
        let mut names = Vec::new();
        let mut index = String::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().to_string();
            if path == "index.json" {
                std::io::Read::read_to_string(&mut entry, &mut index).unwrap();
            }
            names.push(path);
        }
        assert!(names.contains(&"oci-layout".to_string()));
        assert!(names.contains(&format!(
            "blobs/sha256/{}",
            a.manifest_digest.trim_start_matches("sha256:")
        )));
        let index: serde_json::Value = serde_json::from_str(&index).unwrap();
        assert_eq!(
            index["manifests"][0]["annotations"][CONTAINERD_IMAGE_NAME],
            "localhost/test:1"
        );
        assert_eq!(index["manifests"][0]["digest"], a.manifest_digest);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

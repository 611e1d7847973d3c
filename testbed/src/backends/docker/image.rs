//! The node image: `FROM scratch` with a statically linked `mock-ersap` as its only file.
//!
//! No registry can be assumed, so the image is built locally. Its tag is a SHA-256 of the
//! Dockerfile and the binary, so a run reuses the image of an earlier run with the same binary
//! and builds a new one when the binary changed.
//!
//! The binary comes from `TESTBED_DOCKER_MOCK_BIN` when that is set. Otherwise the harness
//! builds it with cargo (`$CARGO`, or `cargo` on the PATH) in the workspace it was built from:
//! `cargo build --target <arch>-unknown-linux-gnu -p testbed --bin mock-ersap` with the
//! static flags of `STATIC_RUSTFLAGS`, and `--release` when the harness itself is a release
//! build (as under `cargo xtask`). A debug harness, as in the tests, gets a debug mock, which
//! rebuilds in a fraction of the time after a source change. The explicit
//! `--target` keeps the static flag away from build scripts and proc macros and gives the
//! static binary a folder of its own, so it never replaces the dynamically linked one. When
//! the binary is current, cargo only checks it, which takes about a second. The first build
//! compiles every dependency again for the target and takes minutes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use futures_util::StreamExt;
use orchestrator::backend::BackendError;
use sha2::{Digest, Sha256};
use testcontainers::bollard::query_parameters::BuildImageOptionsBuilder;
use testcontainers::bollard::{Docker, body_full};
use tracing::info;

use super::labels;

/// Repository name of the node image; the tag is the content hash.
pub const IMAGE_NAME: &str = "testbed-mock-ersap";
/// Environment variable naming a prebuilt, statically linked `mock-ersap` for the image.
pub const STATIC_MOCK_BIN_ENV: &str = "TESTBED_DOCKER_MOCK_BIN";

/// The node image's Dockerfile. Without arguments the binary runs as the node agent.
const DOCKERFILE: &str = "FROM scratch\n\
    COPY mock-ersap /mock-ersap\n\
    ENTRYPOINT [\"/mock-ersap\"]\n\
    CMD [\"--node-agent\"]\n";

/// Flags of the static build. Line tables keep backtraces readable at a fraction of the size
/// of full debug information. Size matters for a debug build, because every changed binary
/// travels to the engine as a build context and stays there as an image.
const STATIC_RUSTFLAGS: &str = "-C target-feature=+crt-static -C debuginfo=line-tables-only";

/// Path of the binary inside the image.
pub const BINARY_IN_IMAGE: &str = "/mock-ersap";

/// A node image that exists on the engine.
#[derive(Debug, Clone)]
pub struct NodeImage {
    /// Repository name, `testbed-mock-ersap`.
    pub name: String,
    /// The first 16 hex digits of the content hash.
    pub tag: String,
    /// Whether this call built it; `false` when an earlier run had.
    pub built: bool,
    /// The static binary it was built from.
    pub binary: PathBuf,
}

impl NodeImage {
    /// `name:tag`.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.name, self.tag)
    }
}

/// Makes sure the node image for the current `mock-ersap` exists, building the static binary
/// and the image when needed.
pub async fn ensure(docker: &Docker) -> Result<NodeImage, BackendError> {
    let binary = static_binary().await?;
    let bytes = tokio::fs::read(&binary).await.map_err(|error| {
        BackendError::Environment(format!("cannot read {}: {error}", binary.display()))
    })?;
    if let Some(interpreter) = elf_interpreter(&bytes) {
        return Err(BackendError::Environment(format!(
            "{} is dynamically linked (it needs {interpreter}); the node image is FROM scratch \
             and needs a statically linked binary\n  (hint: unset {STATIC_MOCK_BIN_ENV} to let \
             the harness build one, or build it with RUSTFLAGS='-C target-feature=+crt-static' \
             and an explicit --target)",
            binary.display()
        )));
    }
    let tag = content_tag(&bytes);
    let image = NodeImage { name: IMAGE_NAME.to_string(), tag, built: false, binary };
    let reference = image.reference();
    if docker.inspect_image(&reference).await.is_ok() {
        info!(image = %reference, "node image exists");
        return Ok(image);
    }
    build(docker, &reference, bytes).await?;
    info!(image = %reference, binary = %image.binary.display(), "built node image");
    Ok(NodeImage { built: true, ..image })
}

/// Tag of the image for a binary: the first 16 hex digits of SHA-256 over the Dockerfile and
/// the binary, which is everything that goes into the image.
pub fn content_tag(binary: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(DOCKERFILE.as_bytes());
    hasher.update(binary);
    let digest = hasher.finalize();
    digest.iter().take(8).map(|byte| format!("{byte:02x}")).collect()
}

async fn build(docker: &Docker, reference: &str, binary: Vec<u8>) -> Result<(), BackendError> {
    let failed = |reason: String| BackendError::Provision {
        what: format!("node image {reference}"),
        reason,
    };
    let context = build_context(&binary).map_err(|error| failed(error.to_string()))?;
    let options = BuildImageOptionsBuilder::new()
        .t(reference)
        .labels(&HashMap::from([(labels::MANAGED, "1")]))
        .rm(true)
        .forcerm(true)
        .build();
    let mut progress = docker.build_image(options, None, Some(body_full(context.into())));
    let mut output = String::new();
    while let Some(item) = progress.next().await {
        match item {
            Ok(info) => {
                if let Some(detail) = info.error_detail {
                    let message = detail.message.unwrap_or_default();
                    return Err(failed(format!("{message}\n{output}")));
                }
                if let Some(line) = info.stream {
                    output.push_str(&line);
                }
            }
            Err(error) => return Err(failed(format!("{error}\n{output}"))),
        }
    }
    Ok(())
}

/// Packs the Dockerfile and the binary into a tar archive, the build context of the image.
fn build_context(binary: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut archive = tar::Builder::new(Vec::new());
    for (name, mode, content) in
        [("Dockerfile", 0o644, DOCKERFILE.as_bytes()), ("mock-ersap", 0o755, binary)]
    {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(mode);
        header.set_cksum();
        archive.append_data(&mut header, name, content)?;
    }
    archive.into_inner()
}

/// Returns the statically linked `mock-ersap`: the one named by `TESTBED_DOCKER_MOCK_BIN`, or
/// the one cargo builds in the workspace this harness was built from.
async fn static_binary() -> Result<PathBuf, BackendError> {
    if let Some(path) = std::env::var_os(STATIC_MOCK_BIN_ENV).filter(|path| !path.is_empty()) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(BackendError::Environment(format!(
                "{STATIC_MOCK_BIN_ENV} names {}, which is not a file",
                path.display()
            )));
        }
        return Ok(path);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(Path::new("."));
    if !workspace.join("Cargo.toml").is_file() {
        return Err(BackendError::Environment(format!(
            "the workspace {} that this harness was built from is gone, so it cannot build the \
             static mock-ersap\n  (hint: set {STATIC_MOCK_BIN_ENV} to a statically linked \
             mock-ersap)",
            workspace.display()
        )));
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    info!(%target, workspace = %workspace.display(), "building the static mock-ersap");
    let output = tokio::process::Command::new(&cargo)
        .current_dir(workspace)
        .args(["build", "--package", "testbed", "--bin", "mock-ersap"])
        .args(["--target", &target, "--message-format=json-render-diagnostics"])
        .args(if cfg!(debug_assertions) { &[][..] } else { &["--release"][..] })
        // CARGO_ENCODED_RUSTFLAGS, which cargo sets for build scripts, would win over RUSTFLAGS.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("RUSTFLAGS", STATIC_RUSTFLAGS)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|error| {
            BackendError::Environment(format!(
                "cannot run {} to build the static mock-ersap: {error}\n  (hint: put cargo on \
                 the PATH, or set {STATIC_MOCK_BIN_ENV} to a statically linked mock-ersap)",
                cargo.to_string_lossy()
            ))
        })?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        let hint = if stderr.contains("target may not be installed") {
            format!("\n  (hint: install the target with `rustup target add {target}`)")
        } else {
            String::new()
        };
        return Err(BackendError::Environment(format!(
            "building the static mock-ersap for {target} failed ({}):\n{}{hint}",
            output.status,
            tail.join("\n")
        )));
    }
    executable_from_messages(&String::from_utf8_lossy(&output.stdout)).ok_or_else(|| {
        BackendError::Environment(format!(
            "cargo built the static mock-ersap for {target} but named no executable"
        ))
    })
}

/// Finds the executable of the `mock-ersap` target in cargo's JSON messages.
fn executable_from_messages(messages: &str) -> Option<PathBuf> {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact")
        .filter(|message| message["target"]["name"] == "mock-ersap")
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
}

/// Returns the program interpreter (the dynamic loader) that an ELF binary requests, or
/// `None` for a static binary or a file that is not a 64-bit little-endian ELF.
fn elf_interpreter(bytes: &[u8]) -> Option<String> {
    const PT_INTERP: u32 = 3;
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return None;
    }
    let read_u16 = |at: usize| bytes.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let read_u32 = |at: usize| {
        bytes.get(at..at + 4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    let read_u64 = |at: usize| {
        bytes.get(at..at + 8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    // ELF64 header: e_phoff at 0x20, e_phentsize at 0x36, e_phnum at 0x38. Program header:
    // p_type at 0, p_offset at 8, p_filesz at 32.
    let table = usize::try_from(read_u64(0x20)?).ok()?;
    let entry_size = usize::from(read_u16(0x36)?);
    let count = usize::from(read_u16(0x38)?);
    (0..count).find_map(|index| {
        let header = table.checked_add(index.checked_mul(entry_size)?)?;
        if read_u32(header)? != PT_INTERP {
            return None;
        }
        let offset = usize::try_from(read_u64(header + 8)?).ok()?;
        let size = usize::try_from(read_u64(header + 32)?).ok()?;
        let path = bytes.get(offset..offset.checked_add(size)?)?;
        Some(String::from_utf8_lossy(path).trim_end_matches('\0').to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_changes_with_the_binary() {
        let first = content_tag(b"binary one");
        assert_eq!(first.len(), 16);
        assert!(first.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(first, content_tag(b"binary one"));
        assert_ne!(first, content_tag(b"binary two"));
    }

    #[test]
    fn interpreter_of_this_test_binary_is_found() {
        // Test binaries are linked dynamically against glibc unless RUSTFLAGS requests
        // static linking.
        let bytes = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        if let Some(interpreter) = elf_interpreter(&bytes) {
            assert!(interpreter.contains("ld-linux"), "{interpreter}");
        }
    }

    #[test]
    fn non_elf_bytes_have_no_interpreter() {
        assert_eq!(elf_interpreter(b"#!/bin/sh\necho hello\n"), None);
        assert_eq!(elf_interpreter(&[0x7f, b'E', b'L', b'F']), None);
    }

    #[test]
    fn executable_is_read_from_cargo_messages() {
        let messages = concat!(
            r#"{"reason":"compiler-artifact","target":{"name":"testbed"},"executable":null}"#,
            "\n",
            r#"{"reason":"compiler-artifact","target":{"name":"mock-ersap"},"#,
            r#""executable":"/t/release/mock-ersap"}"#,
            "\n",
            r#"{"reason":"build-finished","success":true}"#,
        );
        assert_eq!(
            executable_from_messages(messages),
            Some(PathBuf::from("/t/release/mock-ersap"))
        );
    }

    #[test]
    fn build_context_holds_dockerfile_and_binary() {
        let context = build_context(b"\x7fELF-not-really").unwrap();
        let mut archive = tar::Archive::new(context.as_slice());
        let entries: Vec<(String, u32)> = archive
            .entries()
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                let path = entry.path().unwrap().display().to_string();
                (path, entry.header().mode().unwrap())
            })
            .collect();
        assert_eq!(entries, vec![("Dockerfile".to_string(), 0o644), ("mock-ersap".into(), 0o755)]);
    }
}

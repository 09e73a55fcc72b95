//! The real service binaries, for tests that run them as separate processes.
//!
//! This crate is not the package of those binaries, so cargo gives it no `CARGO_BIN_EXE_*`. The
//! first call builds them with the cargo that runs the tests (`$CARGO`), into the same target
//! directory and profile as the running test executable, and asks cargo where it put them
//! (`--message-format=json`) instead of guessing paths:
//! - under `cargo test --workspace` every service package has integration tests, so cargo has
//!   already built these binaries with the same features: the nested build finds them fresh
//!   and costs a second or two;
//! - under `cargo test -p integration` it builds whatever is missing or stale, so a test never
//!   runs an old binary.
//!
//! Cargo releases its build lock before it runs test executables, so the nested build does not
//! wait on the outer one; when another build holds the lock it waits, as any cargo does.
//! `TICKETFLOW_BIN_DIR=<dir>` skips the build and takes the binaries from `<dir>` (e.g. a release
//! build or an installed image).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::Context;

/// Every service binary, in the order the launcher starts them.
pub const SERVICES: [&str; 5] = ["identity", "catalog", "ordering", "notifications", "gateway"];

/// The path of service binary `name` (one of [`SERVICES`]), building them all on the first call.
pub fn path(name: &str) -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<HashMap<String, PathBuf>, String>> = OnceLock::new();
    if let Some(dir) = std::env::var_os("TICKETFLOW_BIN_DIR") {
        let path = Path::new(&dir).join(name);
        anyhow::ensure!(path.is_file(), "TICKETFLOW_BIN_DIR has no binary {}", path.display());
        return Ok(path);
    }
    let built = BUILT.get_or_init(|| build().map_err(|error| format!("{error:#}")));
    match built {
        Ok(paths) => paths.get(name).cloned().with_context(|| format!("{name} is not a service binary")),
        Err(error) => anyhow::bail!("building the service binaries failed: {error}"),
    }
}

fn build() -> anyhow::Result<HashMap<String, PathBuf>> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut command = Command::new(cargo);
    command
        .current_dir(&workspace)
        .arg("build")
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .arg("--message-format=json-render-diagnostics");
    for service in SERVICES {
        command.args(["--package", service, "--bin", service]);
    }
    let exe = std::env::current_exe().context("locating the test executable")?;
    // <target-dir>/<profile-dir>/deps/<test-exe>
    if let Some(profile_dir) = exe.parent().and_then(Path::parent) {
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev".to_owned(),
            Some(other) => other.to_owned(),
        };
        command.args(["--profile", &profile]);
    }
    // The target directory is the ancestor holding cargo's own files (CACHEDIR.TAG is missing when
    // the directory existed before cargo's first build). Passing it explicitly covers a
    // `--target-dir` given on the outer command line, which the environment does not carry.
    let is_target_dir =
        |dir: &Path| dir.join(".rustc_info.json").is_file() || dir.join("CACHEDIR.TAG").is_file();
    if let Some(target_dir) = exe.ancestors().find(|dir| is_target_dir(dir)) {
        command.arg("--target-dir").arg(target_dir);
    }

    let output = command.output().context("running cargo build for the service binaries")?;
    if !output.status.success() {
        anyhow::bail!(
            "`cargo build` of the service binaries failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let mut paths = HashMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let name = message["target"]["name"].as_str().unwrap_or_default();
        if message["reason"] == "compiler-artifact"
            && SERVICES.contains(&name)
            && let Some(executable) = message["executable"].as_str()
        {
            paths.insert(name.to_owned(), PathBuf::from(executable));
        }
    }
    let missing: Vec<_> = SERVICES.iter().filter(|s| !paths.contains_key(**s)).collect();
    anyhow::ensure!(missing.is_empty(), "cargo reported no executable for {missing:?}");
    Ok(paths)
}

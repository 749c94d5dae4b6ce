//! Where the `callbridge` binary is. The integration tests belong to its package (`cli/`, whose
//! `tests` links here), so cargo builds it with them and names it in `CARGO_BIN_EXE_callbridge`.
//! Code of another package that includes this file (the server's `store_open` bench) has no such
//! variable: the first call builds the binary into the target directory it runs from, with its
//! profile, and later calls reuse it. `CALLBRIDGE_BIN` names another binary instead.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The path of the `callbridge` binary (built once per process when cargo did not).
pub fn callbridge_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("CALLBRIDGE_BIN") {
            return PathBuf::from(bin);
        }
        if let Some(bin) = option_env!("CARGO_BIN_EXE_callbridge") {
            return PathBuf::from(bin);
        }
        // This test runs as <target>/<profile dir>/deps/<test>-<hash>.
        let exe = std::env::current_exe().expect("the test's own path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the test binary lives in <target>/<profile>/deps");
        let target_dir = profile_dir.parent().expect("<target>/<profile>");
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => "dev",
            Some(name) => name,
            None => panic!("no profile directory in {}", exe.display()),
        };
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build.args([
            "build",
            "--quiet",
            "--package",
            "callbridge-cli",
            "--bin",
            "callbridge",
        ]);
        // A build of this crate with the fjall engine spawns a server that has it too.
        if cfg!(feature = "engine-fjall") {
            build.args(["--features", "engine-fjall"]);
        }
        let status = build
            .args(["--profile", profile])
            .arg("--target-dir")
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("running cargo build for the callbridge binary");
        assert!(status.success(), "building the callbridge binary failed");
        profile_dir.join("callbridge")
    })
}

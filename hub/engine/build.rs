//! Builds the plugins in `plugins/` for wasm32-wasip2, so `hub up` has its examples and the
//! tests have real components, with one `cargo` command. They go to `<target>/plugins/`
//! (a target dir of their own, so this nested build never waits on the outer one's lock).

use std::path::{Path, PathBuf};
use std::process::Command;

const EXAMPLES: &[&str] = &["clickstream", "cart-abandonment", "payment-trouble"];
/// Reference scenarios of real deployments (loaded by their tests, not by `hub up`).
const REFERENCE: &[&str] = &[
    "customer-creation",
    "energy-metering",
    "tv-audience",
    "marketing-cart",
    "support-first",
    "notify",
];
const FIXTURES: &[&str] = &["chaos", "counter", "counter-v2", "wrong-world", "bare"];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    // hub/engine/ → the workspace root, which holds plugins/ and wit/.
    let root = manifest
        .ancestors()
        .nth(2)
        .expect("hub/engine/ is inside the workspace")
        .to_path_buf();
    for dir in ["plugins", "plugin-sdk", "wit", "Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("plugins");
    let examples = target.join("examples");
    let fixtures = target.join("fixtures");
    let reference = target.join("reference");
    println!("cargo:rustc-env=HUB_EXAMPLE_PLUGINS={}", examples.display());
    println!("cargo:rustc-env=HUB_REFERENCE_PLUGINS={}", reference.display());
    println!("cargo:rustc-env=HUB_FIXTURE_PLUGINS={}", fixtures.display());
    if std::env::var_os("HUB_SKIP_PLUGIN_BUILD").is_some() {
        return;
    }

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args([
            "build",
            "--profile",
            "plugin",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target);
    for p in EXAMPLES.iter().chain(REFERENCE).chain(FIXTURES) {
        cmd.args(["-p", p]);
    }
    // The outer build's flags and wrappers (clippy, coverage…) are for the host, not the guests.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("cannot run cargo to build the plugins");
    if !status.success() {
        panic!(
            "building the plugins for wasm32-wasip2 failed; is the target installed? \
             Run `rustup target add wasm32-wasip2`"
        );
    }
    let built = target.join("wasm32-wasip2").join("plugin");
    copy(&built, &examples, EXAMPLES);
    copy(&built, &reference, REFERENCE);
    copy(&built, &fixtures, FIXTURES);
}

fn copy(from: &Path, to: &Path, crates: &[&str]) {
    std::fs::create_dir_all(to).expect("create plugin output folder");
    for name in crates {
        let file = format!("{}.wasm", name.replace('-', "_"));
        std::fs::copy(from.join(&file), to.join(&file)).unwrap_or_else(|e| panic!("copy {file}: {e}"));
    }
}

//! `hub plugin build`: turn a plugin project into a component, then show what the hub will see
//! of it (size, name, subscriptions), checked by the hub's own loader.

use anyhow::{Context, bail};
use clap::Args;
use hub::config::PluginLimits;
use hub::runtime::{PluginModule, Runtime};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

#[derive(Args)]
pub struct BuildArgs {
    /// The project: a Rust crate (Cargo.toml) or a Python app (app.py) [default: .]
    dir: Option<PathBuf>,
    /// Where to write the component [default: cargo's target folder for Rust, DIR/NAME.wasm for Python]
    #[arg(long, short)]
    out: Option<PathBuf>,
}

pub fn run(args: BuildArgs) -> anyhow::Result<()> {
    let dir = args.dir.unwrap_or_else(|| PathBuf::from("."));
    let wasm = if dir.join("Cargo.toml").is_file() {
        let built = build_rust(&dir)?;
        match args.out {
            Some(out) => {
                std::fs::copy(&built, &out).with_context(|| format!("cannot copy to {}", out.display()))?;
                out
            }
            None => built,
        }
    } else if dir.join("app.py").is_file() {
        super::python::build(&dir, args.out.as_deref())?
    } else {
        bail!("{} holds neither a Cargo.toml nor an app.py", dir.display());
    };
    show(&wasm)
}

/// `cargo build` for wasm32-wasip2 with the `plugin` profile when the workspace defines one
/// (release otherwise); the component's path comes from cargo's own report of what it built.
fn build_rust(dir: &Path) -> anyhow::Result<PathBuf> {
    let manifest = dir.join("Cargo.toml");
    let profile = if defines_plugin_profile(dir) {
        "plugin"
    } else {
        "release"
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args(["build", "--target", "wasm32-wasip2", "--profile", profile])
        .args(["--message-format", "json-render-diagnostics", "--manifest-path"])
        .arg(&manifest)
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo")?;
    if !output.status.success() {
        bail!("cargo build failed (is the target installed? `rustup target add wasm32-wasip2`)");
    }
    let manifest = manifest.canonicalize()?;
    let built = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter(|m| m["manifest_path"].as_str().map(Path::new) == Some(manifest.as_path()))
        .flat_map(|m| m["filenames"].as_array().cloned().unwrap_or_default())
        .filter_map(|f| f.as_str().map(PathBuf::from))
        .find(|f| f.extension().is_some_and(|e| e == "wasm"));
    built.context("cargo built no .wasm: is the crate a `cdylib` (see `hub plugin new`)?")
}

/// Whether the workspace of the crate in `dir` (the nearest Cargo.toml up from it with a
/// `[workspace]` table, or its own) defines `[profile.plugin]`.
fn defines_plugin_profile(dir: &Path) -> bool {
    let Ok(dir) = dir.canonicalize() else {
        return false;
    };
    let own = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap_or_default();
    let root = dir
        .ancestors()
        .filter_map(|d| std::fs::read_to_string(d.join("Cargo.toml")).ok())
        .find(|text| text.contains("[workspace]"))
        .unwrap_or(own);
    root.contains("[profile.plugin]")
}

/// Load the component as the hub would and print what it says about itself.
fn show(wasm: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(wasm).with_context(|| format!("cannot read {}", wasm.display()))?;
    let runtime = Runtime::new(PluginLimits::default()).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let refused = || format!("{} is refused by the hub", wasm.display());
    let component = PluginModule::compile(&runtime, &bytes).with_context(refused)?;
    let d = PluginModule::describe(&runtime, &component).with_context(refused)?;
    println!("built {} ({})", wasm.display(), size(bytes.len()));
    println!("  {} {}", d.name, d.version);
    println!("  subscribes: {}", d.subscribes.join(", "));
    if !d.emits.is_empty() {
        println!("  emits:      {}", d.emits.join(", "));
    }
    Ok(())
}

fn size(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / f64::from(1 << 20)),
        b => format!("{:.1} KiB", b as f64 / 1024.0),
    }
}

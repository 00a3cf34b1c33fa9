//! Building a Python plugin: componentize-py (from PyPI) turns `app.py`, the Python SDK
//! (`hub_plugin/`) and the pure-Python libraries it imports into a component of the hub's WIT
//! world. The WIT world and the SDK are compiled into this binary, so a project needs neither:
//! a project's own copy of `hub_plugin/` (as `hub plugin new` writes it) wins over the built-in one.
//!
//! `--stub-wasi`: the component imports no WASI at all (the hub links only an empty WASI).
//!
//! componentize-py runs the app once at build time and leaves `__pycache__/` in every folder it
//! imports from, so it builds from a copy of the project: a build writes nothing but the
//! component. Pure-Python libraries (u-msgpack-python) come from the environment of the
//! `python3` on the PATH (or the active virtualenv), where `pip install -r requirements.txt` put
//! them.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The WIT world every plugin implements.
const WIT: &str = include_str!("../../../../wit/plugin.wit");

/// The Python SDK, as (path in a project, text).
pub const SDK: &[(&str, &str)] = &[
    (
        "hub_plugin/__init__.py",
        include_str!("../../../../plugin-sdk/python/hub_plugin/__init__.py"),
    ),
    (
        "hub_plugin/component.py",
        include_str!("../../../../plugin-sdk/python/hub_plugin/component.py"),
    ),
    (
        "hub_plugin/config.py",
        include_str!("../../../../plugin-sdk/python/hub_plugin/config.py"),
    ),
    (
        "hub_plugin/context.py",
        include_str!("../../../../plugin-sdk/python/hub_plugin/context.py"),
    ),
    (
        "hub_plugin/duration.py",
        include_str!("../../../../plugin-sdk/python/hub_plugin/duration.py"),
    ),
    (
        "hub_plugin/pattern.py",
        include_str!("../../../../plugin-sdk/python/hub_plugin/pattern.py"),
    ),
    (
        "hub_plugin/plugin.py",
        include_str!("../../../../plugin-sdk/python/hub_plugin/plugin.py"),
    ),
    (
        "hub_plugin/testing.py",
        include_str!("../../../../plugin-sdk/python/hub_plugin/testing.py"),
    ),
    (
        "hub_plugin/types.py",
        include_str!("../../../../plugin-sdk/python/hub_plugin/types.py"),
    ),
];

/// What to install when componentize-py is missing.
const INSTALL: &str = "pip install componentize-py==0.25.1 u-msgpack-python==2.8.0";

/// Build the project in `dir` into `out` [default: `DIR/<folder name>.wasm`, `_` for `-`].
pub fn build(dir: &Path, out: Option<&Path>) -> anyhow::Result<PathBuf> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    let out = match out {
        Some(out) => std::path::absolute(out)?,
        None => {
            let name = dir.file_name().context("the project folder has no name")?;
            dir.join(format!("{}.wasm", name.to_string_lossy().replace('-', "_")))
        }
    };
    let scratch = tempfile::tempdir().context("cannot create a temporary folder")?;
    let wit = scratch.path().join("wit");
    std::fs::create_dir(&wit)?;
    std::fs::write(wit.join("plugin.wit"), WIT)?;
    let project = scratch.path().join("app");
    copy_sources(&dir, &project)?;
    let sdk = scratch.path().join("sdk");
    for (path, text) in SDK {
        let file = sdk.join(path);
        std::fs::create_dir_all(file.parent().context("a file in a folder")?)?;
        std::fs::write(&file, text)?;
    }
    let status = Command::new("componentize-py")
        .arg("-d")
        .arg(&wit)
        .args(["-w", "plugin", "componentize", "app", "--stub-wasi", "-p"])
        .arg(&project)
        .arg("-p")
        .arg(&sdk)
        .arg("-o")
        .arg(&out)
        .current_dir(&project)
        // A failed build prints the Python error; a Rust backtrace of the tool would bury it.
        .env("RUST_BACKTRACE", "0")
        .status();
    match status {
        Ok(s) if s.success() => Ok(out),
        Ok(s) => bail!("componentize-py failed ({s}): the Python error is above"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("componentize-py is not installed: {INSTALL}")
        }
        Err(e) => Err(e).context("cannot run componentize-py"),
    }
}

/// Copy the project's files, leaving out what builds and tools leave behind.
fn copy_sources(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let skip = name.to_string_lossy().starts_with('.')
            || name == "__pycache__"
            || Path::new(&name).extension().is_some_and(|e| e == "wasm");
        if skip {
            continue;
        }
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            copy_sources(&path, &to.join(&name))?;
        } else {
            std::fs::copy(&path, to.join(&name)).with_context(|| format!("cannot copy {}", path.display()))?;
        }
    }
    Ok(())
}

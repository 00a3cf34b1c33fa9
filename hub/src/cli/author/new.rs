//! `hub plugin new`: write a plugin project that builds, and whose own tests pass, as written.
//!
//! The templates are compiled into the binary, so `hub` alone is enough to start a plugin. A
//! Rust project depends on this repository's SDK by path (`--sdk`); a Python project gets its
//! own copy of the Python SDK (`hub_plugin/`), so it runs under plain CPython with no install.

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, ValueEnum)]
pub enum Lang {
    Rust,
    Python,
}

#[derive(Args)]
pub struct NewArgs {
    /// The plugin's name (letters, digits, '-' or '_'); also the project's folder
    name: String,
    #[arg(long, value_enum, default_value = "rust")]
    lang: Lang,
    /// Where to create the project [default: ./NAME]
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The Rust plugin SDK to depend on [default: the one this hub was built from]
    #[arg(long)]
    sdk: Option<PathBuf>,
}

/// A template file: where it goes in the project, and its text with `{{…}}` placeholders.
type File = (&'static str, &'static str);

const RUST: &[File] = &[
    (
        "Cargo.toml",
        include_str!("../../../../plugin-sdk/template/Cargo.toml.in"),
    ),
    ("src/lib.rs", include_str!("../../../../plugin-sdk/template/src/lib.rs")),
    (
        "events.jsonl",
        include_str!("../../../../plugin-sdk/template/events.jsonl"),
    ),
    ("README.md", include_str!("../../../../plugin-sdk/template/README.md")),
    (".gitignore", include_str!("../../../../plugin-sdk/template/gitignore")),
];

/// With the SDK (`super::python::SDK`) beside it.
const PYTHON: &[File] = &[
    ("app.py", include_str!("../../../../plugin-sdk/python/template/app.py")),
    (
        "tests/__init__.py",
        include_str!("../../../../plugin-sdk/python/template/tests/__init__.py"),
    ),
    (
        "tests/test_app.py",
        include_str!("../../../../plugin-sdk/python/template/tests/test_app.py"),
    ),
    (
        "events.jsonl",
        include_str!("../../../../plugin-sdk/python/template/events.jsonl"),
    ),
    (
        "requirements.txt",
        include_str!("../../../../plugin-sdk/python/template/requirements.txt"),
    ),
    (
        "README.md",
        include_str!("../../../../plugin-sdk/python/template/README.md"),
    ),
    (
        ".gitignore",
        include_str!("../../../../plugin-sdk/python/template/gitignore"),
    ),
];

pub fn run(args: NewArgs) -> anyhow::Result<()> {
    let name = args.name;
    if !hub::runtime::valid_name(&name) || !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        bail!("{name:?} cannot name a plugin: use 1–64 letters, digits, '-' or '_', starting with a letter");
    }
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(&name));
    if dir.exists() && dir.read_dir().map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{} already exists and is not empty", dir.display());
    }
    let module = name.replace('-', "_");
    let (files, sdk): (Vec<&File>, _) = match args.lang {
        Lang::Rust => (RUST.iter().collect(), Some(rust_sdk(args.sdk)?)),
        Lang::Python => (PYTHON.iter().chain(super::python::SDK).collect(), None),
    };
    for (path, template) in &files {
        let text = template
            .replace("{{name}}", &name)
            .replace("{{crate}}", &module)
            .replace("{{module}}", &module)
            .replace(
                "{{sdk}}",
                &sdk.as_deref().map(|p| p.display().to_string()).unwrap_or_default(),
            );
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&target, text).with_context(|| format!("cannot write {}", target.display()))?;
    }
    println!("created {} ({} files); next, in {0}:", dir.display(), files.len());
    for line in std::fs::read_to_string(dir.join("README.md"))?.lines() {
        println!("  {line}");
    }
    Ok(())
}

/// The SDK a Rust project depends on: `--sdk`, or the one next to the hub's own sources.
fn rust_sdk(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let sdk = given.unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-sdk"));
    if !sdk.join("Cargo.toml").is_file() {
        bail!(
            "no plugin SDK at {}: pass --sdk with the path of plugin-sdk/ in a checkout of hub",
            sdk.display()
        );
    }
    sdk.canonicalize()
        .with_context(|| format!("cannot resolve {}", sdk.display()))
}

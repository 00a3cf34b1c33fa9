//! Where the `hub` command logs and how: readable text on stderr by default, or one JSON object
//! per line (`--log-format json`) for a log shipper; to a file for the tools that print a report
//! (`hub bench`, `hub crash-test`), so that the logs of the hubs they start stay out of it.

use anyhow::Context;
use std::fs::{File, OpenOptions};
use std::io::IsTerminal;
use std::path::Path;
use std::sync::Mutex;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// What is logged unless `RUST_LOG` says otherwise: the hub's information, and only the warnings
/// of the libraries under it.
const DEFAULT_FILTER: &str = "info,async_nats=warn,sled=warn,cranelift=warn,wasmtime=warn";

/// How log lines are written.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LogFormat {
    /// A readable line per event, for people.
    Text,
    /// A JSON object per line with the event's fields at the top level, for log shippers.
    Json,
}

/// Install the process's logger: to `file` if given, else to stderr.
pub(super) fn init(format: LogFormat, file: Option<&Path>) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let writer = match file {
        Some(path) => BoxMakeWriter::new(Mutex::new(open(path)?)),
        None => BoxMakeWriter::new(std::io::stderr),
    };
    let layer = match format {
        LogFormat::Text => {
            let text = tracing_subscriber::fmt::layer().with_writer(writer);
            // Colours only on a terminal: in a file (ours, or stderr redirected, as the crash
            // test's hubs have it) they are noise for a pager or grep.
            match file.is_none() && std::io::stderr().is_terminal() {
                true => text.boxed(),
                false => text.with_ansi(false).boxed(),
            }
        }
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_ansi(false)
            .with_writer(writer)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .try_init()
        .context("cannot install the logger")?;
    if let Some(path) = file {
        eprintln!("hub logs → {}", path.display());
    }
    Ok(())
}

/// Empty `path`, then open it for appending: the child processes that are handed the same file
/// (`hub crash-test`'s hubs) append too, so no writer overwrites another's lines.
fn open(path: &Path) -> anyhow::Result<File> {
    let cannot = || format!("cannot open the log file {}", path.display());
    File::create(path).with_context(cannot)?;
    OpenOptions::new().append(true).open(path).with_context(cannot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;

    #[test]
    fn the_format_is_a_global_flag_and_text_by_default() {
        let format = |args: &[&str]| Cli::try_parse_from(args).map(|cli| cli.log_format).ok();
        assert_eq!(format(&["hub", "up"]), Some(LogFormat::Text));
        assert_eq!(format(&["hub", "--log-format", "json", "up"]), Some(LogFormat::Json));
        assert_eq!(
            format(&["hub", "run", "--config", "hub.toml", "--log-format", "json"]),
            Some(LogFormat::Json)
        );
        assert_eq!(format(&["hub", "--log-format", "logfmt", "up"]), None);
    }
}

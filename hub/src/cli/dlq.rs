//! `hub dlq ls | show | replay`: the kept dead letters (`/api/dead-letters`).

use super::api_client::{ApiArgs, print_json};
use clap::{Args, Subcommand};
use comfy_table::{Table, presets::UTF8_BORDERS_ONLY};
use hub::api::dead_letters::{LetterList, Replayed};

#[derive(Args)]
pub struct DlqArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(Subcommand)]
enum DlqCommand {
    /// The newest dead letters, and how many are kept of each reason
    Ls {
        /// Only this reason (e.g. trap, undecodable)
        #[arg(long)]
        reason: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// One letter: why, where from, headers and body
    Show { seq: u64 },
    /// Send letters back into the hub once their cause is fixed: one by SEQ, or all of --reason
    Replay {
        #[arg(required_unless_present = "reason", conflicts_with = "reason")]
        seq: Option<u64>,
        #[arg(long)]
        reason: Option<String>,
    },
}

pub async fn run(args: DlqArgs) -> anyhow::Result<()> {
    let client = args.api.client();
    let json = args.api.json;
    match args.command {
        DlqCommand::Ls { reason, limit } => {
            let mut path = format!("/api/dead-letters?limit={limit}");
            if let Some(r) = reason {
                path.push_str(&format!(
                    "&reason={}",
                    percent_encoding::utf8_percent_encode(&r, percent_encoding::NON_ALPHANUMERIC)
                ));
            }
            let (body, list): (String, LetterList) = client.get(&path).await?;
            if json {
                return print_json(&body);
            }
            let counts: Vec<String> = list.by_reason.iter().map(|(r, n)| format!("{r} {n}")).collect();
            println!(
                "kept: {}",
                if counts.is_empty() {
                    "none".into()
                } else {
                    counts.join(", ")
                }
            );
            let mut table = Table::new();
            table
                .load_preset(UTF8_BORDERS_ONLY)
                .set_header(["seq", "at", "reason", "plugin", "from", "detail"]);
            for l in list.letters {
                table.add_row([
                    l.seq.to_string(),
                    hub::event::rfc3339(l.at),
                    l.reason,
                    l.plugin.unwrap_or_default(),
                    l.subject,
                    l.detail.chars().take(100).collect(),
                ]);
            }
            println!("{table}");
        }
        DlqCommand::Show { seq } => {
            let (body, _): (String, serde_json::Value) = client.get(&format!("/api/dead-letters/{seq}")).await?;
            print_json(&body)?;
        }
        DlqCommand::Replay { seq, reason } => {
            let request = match (seq, reason) {
                (Some(seq), _) => client.request(reqwest::Method::POST, &format!("/api/dead-letters/{seq}/replay")),
                (None, Some(reason)) => client
                    .request(reqwest::Method::POST, "/api/dead-letters/replay")
                    .query(&[("reason", reason)]),
                (None, None) => anyhow::bail!("give a letter's SEQ or --reason"),
            };
            let body = client.send(request).await?;
            if json {
                return print_json(&body);
            }
            let done: Replayed = serde_json::from_str(&body)?;
            println!("replayed {}", done.replayed);
            for why in &done.refused {
                println!("kept: {why}");
            }
        }
    }
    Ok(())
}

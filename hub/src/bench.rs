//! `hub bench` (filled in below).
#[derive(clap::Args)]
pub struct BenchArgs {}
pub async fn run(_args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("bench: work in progress")
}

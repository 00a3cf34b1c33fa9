fn main() -> anyhow::Result<()> {
    hub::cli::main()
}

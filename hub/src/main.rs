/// mimalloc instead of the system allocator: the hub allocates many small, short-lived buffers
/// across threads (NATS messages, plugin call arguments, sled pages), where glibc's malloc spent a
/// quarter of the shard threads' time consolidating (measured with perf under `hub bench`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Errors are printed as their chain of causes, for a person; no stack trace.
fn main() -> std::process::ExitCode {
    match hub::cli::main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

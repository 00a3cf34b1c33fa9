//! The `hub` command: the engine (`hub-engine`, library `hub`) and the load generator
//! (`hub-bench`) behind one command line.

mod cli;

/// jemalloc instead of the system allocator: the hub allocates many small, short-lived buffers
/// on one thread and frees them on another (NATS messages, events handed to shards, sled pages).
/// glibc's malloc spent a quarter of the shard threads' time consolidating; mimalloc v3 still took
/// 14.6 % of all CPU time under `hub bench`, jemalloc 5.5 % (perf, same run length).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Errors are printed as their chain of causes, for a person; no stack trace.
fn main() -> std::process::ExitCode {
    match cli::main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

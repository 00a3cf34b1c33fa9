//! The CPU time a phase costs: this process (the hub and the load generator) and a private
//! nats-server. On a shared VM, throughput moves with the neighbours' load, while the CPU time
//! spent per input moves far less, so it is the figure by which to compare two builds.

use serde::Serialize;

/// `/proc/<pid>/stat` counts CPU time in ticks of 1/100 s (Linux's USER_HZ).
const TICK_US: f64 = 10_000.0;

/// CPU time per input, in µs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(super) struct CpuPerInput {
    /// The bench process: hub, load generator and receiver.
    pub(super) process_us: f64,
    /// The private nats-server; absent with `--nats`.
    pub(super) nats_server_us: Option<f64>,
}

/// CPU ticks used so far by this process and the server.
#[derive(Debug, Clone, Copy)]
pub(super) struct CpuMark {
    process: u64,
    server: Option<(u32, u64)>,
}

impl CpuMark {
    /// None where `/proc` is not there to read (not Linux).
    pub(super) fn now(server_pid: Option<u32>) -> Option<CpuMark> {
        Some(CpuMark {
            process: ticks("self")?,
            server: server_pid.and_then(|pid| Some((pid, ticks(&pid.to_string())?))),
        })
    }

    /// What was spent since this mark, per input.
    pub(super) fn per_input(&self, inputs: u64) -> Option<CpuPerInput> {
        if inputs == 0 {
            return None;
        }
        let per_input = |spent: u64| spent as f64 * TICK_US / inputs as f64;
        Some(CpuPerInput {
            process_us: per_input(ticks("self")?.saturating_sub(self.process)),
            nats_server_us: self
                .server
                .and_then(|(pid, before)| Some(per_input(ticks(&pid.to_string())?.saturating_sub(before)))),
        })
    }
}

/// User plus system ticks of a process (`self` or a pid).
pub(super) fn ticks(pid: &str) -> Option<u64> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Fields 14 (utime) and 15 (stime) of `/proc/<pid>/stat`. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted from its closing parenthesis (before field 3).
fn parse_stat(stat: &str) -> Option<u64> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_ascii_whitespace().skip(14 - 3);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_and_system_ticks_are_read_past_a_command_with_spaces() {
        let stat = "4242 (hub (bench) x) S 1 4242 4242 0 -1 4194560 500 0 0 0 700 45 0 0 20 0 9 0 1 2 3";
        assert_eq!(parse_stat(stat), Some(745));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_has_a_cpu_clock() {
        let mark = CpuMark::now(None).expect("/proc/self/stat");
        let spent = mark.per_input(1).expect("per input");
        assert!(spent.process_us >= 0.0);
        assert_eq!(spent.nats_server_us, None);
    }
}

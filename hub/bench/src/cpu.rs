//! The CPU time a phase costs: this process (the hub and the load generator) and a private
//! nats-server. On a shared VM, throughput moves with the neighbours' load, while the CPU time
//! spent per input moves far less, so it is the figure by which to compare two builds.

use procfs::process::Process;
use procfs::{CpuTime, CurrentSI, KernelStats};
use serde::Serialize;

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
        let tick_us = 1e6 / procfs::ticks_per_second() as f64;
        let per_input = |spent: u64| spent as f64 * tick_us / inputs as f64;
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
    let process = match pid {
        "self" => Process::myself(),
        pid => Process::new(pid.parse().ok()?),
    };
    let stat = process.ok()?.stat().ok()?;
    Some(stat.utime + stat.stime)
}

/// The machine's CPU time so far, to tell what share of a phase's its host gave other guests.
#[derive(Debug, Clone)]
pub(super) struct MachineMark(CpuTime);

impl MachineMark {
    /// None where `/proc/stat` is not there to read (not Linux).
    pub(super) fn now() -> Option<MachineMark> {
        Some(MachineMark(KernelStats::current().ok()?.total))
    }

    /// The share of the machine's CPU time since this mark that its host took for other
    /// guests (steal, 0 to 1): a latency measured while it is more than a few percent says as
    /// much about the neighbours as about what ran here.
    pub(super) fn stolen(&self) -> Option<f64> {
        let now = MachineMark::now()?;
        let all = now.all().checked_sub(self.all()).filter(|t| *t > 0)?;
        let stolen = now.0.steal.unwrap_or(0).saturating_sub(self.0.steal.unwrap_or(0));
        Some(stolen as f64 / all as f64)
    }

    fn all(&self) -> u64 {
        let t = &self.0;
        let optional = [t.iowait, t.irq, t.softirq, t.steal].into_iter().flatten();
        t.user + t.nice + t.system + t.idle + optional.sum::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_cpu_clock() {
        let mark = CpuMark::now(None).expect("/proc/self/stat");
        let spent = mark.per_input(1).expect("per input");
        assert!(spent.process_us >= 0.0);
        assert_eq!(spent.nats_server_us, None);
    }

    #[test]
    fn the_machine_has_a_clock_of_stolen_time() {
        let mark = MachineMark::now().expect("/proc/stat");
        // Spin until the kernel's CPU counters move (they tick every 10 ms).
        let stolen = loop {
            if let Some(stolen) = mark.stolen() {
                break stolen;
            }
            std::hint::spin_loop();
        };
        assert!((0.0..=1.0).contains(&stolen), "{stolen}");
    }
}

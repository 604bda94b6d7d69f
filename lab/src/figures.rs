//! What the benchmarks compute from their samples, and the memory and CPU
//! time of a process or of the machine, and the CPU a thread runs on.

use anyhow::{Context, Result, bail};

/// The median of `samples` (the upper one of an even count).
pub fn median(mut samples: Vec<f64>) -> f64 {
    quantile(&mut samples, 0.5)
}

/// The `q` quantile (0 to 1) of `samples`: the nearest sample by rank.
pub fn quantile(samples: &mut [f64], q: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
    samples[i]
}

/// The resident memory of process `pid` (`VmRSS`), in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .context("no VmRSS")
}

/// The value of a counter once it has stopped moving (read every 50 ms):
/// what a flood left counting when its last packets got through.
pub fn settled(read: impl Fn() -> Result<u64>) -> Result<u64> {
    let mut last = read()?;
    loop {
        std::thread::sleep(std::time::Duration::from_millis(50));
        let now = read()?;
        if now == last {
            return Ok(last);
        }
        last = now;
    }
}

/// CPU time used since boot, in seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuTime {
    /// Every state but idle and iowait.
    pub busy: f64,
    /// Of which softirq: where the kernel runs XDP and the TCP stack for
    /// received packets (unless a process's system call does).
    pub softirq: f64,
}

impl std::ops::Sub for CpuTime {
    type Output = CpuTime;

    fn sub(self, o: CpuTime) -> CpuTime {
        CpuTime {
            busy: self.busy - o.busy,
            softirq: self.softirq - o.softirq,
        }
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// The whole machine's CPU time (`/proc/stat`), all cores summed.
pub fn machine_cpu() -> Result<CpuTime> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    anyhow::ensure!(v.len() >= 8, "short /proc/stat line: {line}");
    // user nice system idle iowait irq softirq steal
    let tick = clock_ticks();
    Ok(CpuTime {
        busy: (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / tick,
        softirq: v[6] / tick,
    })
}

/// The CPU time (user + system, every thread) process `pid` used.
pub fn process_cpu(pid: u32) -> Result<f64> {
    let (user, system) = process_times(pid)?;
    Ok(user + system)
}

/// The CPU time process `pid` used (every thread), in seconds: in user
/// space and in the kernel (its system calls, and the receive work a send
/// on a veth runs inline for the peer).
pub fn process_times(pid: u32) -> Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command name, which may hold spaces: from the
    // state (field 3) on; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').context("no command name")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> {
        f.get(i)
            .and_then(|x| x.parse::<f64>().ok())
            .context("short /proc/PID/stat")
    };
    Ok((ticks(11)? / clock_ticks(), ticks(12)? / clock_ticks()))
}

/// Pins `pid` (0: the calling thread) to `cpu`.
pub fn pin(pid: u32, cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET writes within it, and
    // sched_setaffinity only reads it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(pid as i32, size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        bail!(
            "pinning {pid} to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_quantiles_are_samples() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 3.0);
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&mut v, 0.99), 99.0);
        assert!(rss_kib(std::process::id()).unwrap() > 0);
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(50) {}
        assert!(process_cpu(std::process::id()).unwrap() > 0.0);
        assert!(process_times(std::process::id()).unwrap().0 > 0.0);
        let m = machine_cpu().unwrap();
        assert!(m.busy > 0.0 && m.softirq <= m.busy);
    }
}

//! What the benchmarks compute from their samples, and the memory of a
//! process.

use anyhow::{Context, Result};

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
    }
}

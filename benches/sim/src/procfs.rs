//! CPU time and memory of a process, read from `/proc/<pid>/stat` and `/proc/<pid>/status`.
//!
//! Assumes Linux with `USER_HZ` = 100 (the kernel's fixed clock-tick unit for `/proc` on every
//! mainstream architecture). A [`Sampler`] polls a process at a fixed period so the report can
//! show CPU use over a window and peak memory; a missing process reads as `None`.

use std::time::Duration;

use serde::Serialize;

/// Clock ticks per second in `/proc/<pid>/stat`.
const USER_HZ: u64 = 100;

/// One reading of a process.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq, Serialize)]
pub struct ProcSample {
    /// User + system CPU time so far, ms.
    pub cpu_ms: u64,
    /// Resident set size, KiB (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident set size, KiB (`VmHWM`).
    pub hwm_kib: u64,
    /// Threads.
    pub threads: u64,
}

/// Reads `/proc/<pid>` (`pid` 0 means this process).
pub fn sample(pid: u32) -> Option<ProcSample> {
    let dir = if pid == 0 {
        "/proc/self".to_owned()
    } else {
        format!("/proc/{pid}")
    };
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
    let mut s = parse_status(&status);
    s.cpu_ms = parse_stat_cpu_ms(&stat)?;
    Some(s)
}

/// User + system CPU time in ms from the text of `/proc/<pid>/stat`.
pub fn parse_stat_cpu_ms(stat: &str) -> Option<u64> {
    // The command name is in parentheses and may hold spaces: fields count from after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15 (1-based, man proc).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * 1000 / USER_HZ)
}

/// `VmRSS`, `VmHWM` and `Threads` from the text of `/proc/<pid>/status`.
pub fn parse_status(status: &str) -> ProcSample {
    let mut s = ProcSample::default();
    for line in status.lines() {
        let mut parts = line.split_whitespace();
        let key = parts.next().unwrap_or("");
        let value: u64 = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        match key {
            "VmRSS:" => s.rss_kib = value,
            "VmHWM:" => s.hwm_kib = value,
            "Threads:" => s.threads = value,
            _ => {}
        }
    }
    s
}

/// Readings of one process over time.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Series {
    /// `(seconds since the sampler started, reading)`.
    pub samples: Vec<(f64, ProcSample)>,
}

impl Series {
    /// CPU used between `from` and `to` (seconds on the series' axis) as % of one core.
    pub fn cpu_percent(&self, from: f64, to: f64) -> Option<f64> {
        let a = self.samples.iter().find(|(t, _)| *t >= from)?;
        let b = self.samples.iter().rev().find(|(t, _)| *t <= to)?;
        let wall = b.0 - a.0;
        (wall > 0.0)
            .then(|| (b.1.cpu_ms.saturating_sub(a.1.cpu_ms)) as f64 / (wall * 1000.0) * 100.0)
    }

    /// Largest `VmRSS` between `from` and `to`, KiB.
    pub fn peak_rss_kib(&self, from: f64, to: f64) -> Option<u64> {
        self.samples
            .iter()
            .filter(|(t, _)| *t >= from && *t <= to)
            .map(|(_, s)| s.rss_kib)
            .max()
    }

    /// The last reading at or before `t`.
    pub fn at(&self, t: f64) -> Option<ProcSample> {
        self.samples
            .iter()
            .rev()
            .find(|(s, _)| *s <= t)
            .map(|(_, s)| *s)
    }
}

/// Polls a process every `period` until dropped.
#[derive(Debug)]
pub struct Sampler {
    series: std::sync::Arc<parking_lot::Mutex<Series>>,
    task: tokio::task::JoinHandle<()>,
    origin: tokio::time::Instant,
}

impl Sampler {
    /// Starts polling `pid` (0 = this process).
    pub fn start(pid: u32, period: Duration) -> Self {
        let series = std::sync::Arc::new(parking_lot::Mutex::new(Series::default()));
        let origin = tokio::time::Instant::now();
        let shared = series.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Some(s) = sample(pid) {
                    let t = origin.elapsed().as_secs_f64();
                    shared.lock().samples.push((t, s));
                }
            }
        });
        Self {
            series,
            task,
            origin,
        }
    }

    /// Seconds since the sampler started (the series' time axis).
    pub fn now(&self) -> f64 {
        self.origin.elapsed().as_secs_f64()
    }

    /// Takes one reading now (so a window's edges are exact) and returns a copy of the series.
    pub fn snapshot(&self, pid: u32) -> Series {
        if let Some(s) = sample(pid) {
            self.series.lock().samples.push((self.now(), s));
        }
        self.series.lock().clone()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_time_is_read_after_a_name_with_spaces_and_parentheses() {
        let stat = "1234 (my (odd) prog) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1000 100000 200 18446744073709551615";
        assert_eq!(parse_stat_cpu_ms(stat), Some(3_000));
        assert_eq!(parse_stat_cpu_ms("garbage"), None);
    }

    #[test]
    fn status_memory_fields_are_read_in_kib() {
        let status = "Name:\thandset\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\nThreads:\t7\n";
        let s = parse_status(status);
        assert_eq!((s.rss_kib, s.hwm_kib, s.threads), (10_240, 20_480, 7));
    }

    #[test]
    fn this_process_can_be_sampled() {
        let s = sample(0).expect("/proc/self is readable");
        assert!(s.rss_kib > 0 && s.threads >= 1);
    }

    #[test]
    fn cpu_percent_and_peak_come_from_the_window() {
        let at = |cpu_ms, rss_kib| ProcSample {
            cpu_ms,
            rss_kib,
            ..ProcSample::default()
        };
        let series = Series {
            samples: vec![(0.0, at(0, 100)), (1.0, at(500, 300)), (2.0, at(700, 200))],
        };
        assert_eq!(series.cpu_percent(0.0, 2.0), Some(35.0));
        assert_eq!(series.cpu_percent(1.0, 2.0), Some(20.0));
        assert_eq!(series.peak_rss_kib(0.5, 2.0), Some(300));
        assert_eq!(series.cpu_percent(5.0, 6.0), None);
    }
}

//! What machine a report was measured on, how much memory the process has used, and the date.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Host {
    /// CPU model name from /proc/cpuinfo, where the system tells it.
    pub cpu: Option<String>,
    /// Threads the cpu backend uses (`UNMASK_THREADS` or all cores).
    pub threads: usize,
    pub memory_bytes: Option<u64>,
    pub os: &'static str,
    pub arch: &'static str,
    /// 1-minute load average before the benchmark started: other work on the machine slows
    /// the figures, and a reader should know.
    pub load_average: Option<f64>,
}

impl Host {
    pub fn describe() -> Host {
        let cpu = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        });
        Host {
            cpu,
            threads: unmask_core::reference::parallel::threads(),
            memory_bytes: meminfo("MemTotal:"),
            os: std::env::consts::OS,
            arch: std::env::consts::ARCH,
            load_average: std::fs::read_to_string("/proc/loadavg")
                .ok()
                .and_then(|t| t.split_whitespace().next()?.parse().ok()),
        }
    }
}

/// The process's peak resident memory (`VmHWM`): weights, KV cache, buffers, all together.
pub fn peak_resident_bytes() -> Option<u64> {
    kib_field(
        &std::fs::read_to_string("/proc/self/status").ok()?,
        "VmHWM:",
    )
}

/// Memory the system could give without swapping (`MemAvailable`).
pub fn available_bytes() -> Option<u64> {
    meminfo("MemAvailable:")
}

fn meminfo(key: &str) -> Option<u64> {
    kib_field(&std::fs::read_to_string("/proc/meminfo").ok()?, key)
}

/// Reads a `Key:   1234 kB` line.
fn kib_field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line[key.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// Today's date in UTC as `YYYY-MM-DD` (days-to-civil conversion; no date crate needed).
pub fn utc_date() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    civil_date((secs / 86_400) as i64)
}

/// Howard Hinnant's `civil_from_days`.
fn civil_date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(11_016), "2000-02-29");
        assert_eq!(civil_date(20_454), "2026-01-01");
    }

    #[test]
    fn kib_fields_parse() {
        let status = "Name:\tunmask\nVmPeak:\t  200 kB\nVmHWM:\t   1234 kB\n";
        assert_eq!(kib_field(status, "VmHWM:"), Some(1234 * 1024));
        assert_eq!(kib_field(status, "VmRSS:"), None);
    }

    #[test]
    fn this_process_has_a_peak() {
        if cfg!(target_os = "linux") {
            assert!(peak_resident_bytes().unwrap() > 0);
        }
    }
}

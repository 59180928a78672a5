//! tcpdump, run while a group of calls runs: its filter (the server's segments that carry
//! payload, and SYN-ACKs), started until it listens, stopped with SIGINT once it has written
//! out what it holds, and the counts it reports.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::WireError;

/// tcpdump's kernel buffer, KiB (`-B`): several seconds of a thousand calls' messages, so a
/// briefly descheduled tcpdump drops nothing.
const CAPTURE_BUFFER_KIB: &str = "262144";
/// How long tcpdump may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Time given to tcpdump to write out what the kernel still holds before it is stopped.
const SETTLE: Duration = Duration::from_millis(500);
/// How long tcpdump may take to exit after SIGINT.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The BPF filter: TCP segments from one of `ports` that carry payload, plus SYN-ACKs (they
/// mark where each connection's byte stream starts). IPv6 only without extension headers.
pub fn filter(ports: &[u16]) -> String {
    let ports = ports
        .iter()
        .map(|p| format!("src port {p}"))
        .collect::<Vec<_>>()
        .join(" or ");
    format!(
        "tcp and ({ports}) and ((ip and ((ip[2:2] - ((ip[0] & 0xf) << 2) - ((tcp[12] & 0xf0) >> 2)) != 0 or (tcp[13] & 0x02) != 0)) or (ip6 and ip6[6] = 6 and ((ip6[4:2] - ((ip6[52] & 0xf0) >> 2)) != 0 or (ip6[53] & 0x02) != 0)))"
    )
}

/// A running tcpdump.
#[derive(Debug)]
pub struct Capture {
    child: tokio::process::Child,
    path: PathBuf,
    stderr: tokio::task::JoinHandle<String>,
}

/// What tcpdump reported when it stopped.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CaptureStats {
    /// The pcap file.
    pub file: String,
    /// "packets captured", as tcpdump counts them.
    pub captured: Option<u64>,
    /// "packets dropped by kernel": anything above 0 means messages are missing.
    pub dropped: Option<u64>,
}

impl Capture {
    /// Starts tcpdump on `iface`, writing the server's segments from `ports` to `path`, and
    /// waits until it listens.
    pub async fn start(iface: &str, ports: &[u16], path: &Path) -> Result<Self, WireError> {
        let mut command = tokio::process::Command::new("tcpdump");
        command.args(["-i", iface, "-s", "0", "-B", CAPTURE_BUFFER_KIB, "-U", "-n"]);
        command.args(["--time-stamp-precision", "nano"]);
        if is_root() {
            // tcpdump would otherwise drop to its own user and may not write to `path`.
            command.args(["-Z", "root"]);
        }
        command
            .arg("-w")
            .arg(path)
            .arg(filter(ports))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(WireError::Missing)?;
        let Some(stderr) = child.stderr.take() else {
            return Err(WireError::Missing(std::io::Error::other("no stderr pipe")));
        };
        let mut lines = BufReader::new(stderr).lines();
        let mut said = Vec::new();
        let listening = tokio::time::timeout(START_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                let ready = line.contains("listening on");
                said.push(line);
                if ready {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        if !listening {
            let _ = child.kill().await;
            return Err(WireError::Refused {
                iface: iface.to_owned(),
                stderr: said.join("; "),
            });
        }
        let stderr = tokio::spawn(async move {
            let mut rest = String::new();
            while let Ok(Some(line)) = lines.next_line().await {
                rest.push_str(&line);
                rest.push('\n');
            }
            rest
        });
        Ok(Self {
            child,
            path: path.to_owned(),
            stderr,
        })
    }

    /// Lets tcpdump write out what it still holds, stops it with SIGINT and reads its counts.
    pub async fn stop(mut self) -> Result<CaptureStats, WireError> {
        tokio::time::sleep(SETTLE).await;
        interrupt(&self.child);
        let exited = tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await;
        if !matches!(exited, Ok(Ok(_))) {
            let _ = self.child.kill().await;
        }
        let said = self.stderr.await.unwrap_or_default();
        let count = |what: &str| {
            said.lines()
                .find(|l| l.ends_with(what))
                .and_then(|l| l.split_whitespace().next()?.parse().ok())
        };
        Ok(CaptureStats {
            file: self.path.display().to_string(),
            captured: count("packets captured"),
            dropped: count("packets dropped by kernel"),
        })
    }
}

#[cfg(unix)]
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(not(unix))]
fn is_root() -> bool {
    false
}

#[cfg(unix)]
fn interrupt(child: &tokio::process::Child) {
    if let Some(pid) = child.id().and_then(|p| libc::pid_t::try_from(p).ok()) {
        // SAFETY: kill has no memory preconditions; `pid` is our own child, not yet reaped.
        unsafe {
            libc::kill(pid, libc::SIGINT);
        }
    }
}

#[cfg(not(unix))]
fn interrupt(_child: &tokio::process::Child) {}

//! The parent's side of the client processes: spawns `cable-bench client` children (each
//! under the per-process descriptor limit), sends every one the same request and merges
//! their replies.

use std::process::Stdio;

use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::client::{new_histogram, Recorded, Reply, Request};

struct Member {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

pub struct Fleet {
    members: Vec<Member>,
}

/// How the client processes are laid out (every scenario that spawns a fleet takes these).
#[derive(Debug, Clone, clap::Args)]
pub struct FleetArgs {
    /// Most connections per client process (each process may hold at most ~19,000 sockets).
    #[arg(long, default_value_t = 16_000)]
    pub per_process: usize,
    /// Connections per 127.0.0.x source address.
    #[arg(long, default_value_t = 4_000)]
    pub per_address: usize,
    /// Worker threads per client process.
    #[arg(long, default_value_t = 2)]
    pub client_threads: usize,
}

/// How `total` connections are split over processes of at most `per_process` each.
pub fn split(total: usize, per_process: usize) -> Vec<(usize, usize)> {
    let per_process = per_process.max(1);
    let processes = total.div_ceil(per_process).max(1);
    let base = total / processes;
    let extra = total % processes;
    let mut first = 0;
    (0..processes)
        .map(|p| {
            let count = base + usize::from(p < extra);
            let share = (first, count);
            first += count;
            share
        })
        .collect()
}

impl Fleet {
    /// Client processes for the clients `first .. first + total` (global indexes: their
    /// tokens and source addresses).
    pub fn spawn(
        url: &str,
        first: usize,
        total: usize,
        layout: &FleetArgs,
    ) -> std::io::Result<Fleet> {
        let exe = std::env::current_exe()?;
        let mut members = Vec::new();
        for (start, count) in split(total, layout.per_process) {
            let first = first + start;
            let mut child = Command::new(&exe)
                .arg("client")
                .arg("--url")
                .arg(url)
                .arg("--first")
                .arg(first.to_string())
                .arg("--count")
                .arg(count.to_string())
                .arg("--per-address")
                .arg(layout.per_address.to_string())
                .arg("--threads")
                .arg(layout.client_threads.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()?;
            let stdin = child.stdin.take().expect("piped stdin");
            let stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
            members.push(Member {
                child,
                stdin,
                stdout,
            });
        }
        Ok(Fleet { members })
    }

    pub fn processes(&self) -> usize {
        self.members.len()
    }

    /// CPU seconds used so far by the client processes together.
    pub fn cpu_seconds(&self) -> f64 {
        self.members
            .iter()
            .filter_map(|m| m.child.id())
            .filter_map(crate::probe::cpu_seconds)
            .sum()
    }

    /// Sends `request` to every process at once and waits for all replies.
    pub async fn ask(&mut self, request: &Request) -> std::io::Result<Vec<Reply>> {
        let mut line = serde_json::to_string(request).expect("requests serialize");
        line.push('\n');
        for m in &mut self.members {
            m.stdin.write_all(line.as_bytes()).await?;
            m.stdin.flush().await?;
        }
        let replies = futures_util::future::join_all(self.members.iter_mut().map(|m| async {
            match m.stdout.next_line().await? {
                Some(line) => serde_json::from_str::<Reply>(&line)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
                None => Err(std::io::Error::other("a client process exited")),
            }
        }))
        .await;
        replies.into_iter().collect()
    }

    pub async fn ask_merged(&mut self, request: &Request) -> std::io::Result<Merged> {
        Ok(Merged::from(self.ask(request).await?))
    }

    pub async fn stop(mut self) {
        for m in &mut self.members {
            let _ = m.stdin.shutdown().await;
        }
        for m in &mut self.members {
            let wait = tokio::time::timeout(std::time::Duration::from_secs(10), m.child.wait());
            if wait.await.is_err() {
                let _ = m.child.kill().await;
            }
        }
    }
}

/// Replies of every process, added up.
#[derive(Debug)]
pub struct Merged {
    pub sum: Reply,
    pub latency: Histogram<u64>,
    pub confirms: Histogram<u64>,
}

fn merge_into(h: &mut Histogram<u64>, recorded: &Recorded) {
    for &(value, count) in recorded {
        let _ = h.record_n(value, count);
    }
}

impl From<Vec<Reply>> for Merged {
    fn from(replies: Vec<Reply>) -> Merged {
        let mut sum = Reply {
            per_receiver_min: u64::MAX,
            ..Reply::default()
        };
        let mut latency = new_histogram();
        let mut confirms = new_histogram();
        for r in replies {
            sum.clients += r.clients;
            sum.confirmed += r.confirmed;
            sum.rejected += r.rejected;
            sum.failed += r.failed;
            sum.ended += r.ended;
            sum.paused += r.paused;
            for e in r.errors {
                if sum.errors.len() < 10 && !sum.errors.contains(&e) {
                    sum.errors.push(e);
                }
            }
            sum.last_confirm_us = sum.last_confirm_us.max(r.last_confirm_us);
            sum.received += r.received;
            sum.received_paused += r.received_paused;
            if r.receivers > 0 {
                sum.per_receiver_min = sum.per_receiver_min.min(r.per_receiver_min);
                sum.per_receiver_max = sum.per_receiver_max.max(r.per_receiver_max);
            }
            sum.receivers += r.receivers;
            sum.disorder += r.disorder;
            sum.rejected_after_confirm += r.rejected_after_confirm;
            sum.silent_receivers += r.silent_receivers;
            for (reason, n) in r.disconnects {
                *sum.disconnects.entry(reason).or_default() += n;
            }
            merge_into(&mut latency, &r.latency_us);
            merge_into(&mut confirms, &r.confirm_us);
        }
        if sum.receivers == 0 {
            sum.per_receiver_min = 0;
        }
        Merged {
            sum,
            latency,
            confirms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_evenly_under_the_limit() {
        assert_eq!(split(1000, 18000), vec![(0, 1000)]);
        assert_eq!(
            split(40000, 18000),
            vec![(0, 13334), (13334, 13333), (26667, 13333)]
        );
        assert_eq!(split(0, 10), vec![(0, 0)]);
    }

    #[test]
    fn replies_merge() {
        let a = Reply {
            clients: 2,
            confirmed: 2,
            receivers: 2,
            received: 10,
            per_receiver_min: 5,
            per_receiver_max: 5,
            latency_us: vec![(100, 10)],
            ..Reply::default()
        };
        let b = Reply {
            clients: 1,
            confirmed: 1,
            receivers: 1,
            received: 4,
            per_receiver_min: 4,
            per_receiver_max: 4,
            latency_us: vec![(1000, 4)],
            ..Reply::default()
        };
        let m = Merged::from(vec![a, b]);
        assert_eq!(m.sum.received, 14);
        assert_eq!(m.sum.per_receiver_min, 4);
        assert_eq!(m.sum.per_receiver_max, 5);
        assert_eq!(m.latency.len(), 14);
        assert!(m.latency.value_at_quantile(1.0) >= 1000);
    }
}

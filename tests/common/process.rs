//! The `protogate` binary as a user runs it: a command in the repository's
//! folder, a child process killed on drop, its output read line by line.

use std::{
    io::{BufRead as _, BufReader, Read},
    path::Path,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    time::Duration,
};

pub const MANIFEST: &str = env!("CARGO_MANIFEST_DIR");

/// `protogate` run from the repository's folder, as the README's commands are.
pub fn protogate() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_protogate"));
    command.current_dir(MANIFEST).stdin(Stdio::null());
    command
}

/// `protogate serve` of the orders v1 set, its upstream `backend_url`, on
/// `host`:`port` with the admin listener on a free port of the same host;
/// output discarded. Callers add their own flags before spawning.
pub fn serve_orders_v1(backend_url: &str, host: &str, port: u16) -> Command {
    let mut command = protogate();
    command
        .args([
            "serve",
            "--descriptor-set",
            "descriptor-sets/acme.orders.v1.binpb",
        ])
        .arg("--upstream")
        .arg(format!("acme.orders.v1={backend_url}"))
        .args(["--listen", &format!("{host}:{port}")])
        .args(["--admin-listen", &format!("{host}:0")])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// Kills the child on drop so a failed assertion leaves no process behind.
pub struct Child(pub std::process::Child);

impl Child {
    /// Stops the child and returns what it wrote to its (piped) stderr.
    pub fn stop(mut self) -> String {
        let mut stderr = self.0.stderr.take().expect("stderr is piped");
        let _ = self.0.kill();
        let _ = self.0.wait();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut text).unwrap();
        text
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The lines a child writes to one of its streams, read on a thread of their own.
pub struct Lines {
    lines: mpsc::Receiver<String>,
    /// Every line read so far, to show when an expected one never comes.
    seen: Vec<String>,
}

/// Longest wait for a line; only a hung child ever reaches it.
const HUNG: Duration = Duration::from_secs(60);

impl Lines {
    pub fn new(stream: impl Read + Send + 'static) -> Self {
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads up to the first line that `wanted` accepts, and returns it.
    pub fn until(&mut self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        loop {
            match self.lines.recv_timeout(HUNG) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if wanted(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line with {what}; the stream ended after:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Every line to the end of the stream (the child has exited).
    pub fn rest(mut self) -> Vec<String> {
        while let Ok(line) = self.lines.recv_timeout(HUNG) {
            self.seen.push(line);
        }
        self.seen
    }
}

/// Polls `url` until it answers (the child is starting).
pub async fn wait_for(url: &str) -> reqwest::Response {
    for _ in 0..100 {
        if let Ok(response) = reqwest::get(url).await {
            return response;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} never answered");
}

/// A port that was free a moment ago, for a child to listen on: taken
/// below the kernel's ephemeral range, from which `bind(0)` (the servers of
/// the tests running beside this one) and outgoing connections draw theirs,
/// so that neither can take it before the child binds it. Each test binary
/// starts at its own place (its process id) and counts up, so that two of
/// its tests never get the same one; a port some program holds is skipped.
pub fn free_port() -> u16 {
    const FIRST: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = ephemeral.saturating_sub(FIRST);
    assert!(
        span >= 1_000,
        "the ephemeral ports start at {ephemeral}: too low to pick from below"
    );
    let start = std::process::id() % span;
    loop {
        let taken = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(taken < span, "no free port below {ephemeral}");
        let port = u16::try_from(FIRST + (start + taken) % span).unwrap();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The `nth` (from 0) ```sh block of the README section `heading`.
pub fn readme_block(heading: &str, nth: usize) -> String {
    let readme = std::fs::read_to_string(Path::new(MANIFEST).join("README.md")).unwrap();
    let start = readme
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("no section `{heading}` in README.md"));
    let section = &readme[start + heading.len() + 2..];
    let section = section.find("\n## ").map_or(section, |end| &section[..end]);
    let block = section
        .split("```sh\n")
        .nth(nth + 1)
        .unwrap_or_else(|| panic!("no sh block {nth} in `{heading}`"));
    block[..block.find("```").unwrap()].to_owned()
}

//! The real `warren` binary as a test's child process: started on free
//! ports, its ready line read, its log lines collected, its resident memory
//! readable, killed however the test ends.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub struct Warren {
    pub child: Child,
    /// The plain listener, or the TLS one when there is no plain one.
    pub amqp: SocketAddr,
    pub amqps: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    /// Its stderr, a line at a time.
    pub log: mpsc::Receiver<String>,
    /// The config file written for it, removed on drop.
    conf: Option<std::path::PathBuf>,
}

impl Warren {
    /// Starts warren on `--port 0` with `args` and, if `conf` is not empty,
    /// a config file holding it; waits for its ready line.
    pub fn start(args: &[&str], conf: &str) -> Warren {
        let mut command = Command::new(env!("CARGO_BIN_EXE_warren"));
        command.args(["--port", "0"]).args(args);
        let conf = (!conf.is_empty()).then(|| {
            static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("warren-{}-{n}.conf", std::process::id()));
            std::fs::File::create(&path).unwrap().write_all(conf.as_bytes()).unwrap();
            command.arg("--config").arg(&path);
            path
        });
        let mut child = command
            .env("RUST_LOG", "info")
            .env_remove("RABBITMQ_CONFIG_FILE")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run warren");
        let stderr = child.stderr.take().unwrap();
        let (tx, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut ready = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut ready).expect("ready line");
        let ready: serde_json::Value = serde_json::from_str(&ready).unwrap_or_else(|e| panic!("{e}: {ready:?}"));
        let addr = |key: &str| ready[key].as_str().map(|a| a.parse().unwrap());
        let amqp = addr("amqp").or(addr("amqps")).expect("an AMQP address");
        Warren { amqp, amqps: addr("amqps"), http: addr("http"), child, log, conf }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory, from /proc.
    pub fn rss(&self) -> usize {
        rss_bytes(self.pid())
    }

    /// Waits up to ten seconds for a log line containing `needle`; returns
    /// it, with every line seen before it.
    pub fn wait_for_log(&self, needle: &str) -> (String, Vec<String>) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.log.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return (line, seen),
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        panic!("no log line with {needle:?}; saw:\n{}", seen.join("\n"));
    }
}

impl Drop for Warren {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(conf) = &self.conf {
            let _ = std::fs::remove_file(conf);
        }
    }
}

/// Resident memory of a process, from /proc.
pub fn rss_bytes(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: usize = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    kb * 1024
}

//! The standalone binary: configuration file, flags, readable errors, and a
//! clean stop on SIGINT.

#[path = "common/binary.rs"]
mod binary;
mod common;

use binary::Warren;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const WARREN: &str = env!("CARGO_BIN_EXE_warren");

/// Starts warren and returns it with a channel of its log lines.
fn start(args: &[&str]) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(WARREN)
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("RABBITMQ_CONFIG_FILE")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("run warren");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Waits for a log line containing `needle`; returns it.
fn wait_for(rx: &mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    panic!("no log line with {needle:?}; saw:\n{}", seen.join("\n"));
}

/// A config file in the target's temporary directory, removed on drop.
struct TempConf(std::path::PathBuf);

impl TempConf {
    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempConf {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn config_file(text: &str) -> TempConf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("rabbitmq-{}-{n}.conf", std::process::id());
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::File::create(&path).unwrap().write_all(text.as_bytes()).unwrap();
    TempConf(path)
}

#[test]
fn reads_rabbitmq_conf_warns_about_unknown_keys_and_flags_override_it() {
    let conf =
        config_file("# test\nlisteners.tcp.default = 127.0.0.1:1\nheartbeat = 7\nchannel_max = 16\nheartbeet = 3\n");
    let (mut child, rx) = start(&["--config", conf.path(), "--port", "0", "--heartbeat", "9"]);
    let warning = wait_for(&rx, "heartbeet");
    assert!(warning.contains("line 5"), "{warning}");
    assert!(warning.contains("WARN"), "{warning}");
    let tuning = wait_for(&rx, "heartbeat 9s");
    assert!(tuning.contains("channel_max 16"), "{tuning}");
    let listening = wait_for(&rx, "started TCP listener on 127.0.0.1:");
    assert!(!listening.ends_with(":1"), "--port overrides the file: {listening}");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn a_bad_config_value_is_a_readable_error_not_a_panic() {
    let conf = config_file("heartbeat = 60\nframe_max = lots\n");
    let out = Command::new(WARREN).args(["--config", conf.path(), "--port", "0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 2: invalid value 'lots' for 'frame_max'"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn the_config_file_can_come_from_rabbitmq_config_file() {
    let conf = config_file("listeners.tcp.default = 127.0.0.1:0\nchannel_max = 5\n");
    let mut child = Command::new(WARREN)
        .env("RABBITMQ_CONFIG_FILE", conf.path())
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let line = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .find(|l| l.contains("channel_max"))
        .expect("a tuning line");
    assert!(line.contains("channel_max 5"), "{line}");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The threads of process `pid` named `name`.
fn threads_named(pid: u32, name: &str) -> usize {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks.filter(|t| std::fs::read_to_string(t.as_ref().unwrap().path().join("comm")).unwrap().trim() == name).count()
}

#[test]
fn threads_sets_the_runtime_s_worker_threads_within_bounds() {
    for n in [1, 3] {
        let (mut child, rx) = start(&["--port", "0", "--no-http", "--threads", &n.to_string()]);
        wait_for(&rx, "started TCP listener");
        assert_eq!(threads_named(child.id(), "warren-worker"), n);
        child.kill().unwrap();
        child.wait().unwrap();
    }
    for bad in ["0", "257", "many"] {
        let out = Command::new(WARREN).args(["--port", "0", "--threads", bad]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "--threads {bad}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("invalid value") && stderr.contains("--threads"), "{stderr}");
    }
}

#[test]
fn sigint_stops_the_broker_cleanly() {
    let (mut child, rx) = start(&["--port", "0"]);
    wait_for(&rx, "started TCP listener");
    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    wait_for(&rx, "stopped");
    let exit = child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn load_definitions_brings_users_with_rabbitmq_password_hashes_vhosts_permissions_and_topology() {
    // Shaped as RabbitMQ 3.10's export; its documented example password
    // "test12", salted SHA-256.
    let definitions = config_file(
        r#"{"rabbit_version": "3.10.8", "rabbitmq_version": "3.10.8", "product_name": "RabbitMQ",
            "users": [{"name": "hashed", "password_hash": "kI3GCqW5JLMJa4iX1lo7X4D6XbYqlLgxIs30+P6tENUV2POR",
                     "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": [], "limits": {}}],
            "vhosts": [{"name": "dev", "limits": [], "metadata": {"description": "", "tags": []}}],
            "permissions": [{"user": "hashed", "vhost": "dev", "configure": ".*", "write": ".*", "read": ".*"}],
            "topic_permissions": [], "parameters": [],
            "global_parameters": [{"name": "cluster_name", "value": "rabbit@host"}],
            "policies": [{"vhost": "dev", "name": "ttl", "pattern": ".*", "apply-to": "queues", "definition": {"message-ttl": 1000}, "priority": 0}],
            "queues": [{"name": "q", "vhost": "dev", "durable": true, "auto_delete": false, "arguments": {"x-queue-type": "classic"}}],
            "exchanges": [{"name": "x", "vhost": "dev", "type": "topic", "durable": true, "auto_delete": false, "internal": false, "arguments": {}}],
            "bindings": [{"source": "x", "vhost": "dev", "destination": "q", "destination_type": "queue", "routing_key": "a.#", "arguments": {}}]}"#,
    );
    let conf = config_file(&format!("load_definitions = {}\n", definitions.path()));
    let (mut child, rx) = start(&["--config", conf.path(), "--port", "0"]);
    let warning = wait_for(&rx, "load_definitions: policies");
    assert!(warning.contains("not imported"), "{warning}");
    let line = wait_for(&rx, "started TCP listener on ");
    let addr = line.rsplit(' ').next().unwrap().to_string();
    let url = format!("amqp://hashed:test12@{addr}/dev");
    let conn =
        lapin::Connection::connect(&url, lapin::ConnectionProperties::default()).await.expect("login with the hash");
    let ch = conn.create_channel().await.unwrap();
    // The queue, the exchange and the binding are there: a publish routes.
    ch.basic_publish("x".into(), "a.b".into(), Default::default(), b"m", Default::default()).await.unwrap();
    let passive = lapin::options::QueueDeclareOptions { passive: true, ..Default::default() };
    // Frames on one channel are handled in order: the publish is in by now.
    let q = ch.queue_declare("q".into(), passive, Default::default()).await.expect("q exists");
    assert_eq!(q.message_count(), 1);
    let refused = lapin::Connection::connect(&format!("amqp://hashed:wrong@{addr}/dev"), Default::default()).await;
    assert!(refused.is_err());
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn sigusr1_raises_and_sigusr2_clears_a_memory_alarm() {
    let (mut child, rx) = start(&["--port", "0"]);
    wait_for(&rx, "started TCP listener");
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-USR1", &pid]).status().unwrap().success());
    wait_for(&rx, "raising the memory alarm");
    assert!(Command::new("kill").args(["-USR2", &pid]).status().unwrap().success());
    wait_for(&rx, "clearing the memory alarm");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn trace_frames_shows_the_protocol_and_the_heartbeats() {
    let (mut child, rx) = start(&["--port", "0", "--trace-frames", "--heartbeat", "1"]);
    let line = wait_for(&rx, "started TCP listener on ");
    let addr: std::net::SocketAddr = line.rsplit(' ').next().unwrap().parse().unwrap();
    let mut client = common::RawClient::open(addr, 1).await;
    client.declare_queue("q").await;
    let mut frames = bytes::BytesMut::new();
    common::publish_frames(&mut frames, "q", false, b"hello");
    client.send_raw(&frames).await;
    let start_ok = wait_for(&rx, r#"<- [0] connection.start-ok client_properties="#);
    assert!(start_ok.contains(r#"mechanism="PLAIN" response=<hidden>"#), "credentials never logged: {start_ok}");
    let tune_ok = wait_for(&rx, "<- [0] connection.tune-ok");
    assert!(tune_ok.contains("heartbeat=1"), "{tune_ok}");
    wait_for(&rx, r#"<- [1] queue.declare queue="q""#);
    wait_for(&rx, r#"<- [1] basic.publish exchange="" routing_key="q" mandatory=false immediate=false"#);
    wait_for(&rx, "<- [1] content body 5 octets");
    wait_for(&rx, "-> heartbeat");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn port_zero_announces_the_address_on_stdout_and_in_the_ready_file() {
    let ready_file =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("ready-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&ready_file);
    let mut child = Command::new(WARREN)
        .args(["--port", "0", "--ready-file", ready_file.to_str().unwrap()])
        .env_remove("RABBITMQ_CONFIG_FILE")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let line = BufReader::new(child.stdout.take().unwrap()).lines().next().expect("a ready line").unwrap();
    let ready: serde_json::Value = serde_json::from_str(&line).expect("JSON");
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["pid"], child.id());
    let addr: std::net::SocketAddr = ready["amqp"].as_str().unwrap().parse().unwrap();
    assert_eq!(u64::from(addr.port()), ready["amqp_port"].as_u64().unwrap());
    assert_eq!(std::fs::read_to_string(&ready_file).unwrap().trim(), line);
    common::RawClient::open(addr, 0).await;
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_file(ready_file);
}

/// The status line of `GET /api/overview` as guest.
async fn overview_status(http: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(http).await.unwrap();
    let request = "GET /api/overview HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\nConnection: close\r\n\r\n";
    s.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut response)).await.unwrap().unwrap();
    String::from_utf8_lossy(&response).lines().next().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_http_api_is_on_by_default_off_with_no_http_and_skipped_when_its_port_is_taken() {
    // On by default, where management.tcp.port says (0 here, so that tests
    // running at once do not compete for 15672).
    let warren = Warren::start(&[], "management.tcp.port = 0\n");
    let http = warren.http.expect("an HTTP address");
    assert!(http.ip().is_loopback(), "{http}");
    assert_eq!(overview_status(http).await, "HTTP/1.1 200 OK");
    drop(warren);

    let warren = Warren::start(&["--no-http"], "management.tcp.port = 0\n");
    assert_eq!(warren.http, None);
    drop(warren);

    // A taken port is said plainly, and the broker goes on without its API.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let warren = Warren::start(&[], &format!("management.tcp.port = {port}\n"));
    assert_eq!(warren.http, None);
    let (warning, _) = warren.wait_for_log("cannot serve the HTTP API");
    assert!(warning.contains(&format!("127.0.0.1:{port}")) && warning.contains("going on without it"), "{warning}");
    common::RawClient::open(warren.amqp, 0).await;
    drop(warren);

    // Asked for by flag, the port must be free.
    let status = Command::new(WARREN)
        .args(["--port", "0", "--http-port", &port.to_string()])
        .env_remove("RABBITMQ_CONFIG_FILE")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success());
}

#[test]
fn demo_plays_the_seed_story_in_the_binary_and_says_where_to_watch_it() {
    let warren = Warren::start(&["--demo", "--http-port", "0"], "");
    let http = warren.http.unwrap();
    let (line, _) = warren.wait_for_log("teaching mode: watch the story on");
    assert!(line.contains(&format!("http://{http}/")), "{line}");
    // The demo worker, heartbeat 1 s, falls silent on its task and is dropped.
    warren.wait_for_log("missed heartbeats from client, timeout: 1s");
}

//! The `runnel` client subcommands against a `runnel serve` started by the test.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The broker process, its data directory (removed on drop) and its address.
struct Server(Child, #[allow(dead_code)] tempfile::TempDir, String);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve() -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args(["serve", "--listen", &addr, "--metrics-listen", ""])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn runnel serve");
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "broker did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    Server(child, dir, addr)
}

fn runnel(server: &Server, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args(args)
        .args(["--bootstrap-server", &server.2])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn runnel");
    if let Some(input) = stdin {
        child
            .stdin
            .as_mut()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("runnel output")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn topics_produce_and_consume_from_the_command_line() {
    let server = serve();
    let created = runnel(
        &server,
        &[
            "topic",
            "create",
            "cli-topic",
            "--partitions",
            "4",
            "--config",
            "retention.ms=-1",
        ],
        None,
    );
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let again = runnel(&server, &["topic", "create", "cli-topic"], None);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("TOPIC_ALREADY_EXISTS"),
        "a clear error names the Kafka error"
    );
    assert_eq!(
        stdout(&runnel(&server, &["topic", "list"], None)).trim(),
        "cli-topic"
    );
    let described = stdout(&runnel(&server, &["topic", "describe", "cli-topic"], None));
    assert!(
        described.contains("partitions 4") && described.contains("*retention.ms = -1"),
        "{described}"
    );

    let input: String = (0..1000)
        .map(|i| format!("key{}\tvalue{i}\n", i % 13))
        .collect();
    let produced = runnel(&server, &["produce", "cli-topic"], Some(&input));
    assert!(
        produced.status.success(),
        "{}",
        String::from_utf8_lossy(&produced.stderr)
    );

    let consumed = runnel(
        &server,
        &[
            "consume",
            "cli-topic",
            "--timeout-ms",
            "1000",
            "--output",
            "json",
        ],
        None,
    );
    assert!(consumed.status.success());
    let lines: Vec<String> = stdout(&consumed).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 1000);
    let mut partition_of_key = std::collections::HashMap::new();
    for line in &lines {
        assert!(
            line.starts_with("{\"partition\":") && line.ends_with('}'),
            "{line}"
        );
        let partition = line
            .split("\"partition\":")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .expect("partition");
        let key = line
            .split("\"key\":\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .expect("key");
        let p = partition_of_key
            .entry(key.to_string())
            .or_insert_with(|| partition.to_string());
        assert_eq!(p, partition, "key {key} stays in one partition");
    }

    let some = runnel(
        &server,
        &[
            "consume",
            "cli-topic",
            "--partition",
            "0",
            "--from",
            "3",
            "--max-messages",
            "2",
            "--print-key",
        ],
        None,
    );
    assert_eq!(stdout(&some).lines().count(), 2);

    let altered = runnel(
        &server,
        &[
            "topic",
            "alter-config",
            "cli-topic",
            "--set",
            "retention.ms=1000",
        ],
        None,
    );
    assert!(altered.status.success());
    assert!(
        stdout(&runnel(&server, &["topic", "describe", "cli-topic"], None))
            .contains("*retention.ms = 1000")
    );
    let bad = runnel(
        &server,
        &[
            "topic",
            "alter-config",
            "cli-topic",
            "--set",
            "retention.ms=soon",
        ],
        None,
    );
    assert!(
        !bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("INVALID_CONFIG")
    );

    let missing = runnel(
        &server,
        &["consume", "no-such-topic", "--timeout-ms", "100"],
        None,
    );
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("UNKNOWN_TOPIC_OR_PARTITION"));

    assert!(runnel(&server, &["topic", "delete", "cli-topic"], None)
        .status
        .success());
    assert_eq!(
        stdout(&runnel(
            &server,
            &["topic", "list", "--output", "json"],
            None
        ))
        .trim(),
        "[]"
    );
}

#[test]
fn group_offsets_are_reset_described_with_lag_and_deleted() {
    let server = serve();
    let ok = |o: &Output| {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    ok(&runnel(
        &server,
        &["topic", "create", "lagging", "--partitions", "2"],
        None,
    ));
    let input: String = (0..40).map(|i| format!("k{}\tv{i}\n", i % 5)).collect();
    ok(&runnel(&server, &["produce", "lagging"], Some(&input)));

    // Dry run by default: nothing is committed.
    let dry = runnel(
        &server,
        &[
            "group",
            "reset-offsets",
            "cli-group",
            "--topic",
            "lagging",
            "--to-latest",
        ],
        None,
    );
    ok(&dry);
    assert!(String::from_utf8_lossy(&dry.stderr).contains("dry run"));
    let missing = runnel(&server, &["group", "describe", "cli-group"], None);
    assert!(
        !missing.status.success(),
        "a group with nothing committed does not exist yet"
    );

    ok(&runnel(
        &server,
        &[
            "group",
            "reset-offsets",
            "cli-group",
            "--topic",
            "lagging:0",
            "--to-offset",
            "3",
            "--execute",
        ],
        None,
    ));
    ok(&runnel(
        &server,
        &[
            "group",
            "reset-offsets",
            "cli-group",
            "--topic",
            "lagging:1",
            "--to-earliest",
            "--execute",
        ],
        None,
    ));
    let described = runnel(
        &server,
        &["group", "describe", "cli-group", "--output", "json"],
        None,
    );
    ok(&described);
    let text = stdout(&described);
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert!(
        rows[0].contains("\"partition\":0,\"current_offset\":3"),
        "{text}"
    );
    assert!(
        rows[1].contains("\"partition\":1,\"current_offset\":0"),
        "{text}"
    );
    // Lag is what is left to read: log end minus the committed offset.
    for row in &rows {
        let field = |name: &str| -> i64 {
            let start = row.find(&format!("\"{name}\":")).expect(name) + name.len() + 3;
            row[start..]
                .split([',', '}'])
                .next()
                .and_then(|v| v.parse().ok())
                .expect("number")
        };
        assert_eq!(
            field("lag"),
            field("log_end_offset") - field("current_offset")
        );
    }
    let shifted = runnel(
        &server,
        &[
            "group",
            "reset-offsets",
            "cli-group",
            "--all-topics",
            "--shift-by",
            "-10",
        ],
        None,
    );
    ok(&shifted);
    assert!(
        stdout(&shifted).contains("cli-group\tlagging\t0\t0"),
        "shift-by clamps to the log start: {}",
        stdout(&shifted)
    );

    let list = runnel(&server, &["group", "list"], None);
    let listed = stdout(&list);
    assert!(
        listed.contains("cli-group\tEmpty"),
        "{listed} {}",
        String::from_utf8_lossy(&list.stderr)
    );
    ok(&runnel(&server, &["group", "delete", "cli-group"], None));
    let listed = stdout(&runnel(&server, &["group", "list"], None));
    assert!(!listed.contains("cli-group"), "{listed}");
}

/// A base port with base..base+2 and base+100..base+102 free.
fn free_base_port() -> u16 {
    for attempt in 0..200u16 {
        let base = 30_000 + (std::process::id() as u16 % 200) * 100 + attempt * 7 % 5000;
        let free = (0..3)
            .flat_map(|i| [base + i, base + 100 + i])
            .all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no free port range");
}

#[test]
fn dev_starts_a_three_az_cluster_that_replicates_and_stops_it_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = free_base_port();
    let mut dev = Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args(["dev", "--no-fsync", "--base-port", &base.to_string()])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn runnel dev");
    let mut stdout = std::io::BufReader::new(dev.stdout.take().expect("stdout"));
    let mut bootstrap = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while bootstrap.is_empty() {
        assert!(Instant::now() < deadline, "runnel dev printed no bootstrap");
        let mut line = String::new();
        if std::io::BufRead::read_line(&mut stdout, &mut line).expect("read") == 0 {
            panic!("runnel dev exited: {:?}", dev.try_wait());
        }
        if let Some(b) = line.trim().strip_prefix("bootstrap.servers=") {
            bootstrap = b.to_string();
        }
    }
    assert_eq!(bootstrap.split(',').count(), 3, "{bootstrap}");
    let first = bootstrap.split(',').next().expect("a broker").to_string();
    let server = Server(
        Command::new("true").spawn().expect("placeholder"),
        tempfile::tempdir().expect("tempdir"),
        first,
    );
    // Brokers register through the quorum just after they accept connections.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = runnel(
            &server,
            &[
                "topic",
                "create",
                "spread",
                "--partitions",
                "3",
                "--replication-factor",
                "3",
            ],
            None,
        );
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "topic create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = runnel(
        &server,
        &["topic", "describe", "spread", "--output", "json"],
        None,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for replicas in ["[1,2,3]", "[2,3,1]", "[3,1,2]"] {
        assert!(
            text.replace(' ', "").contains(replicas),
            "each partition on all three AZs, leaders spread ({replicas}): {text}"
        );
    }
    // Each partition elects its leader (an election timeout, 1-2 s).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = runnel(
            &server,
            &["topic", "describe", "spread", "--output", "json"],
            None,
        );
        if !String::from_utf8_lossy(&out.stdout).contains("\"leader\":-1") {
            break;
        }
        assert!(Instant::now() < deadline, "partitions without a leader");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The client subcommands send each partition's requests to its leader.
    let lines: String = (0..300).map(|i| format!("line-{i}\n")).collect();
    let out = runnel(&server, &["produce", "spread"], Some(&lines));
    assert!(
        out.status.success(),
        "produce to a 3-broker cluster: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = runnel(
        &server,
        &[
            "consume",
            "spread",
            "--from",
            "earliest",
            "--timeout-ms",
            "2000",
        ],
        None,
    );
    let consumed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        consumed.lines().count(),
        300,
        "every line back from the three leaders: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = Command::new("kill")
        .args(["-TERM", &dev.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = dev.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "runnel dev did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    assert!(
        TcpStream::connect(("127.0.0.1", base)).is_err(),
        "the brokers are gone"
    );
}

/// `runnel consume ... | head -1`: the client ends quietly when its output pipe closes, as
/// Unix tools do (killed by SIGPIPE), instead of panicking in `println!`.
#[test]
fn client_commands_end_quietly_when_their_output_pipe_closes() {
    use std::io::BufRead;
    use std::os::unix::process::ExitStatusExt;
    let server = serve();
    let out = runnel(&server, &["topic", "create", "piped"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: String = (0..20_000).map(|i| format!("line-{i}\n")).collect();
    let out = runnel(&server, &["produce", "piped"], Some(&lines));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_runnel"))
        .args([
            "consume",
            "piped",
            "--from",
            "earliest",
            "--timeout-ms",
            "5000",
        ])
        .args(["--bootstrap-server", &server.2])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn runnel consume");
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("read a line");
    assert_eq!(first, "line-0\n");
    // The reader is dropped here: the pipe is closed with 19,999 lines still to print.
    let out = child.wait_with_output().expect("consume ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked"),
        "no panic on a closed pipe: {stderr}"
    );
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "ended by SIGPIPE like a Unix tool: {:?} {stderr}",
        out.status
    );
}

//! Independent client implementations: kafka-python (in a venv `scripts/test.sh` creates) and
//! kcat (Debian's, librdkafka 2.0). Missing tools fail the run in CI and skip locally.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use runnel_tests::Broker;

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn tool(path: Option<PathBuf>, name: &str, hint: &str) -> Option<PathBuf> {
    if let Some(p) = path.filter(|p| p.exists()) {
        return Some(p);
    }
    let msg = format!("{name} not found: {hint}");
    assert!(!in_ci(), "{msg}");
    eprintln!("SKIPPED: {msg}");
    None
}

fn python() -> Option<PathBuf> {
    let default = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv/bin/python");
    let path = std::env::var("RUNNEL_PYTHON")
        .map(PathBuf::from)
        .unwrap_or(default);
    tool(
        Some(path),
        "python with kafka-python",
        "run ./scripts/test.sh, which creates target/pyenv",
    )
}

fn kcat() -> Option<PathBuf> {
    let found = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| Path::new(d).join("kcat"))
        .find(|p| p.exists());
    tool(found, "kcat", "apt-get install kcat")
}

/// Runs `tests/python/<script>` against a fresh broker; the script exits non-zero on failure.
fn run_python(script: &str) {
    run_python_with(script, &[]);
}

/// [`run_python`] against a broker started with `broker_args`.
fn run_python_with(script: &str, broker_args: &[&str]) {
    let Some(python) = python() else { return };
    let broker = Broker::start(broker_args).expect("broker");
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(script);
    let out = Command::new(python)
        .arg(path)
        .arg(broker.bootstrap())
        .output()
        .expect("run python");
    eprintln!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "kafka-python checks in {script} failed"
    );
}

#[test]
fn kafka_python_produces_consumes_and_administers() {
    run_python("clients.py");
}

#[test]
fn kafka_python_admin_configs_partitions_and_deletes() {
    run_python("admin.py");
}

#[test]
fn kcat_produces_keyed_messages_and_consumes_them_from_offset_zero() {
    let Some(kcat) = kcat() else { return };
    let broker = Broker::start(&[]).expect("broker");
    let bootstrap = broker.bootstrap();
    let mut producer = Command::new(&kcat)
        .args(["-b", &bootstrap, "-P", "-t", "kcat-topic", "-K", ":"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("kcat -P");
    {
        let stdin = producer.stdin.as_mut().expect("stdin");
        for i in 0..50 {
            writeln!(stdin, "key{i}:value{i}").expect("write");
        }
    }
    assert!(
        producer.wait().expect("kcat -P").success(),
        "kcat produce failed"
    );
    let out = Command::new(&kcat)
        .args([
            "-b",
            &bootstrap,
            "-C",
            "-t",
            "kcat-topic",
            "-o",
            "beginning",
            "-e",
            "-q",
            "-f",
            "%k|%s|%o\\n",
        ])
        .output()
        .expect("kcat -C");
    assert!(
        out.status.success(),
        "kcat consume failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines.len(), 50, "{lines:?}");
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line, &format!("key{i}|value{i}|{i}"));
    }
    let meta = Command::new(&kcat)
        .args(["-b", &bootstrap, "-L", "-t", "kcat-topic"])
        .output()
        .expect("kcat -L");
    let text = String::from_utf8_lossy(&meta.stdout);
    assert!(text.contains("partition 0, leader 1"), "{text}");
}

#[test]
fn kafka_python_groups_commits_and_group_admin() {
    run_python("groups.py");
}

#[test]
fn kafka_python_transactions_commit_abort_and_read_committed_filtering() {
    run_python_with(
        "transactions.py",
        &[
            "--no-fsync",
            "--offsets-topic-num-partitions",
            "3",
            "--transaction-state-log-num-partitions",
            "3",
            "--group-initial-rebalance-delay-ms",
            "0",
        ],
    );
}

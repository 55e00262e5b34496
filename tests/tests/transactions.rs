//! Cross-shard transactions under crashes: the transfers workload (src/bin/transfers.rs) moves
//! amounts between accounts on different shards while a reader sums every balance on a
//! consistent cut. Killed at random moments, or at each step of the commit protocol (its
//! failpoints), the store it leaves must still hold exactly the seeded total.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_transfers");

fn run(root: &std::path::Path, failpoint: Option<&str>) -> Child {
    let mut cmd = Command::new(BIN);
    cmd.arg("run")
        .arg(root)
        .arg("30")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(f) = failpoint {
        cmd.env("TESSERA_FAILPOINT", f);
    }
    cmd.spawn().expect("start transfers")
}

/// The lines the workload printed until it ended (or was killed).
fn lines(child: &mut Child) -> Vec<String> {
    let out = child.stdout.take().expect("stdout");
    BufReader::new(out).lines().map_while(Result::ok).collect()
}

fn check(root: &std::path::Path) -> String {
    let out = Command::new(BIN)
        .arg("check")
        .arg(root)
        .output()
        .expect("run check");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(out.status.success(), "after restart: {text}");
    text
}

fn assert_consistent(lines: &[String]) {
    let bad: Vec<&String> = lines
        .iter()
        .filter(|l| l.starts_with("VIOLATION"))
        .collect();
    assert!(bad.is_empty(), "a reader saw a partial transfer: {bad:?}");
}

#[test]
fn kill_9_at_random_moments_keeps_the_sum() {
    let root = tempfile::tempdir().unwrap();
    // TESSERA_TXN_ROUNDS (default 6) and TESSERA_TXN_SEED for longer runs.
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let mut seed = env("TESSERA_TXN_SEED", 0x2545_f491_4f6c_dd1d) | 1;
    let mut reads = 0u64;
    for round in 0..env("TESSERA_TXN_ROUNDS", 6) {
        let mut child = run(root.path(), None);
        let out = child.stdout.take().unwrap();
        let mut rd = BufReader::new(out);
        let mut first = String::new();
        rd.read_line(&mut first).unwrap();
        assert_eq!(first.trim(), "ready", "round {round}");
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(300 + seed % 1200));
        child.kill().unwrap();
        child.wait().unwrap();
        let rest: Vec<String> = rd.lines().map_while(Result::ok).collect();
        assert_consistent(&rest);
        reads += rest
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix("reads ")?.split(' ').next()?.parse().ok())
            .unwrap_or(0);
        let after = check(root.path());
        assert_eq!(after, "sum 24000 accounts 24", "round {round}");
    }
    assert!(reads > 0, "the reader never ran");
}

#[test]
fn crash_at_each_commit_step_is_all_or_nothing() {
    // Each step of the protocol, reached for the n-th time: early (the first transactions) and
    // later, with many transfers in flight on both cores.
    for step in ["prepared", "decided", "resolved"] {
        let root = tempfile::tempdir().unwrap();
        for n in [1, 2, 3, 7, 20, 40, 150, 400] {
            let spec = format!("{step}:{n}");
            let mut child = run(root.path(), Some(&spec));
            let start = Instant::now();
            let status = loop {
                if let Some(s) = child.try_wait().unwrap() {
                    break s;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "{spec}: the failpoint was never reached"
                );
                std::thread::sleep(Duration::from_millis(20));
            };
            assert!(!status.success(), "{spec}: the process was not killed");
            let out = lines(&mut child);
            assert_consistent(&out);
            let after = check(root.path());
            // Only a crash while seeding (before `ready`) may leave nothing; `check` has already
            // refused anything between nothing and every account.
            if out.iter().any(|l| l == "ready") {
                assert_eq!(after, "sum 24000 accounts 24", "{spec}");
            }
        }
    }
}

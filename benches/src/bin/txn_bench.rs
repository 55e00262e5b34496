//! Transactions per second through the shards' commit paths, in one process (no HTTP): a
//! transaction is two `addTo` writes (a transfer) on two accounts of the same shard (one batch of
//! that shard's group commit) or of two different shards (the two-phase commit of
//! `shards/src/txn.rs`). Accounts are picked at random; with the default 4,096 per shard conflicts
//! are rare and the figure is the protocol's cost, with a handful it is the cost of contention.
//!
//! Usage: `txn_bench ROOT [SECONDS=10] [CLIENTS_PER_CORE=64] [THREADS=2] [ACCOUNTS_PER_SHARD=4096]`.
//! `ROOT` should be new (its shards are created with THREADS shards, durable mode). Prints one
//! line per kind: transactions/s, latency p50/p99 and the transactions that failed.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tessera_shards::{ExecutorSettings, ShardSet, shard_of, start_executors};
use tessera_storage::shard::{Durability, ShardOptions, WriteKind, WriteOp, record_key};
use tessera_storage::{Catalog, Table, Value};

/// What the clients of one run saw: latencies of committed transactions (us), and failures.
#[derive(Default)]
struct Tally {
    latencies: Vec<u64>,
    failed: u64,
}

fn table() -> Arc<Table> {
    let mut c = Catalog::default();
    c.load_schema(
        "bench",
        "type Account @table { id: Int @primaryKey balance: Int }",
    )
    .expect("schema");
    Arc::new(c.tables.remove(0).numbered(1))
}

fn add(t: &Arc<Table>, id: i64, delta: i64) -> WriteOp {
    WriteOp {
        table: t.clone(),
        key: record_key(t.id, &Value::Int(id)).expect("key"),
        kind: WriteKind::Add(vec![("balance".to_owned(), Value::Int(delta))]),
        from: None,
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at] as f64 / 1000.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(root) = args.get(1) else {
        eprintln!(
            "usage: txn_bench ROOT [SECONDS] [CLIENTS_PER_CORE] [THREADS] [ACCOUNTS_PER_SHARD]"
        );
        std::process::exit(2);
    };
    let arg = |i: usize, d: u64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let (seconds, clients, threads) = (arg(2, 10), arg(3, 64) as usize, arg(4, 2) as usize);
    let accounts = arg(5, 4096).max(2) as usize;
    let shards = threads.max(2);
    let set = Arc::new(
        ShardSet::open(
            std::path::Path::new(root),
            shards,
            ShardOptions::default(),
            Durability::Durable,
        )
        .expect("open shards"),
    );
    let t = table();
    // Account ids by shard.
    let mut by_shard: Vec<Vec<i64>> = vec![Vec::new(); shards];
    let mut id = 0i64;
    while by_shard.iter().any(|v| v.len() < accounts) {
        let s = shard_of(&record_key(t.id, &Value::Int(id)).expect("key"), shards);
        if by_shard[s].len() < accounts {
            by_shard[s].push(id);
        }
        id += 1;
    }
    let by_shard = Arc::new(by_shard);
    for cross in [false, true] {
        let tally: Arc<Mutex<Tally>> = Arc::default();
        let settings = ExecutorSettings {
            threads,
            preempt_timer: Duration::from_millis(5),
        };
        let started = Instant::now();
        let deadline = started + Duration::from_secs(seconds);
        let (t2, ids, all) = (t.clone(), by_shard.clone(), tally.clone());
        let handles = start_executors(&settings, set.clone(), move |ctx| {
            let (t, ids, all) = (t2.clone(), ids.clone(), all.clone());
            async move {
                let router = Rc::new(ctx.router);
                let mine: Rc<RefCell<Tally>> = Rc::default();
                let mut tasks = Vec::new();
                for c in 0..clients {
                    let (router, t, ids, mine) =
                        (router.clone(), t.clone(), ids.clone(), mine.clone());
                    let mut x =
                        ((ctx.core * 7919 + c + 1) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                    tasks.push(glommio::spawn_local(async move {
                        while Instant::now() < deadline {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            let n = ids.len();
                            let a = (x % n as u64) as usize;
                            let b = if cross {
                                (a + 1 + (x >> 8) as usize % (n - 1)) % n
                            } else {
                                a
                            };
                            let from = ids[a][(x >> 20) as usize % accounts];
                            let to = ids[b][(x >> 40) as usize % accounts];
                            if from == to {
                                continue;
                            }
                            let begin = Instant::now();
                            let done = router
                                .transact(vec![add(&t, from, -1), add(&t, to, 1)])
                                .await;
                            let mut seen = mine.borrow_mut();
                            match done {
                                Ok(_) => seen.latencies.push(begin.elapsed().as_micros() as u64),
                                Err(_) => seen.failed += 1,
                            }
                        }
                    }));
                }
                futures::future::join_all(tasks).await;
                let mut all = all.lock().expect("tally");
                all.latencies.extend(&mine.borrow().latencies);
                all.failed += mine.borrow().failed;
            }
        })
        .expect("executors");
        for h in handles {
            let _ = h.join();
        }
        let elapsed = started.elapsed().as_secs_f64();
        let Tally {
            latencies: mut l,
            failed,
        } = std::mem::take(&mut *tally.lock().expect("tally"));
        l.sort_unstable();
        println!(
            "{}: {:.0} transactions/s, p50 {:.2} ms, p99 {:.2} ms, {} failed ({} in {:.1} s, {} clients on {} cores, {} shards, {} accounts each)",
            if cross { "two-shard" } else { "single-shard" },
            l.len() as f64 / elapsed,
            percentile(&l, 0.5),
            percentile(&l, 0.99),
            failed,
            l.len(),
            elapsed,
            clients * threads,
            threads,
            shards,
            accounts
        );
    }
    set.close().expect("close");
}

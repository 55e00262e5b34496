//! A workload for the cross-shard transaction tests: accounts spread over shards, clients that
//! move amounts between them (`addTo` on one, `subtractFrom` on the other, in one transaction),
//! and a reader that sums every balance on a consistent cut of the shards, again and again.
//!
//! `transfers run ROOT SECONDS`: seeds the accounts if the store is new, then runs transfers and
//! reads until SECONDS pass (or the process is killed). Prints `ready`, then one line per
//! second, `reads N transfers M`, and `VIOLATION sum S` whenever a reader sees a wrong sum.
//! `transfers check ROOT`: opens the store (which recovers what a crash left prepared), prints
//! `sum S accounts N`, and exits 1 unless the store holds every account with the seeded total
//! (or nothing, when the seeding transaction itself was cut short).
//! With the `failpoints` feature of tessera-shards and `TESSERA_FAILPOINT`, the commit protocol
//! kills the process at the named step.

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tessera_shards::{ExecutorSettings, ShardSet, start_executors};
use tessera_storage::record::RecordRef;
use tessera_storage::shard::{
    Durability, ShardOptions, View, WriteKind, WriteOp, record_key, table_prefix,
};
use tessera_storage::{Catalog, Table, Value, value};

const SHARDS: usize = 4;
const ACCOUNTS: i64 = 24;
const OPENING: i64 = 1000;
const CLIENTS_PER_CORE: usize = 8;

fn table() -> Arc<Table> {
    let mut c = Catalog::default();
    c.load_schema(
        "transfers",
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

/// (sum of balances, accounts) as `views` see them.
fn sum(t: &Table, views: &[View]) -> (i64, usize) {
    let lo = table_prefix(t.id).to_vec();
    let hi = table_prefix(t.id + 1).to_vec();
    let (mut total, mut n) = (0, 0);
    for v in views {
        for kv in v.scan_range(lo.clone(), hi.clone()) {
            let (_, stored) = kv.expect("scan");
            let rec = RecordRef::parse(&stored).expect("record");
            let rec = value::from_msgpack(rec.body).expect("msgpack");
            if let Some(Value::Int(b)) = rec.get("balance") {
                total += b;
            }
            n += 1;
        }
    }
    (total, n)
}

fn open(root: &str) -> Arc<ShardSet> {
    Arc::new(
        ShardSet::open(
            std::path::Path::new(root),
            SHARDS,
            ShardOptions::default(),
            Durability::Durable,
        )
        .expect("open shards"),
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (mode, root) = match (args.get(1), args.get(2)) {
        (Some(m), Some(r)) => (m.as_str(), r.as_str()),
        _ => {
            eprintln!("usage: transfers run ROOT SECONDS | transfers check ROOT");
            std::process::exit(2);
        }
    };
    let set = open(root);
    let t = table();
    if mode == "check" {
        let views: Vec<View> = (0..SHARDS)
            .map(|s| set.store(s).expect("shard").view())
            .collect();
        let (total, n) = sum(&t, &views);
        println!("sum {total} accounts {n}");
        // The seeding is a transaction too: all accounts or none.
        let seeded = total == ACCOUNTS * OPENING && n == ACCOUNTS as usize;
        std::process::exit(i32::from(!seeded && (total, n) != (0, 0)));
    }
    let seconds: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(5);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let reads = Arc::new(AtomicU64::new(0));
    let transfers = Arc::new(AtomicU64::new(0));
    let seeded = Arc::new(AtomicBool::new(false));
    let settings = ExecutorSettings {
        threads: 2,
        preempt_timer: Duration::from_millis(5),
    };
    let (r2, t2, s2, table2) = (reads.clone(), transfers.clone(), seeded.clone(), t.clone());
    let handles = start_executors(&settings, set.clone(), move |ctx| {
        let (reads, transfers, seeded, t) = (r2.clone(), t2.clone(), s2.clone(), table2.clone());
        async move {
            let router = Rc::new(ctx.router);
            if ctx.core == 0 {
                let (_, n) = sum(&t, &router.views().await);
                if n == 0 {
                    let opening = (0..ACCOUNTS).map(|id| add(&t, id, OPENING)).collect();
                    router.transact(opening).await.expect("seed");
                }
                seeded.store(true, Ordering::SeqCst);
                println!("ready");
            }
            while !seeded.load(Ordering::SeqCst) {
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            let mut tasks = Vec::new();
            for client in 0..CLIENTS_PER_CORE {
                let (router, t, transfers) = (router.clone(), t.clone(), transfers.clone());
                let mut x = (ctx.core * 1000 + client + 1) as u64 * 0x9e37_79b9;
                tasks.push(glommio::spawn_local(async move {
                    while Instant::now() < deadline {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let from = (x % ACCOUNTS as u64) as i64;
                        let to = ((x >> 20) % ACCOUNTS as u64) as i64;
                        if from == to {
                            continue;
                        }
                        let amount = (x >> 40) as i64 % 50 + 1;
                        let ops = vec![add(&t, from, -amount), add(&t, to, amount)];
                        router.transact(ops).await.expect("transfer");
                        transfers.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
            let (router2, t2, reads2) = (router.clone(), t.clone(), reads.clone());
            tasks.push(glommio::spawn_local(async move {
                while Instant::now() < deadline {
                    let (total, n) = sum(&t2, &router2.views().await);
                    if total != ACCOUNTS * OPENING || n != ACCOUNTS as usize {
                        println!("VIOLATION sum {total} accounts {n}");
                    }
                    reads2.fetch_add(1, Ordering::Relaxed);
                    glommio::yield_if_needed().await;
                }
            }));
            futures::future::join_all(tasks).await;
        }
    })
    .expect("executors");
    while !seeded.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut last = Instant::now();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        if last.elapsed() >= Duration::from_secs(1) {
            last = Instant::now();
            println!(
                "reads {} transfers {}",
                reads.load(Ordering::Relaxed),
                transfers.load(Ordering::Relaxed)
            );
        }
    }
    for h in handles {
        let _ = h.join();
    }
    println!(
        "done reads {} transfers {}",
        reads.load(Ordering::Relaxed),
        transfers.load(Ordering::Relaxed)
    );
    set.close().expect("close");
}

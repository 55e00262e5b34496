//! Eviction of expired records (`@table(expiration:, eviction:, scanInterval:)`, the seed's schema
//! docs): each core scans the shards it owns at clock-aligned times, every `scanInterval` seconds
//! counted from local midnight, and removes records whose expiration plus `eviction` has passed.
//! Expired records are already invisible to reads; eviction frees their space and index entries.

use std::sync::Arc;
use std::time::Duration;

use tessera_shards::Router;
use tessera_storage::Table;
use tessera_storage::query::successor;
use tessera_storage::record::RecordRef;
use tessera_storage::shard::{WriteKind, WriteOp, now_micros, table_prefix};

/// Records examined per visit to a shard before yielding.
const BATCH: usize = 1024;

/// Runs eviction for every expiring table on this core's shards, forever.
pub async fn run(router: Router, tables: Vec<Arc<Table>>) {
    for table in tables {
        let Some(interval) = table.eviction_interval() else {
            continue;
        };
        let router = router.clone();
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(until_next_anchor(interval)).await;
                let removed = sweep(&router, &table).await;
                if removed > 0 {
                    tracing::info!(
                        "eviction: removed {removed} expired records of {}",
                        table.full_name()
                    );
                }
            }
        })
        .detach();
    }
}

/// The time until the next multiple of `interval` seconds since local midnight.
fn until_next_anchor(interval: f64) -> Duration {
    let offset_secs = chrono::Local::now().offset().local_minus_utc() as f64;
    let now = now_micros() as f64 / 1e6 + offset_secs;
    let next = ((now / interval).floor() + 1.0) * interval;
    Duration::from_secs_f64((next - now).max(0.001))
}

/// One pass over the table on every shard this core owns. Returns the records removed.
async fn sweep(router: &Router, table: &Arc<Table>) -> usize {
    let now_ms = now_micros() / 1000;
    let deadline = now_ms.saturating_sub((table.eviction * 1000.0) as u64);
    let mut removed = 0;
    for shard in (0..router.shard_count()).filter(|s| router.owns(*s)) {
        let mut from = table_prefix(table.id).to_vec();
        let end = successor(from.clone());
        loop {
            let (lo, hi) = (from.clone(), end.clone());
            let batch = router
                .on_shard(shard, move |s| {
                    let mut expired = Vec::new();
                    let mut last = None;
                    for kv in s.view().scan_range(lo, hi).take(BATCH) {
                        let Ok((k, v)) = kv else { break };
                        if RecordRef::parse(&v)
                            .and_then(|r| r.expires_at)
                            .is_some_and(|e| e <= deadline)
                        {
                            expired.push(k.to_vec());
                        }
                        last = Some(k.to_vec());
                    }
                    (expired, last)
                })
                .await;
            let Ok((expired, last)) = batch else { break };
            for key in expired {
                let op = WriteOp {
                    table: table.clone(),
                    key,
                    kind: WriteKind::Evict(deadline),
                    from: None,
                };
                if let Ok(outcome) = router.write(op).await
                    && outcome.existed
                {
                    removed += 1;
                }
            }
            match last {
                Some(mut k) => {
                    k.push(0);
                    from = k;
                }
                None => break,
            }
            glommio::yield_if_needed().await;
        }
    }
    removed
}

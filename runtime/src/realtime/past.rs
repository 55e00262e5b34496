//! Subscriptions that start in the past (the Resource API's `previousCount` and `startTime`,
//! and kept MQTT sessions picking up where they stopped): the logged changes they cover, read
//! in the same step as they register.

use std::sync::Arc;

use tessera_shards::{Router, ShardSet};
use tessera_storage::Table;
use tessera_storage::shard::{Change, record_key};

use super::audit::AuditLog;
use super::registry::{REGISTRY, add_exact, add_pattern, id_text};
use super::{Broadcast, Pattern, Scope, Since, Subscriber, Subscriptions};
use crate::app::keys::id_value;

/// The changes of a table a subscription covers: one record's, or those of the ids a pattern
/// matches.
#[derive(Clone)]
enum Covered {
    Key(Vec<u8>),
    Ids(Pattern),
}

impl Covered {
    fn covers(&self, c: &Change) -> bool {
        match self {
            Covered::Key(k) => *k == c.key,
            Covered::Ids(p) => id_text(&c.key).is_some_and(|id| p.matches(&id)),
        }
    }
}

/// Where the changes `scope` covers are dispatched (the owner core of a record's shard, or every
/// core for a pattern), and which they are. `None` when the id cannot be a key.
fn placement(router: &Router, table: &Table, scope: &Scope) -> Option<(Vec<usize>, Covered)> {
    Some(match scope {
        Scope::Record(id) => {
            let key = record_key(table.id, &id_value(table, id)).ok()?;
            (vec![router.owner(router.shard_of(&key))], Covered::Key(key))
        }
        Scope::Pattern(p) => ((0..router.cores()).collect(), Covered::Ids(p.clone())),
    })
}

/// The shards `core` owns.
pub(super) fn shards_of(router: &Router, core: usize) -> Vec<usize> {
    (0..router.shard_count())
        .filter(|s| router.owner(*s) == core)
        .collect()
}

/// The logged changes of table `tid` on this core (its `shards`) that `covered` covers.
fn logged_here(
    set: &ShardSet,
    shards: &[usize],
    tid: u32,
    covered: &Covered,
) -> Vec<Arc<Broadcast>> {
    REGISTRY.with(|r| {
        let mut r = r.borrow_mut();
        for &shard in shards {
            AuditLog::of(&mut r.audit, set, shard);
        }
        r.audit
            .values()
            .flat_map(|log| &log.changes)
            .filter(|c| c.table == tid && covered.covers(c))
            .cloned()
            .collect()
    })
}

/// The changes of `found` from `since` on, in commit order.
fn from_since(mut found: Vec<Arc<Broadcast>>, since: Since) -> Vec<Arc<Broadcast>> {
    found.sort_by_key(|c| c.version);
    match since {
        Since::Count(n) => {
            let skip = found.len().saturating_sub(n);
            found.split_off(skip)
        }
        Since::Time(ms) => found
            .into_iter()
            .filter(|c| c.version / 1000 >= ms)
            .collect(),
        Since::After(v) => found.into_iter().filter(|c| c.version > v).collect(),
    }
}

/// Registers `sub` for `scope` like [`subscribe`], for a subscription that starts in the past
/// (or picks up where an earlier one stopped): instead of the current records, returns the
/// logged changes it covers from `since` on, in commit order. Each core reads its log in the same
/// step as it registers, so every change is either in the result or reaches the subscriber's
/// inbox, never both and never neither.
pub async fn subscribe_since(
    router: &Router,
    table: &Table,
    scope: &Scope,
    sub: Subscriber,
    held: &mut Subscriptions,
    since: Since,
) -> Option<Vec<Arc<Broadcast>>> {
    let (cores, covered) = placement(router, table, scope)?;
    let mut found = Vec::new();
    for &core in &cores {
        let (covered, tid) = (covered.clone(), table.id);
        let shards = shards_of(router, core);
        let part = router
            .on_core(core, move |set| {
                // The log holds every change dispatched so far, and the subscription gets every
                // change dispatched from now on: it skips none.
                match &covered {
                    Covered::Key(k) => add_exact(set, k.clone(), sub, 0),
                    Covered::Ids(p) => add_pattern(set, tid, p.clone(), sub, Vec::new()),
                }
                logged_here(set, &shards, tid, &covered)
            })
            .await
            .ok()?;
        found.extend(part);
    }
    held.cores.insert(sub.sub, cores);
    Some(from_since(found, since))
}

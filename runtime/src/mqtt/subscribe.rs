//! SUBSCRIBE and UNSUBSCRIBE: a filter `Table/id` or `Table/<levels with + and #>` becomes a
//! subscription to one record or to the ids its pattern matches; the current records answer as
//! retained PUBLISH packets. A resumed session subscribes its filters again.

use std::sync::Arc;

use tessera_protocol::mqtt::{
    Options, Packet, Properties, QoS, SubAck, Subscribe, UnsubAck, Unsubscribe, Version,
};
use tessera_storage::Table;
use tessera_storage::shard::Change;

use super::inflight::next_packet_id;
use super::publish::publish_for;
use super::sessions::{self, Saved};
use super::{Connection, guarantee_of};
use crate::app::events;
use crate::app::permissions::Action;
use crate::realtime::{self, Delivery, Pattern, Scope, Subscriber, Subscriptions};
use crate::worker::Worker;

/// Registers subscription `sub` of connection `conn` to `filter`. Returns the table and what the
/// subscription covers, and the current records; `None` when the filter names no exported
/// table or no possible id.
async fn register(
    worker: &Worker,
    (conn, sub): (u64, u32),
    filter: &str,
    options: &Options,
    subscriptions: &mut Subscriptions,
) -> Option<Vec<Change>> {
    let (table, scope) = target(worker, filter)?;
    let sub = subscriber(worker, conn, sub, filter, options);
    realtime::subscribe(&worker.router, &table, scope, None, sub, subscriptions).await
}

/// A shared subscription's filter (`$share/{group}/{filter}`, MQTT 5, also taken in 3.1.1):
/// the filter it covers and its group's number (0: not shared; `None`: malformed).
pub(super) fn shared(filter: &str) -> Option<(&str, u32)> {
    let Some(rest) = filter.strip_prefix("$share/") else {
        return Some((filter, 0));
    };
    let (group, inner) = rest.split_once('/')?;
    if group.is_empty() || group.contains(['+', '#']) || inner.is_empty() {
        return None;
    }
    // Never 0; the same for every member, on every core.
    Some((
        inner,
        (xxhash_rust::xxh3::xxh3_64(filter.as_bytes()) as u32) | 1,
    ))
}

/// The exported table a filter names, and what it covers there.
fn target(worker: &Worker, filter: &str) -> Option<(Arc<Table>, Scope)> {
    let (filter, _) = shared(filter)?;
    let (table, rest) = filter.split_once('/')?;
    let table = worker.app.tables.mqtt_export(table)?.clone();
    let scope = if rest.contains(['+', '#']) {
        Scope::Pattern(Pattern(rest.split('/').map(str::to_owned).collect()))
    } else {
        Scope::Record(rest.to_owned())
    };
    Some((table, scope))
}

/// [`Subscriber::options`] bits: MQTT 5's No Local and Retain As Published.
pub const NO_LOCAL: u8 = 1;
pub const RETAIN_AS_PUBLISHED: u8 = 2;

fn subscriber(worker: &Worker, conn: u64, sub: u32, filter: &str, options: &Options) -> Subscriber {
    Subscriber {
        core: worker.router.core(),
        conn,
        sub,
        guarantee: guarantee_of(options.qos),
        options: u8::from(options.no_local) * NO_LOCAL
            + u8::from(options.retain_as_published) * RETAIN_AS_PUBLISHED,
        share: shared(filter).map_or(0, |(_, share)| share),
    }
}

/// Subscribes `conn` again to the filters of a session whose connection ended at `parked_at`,
/// numbering them from `first`. Returns the filters subscribed with their numbers, and the
/// changes their QoS 1 and 2 filters cover that were committed after `parked_at` (none when it
/// is unknown), in commit order: read in the same step as each registration, so that none falls
/// between the old subscriptions and the new ones.
pub async fn resubscribe(
    worker: &Worker,
    conn: u64,
    first: u32,
    filters: &[(String, QoS)],
    parked_at: Option<u64>,
    subscriptions: &mut Subscriptions,
) -> (Vec<(String, u32, QoS)>, Vec<Delivery>) {
    let after = parked_at.unwrap_or(u64::MAX);
    let (mut subscribed, mut logged) = (Vec::new(), Vec::new());
    for (sub, (filter, qos)) in (first..).zip(filters) {
        let Some((table, scope)) = target(worker, filter) else {
            continue;
        };
        // The subscription options other than QoS are not kept with a session.
        let s = subscriber(worker, conn, sub, filter, &Options::qos(*qos));
        let since = realtime::Since::After(after);
        let Some(found) =
            realtime::subscribe_since(&worker.router, &table, &scope, s, subscriptions, since)
                .await
        else {
            continue;
        };
        subscribed.push((filter.clone(), sub, *qos));
        if *qos != QoS::AtMostOnce {
            logged.extend(found.into_iter().map(|change| Delivery {
                change,
                guarantee: guarantee_of(*qos),
                options: 0,
                share: 0,
            }));
        }
    }
    logged.sort_by_key(|d| d.change.version);
    (subscribed, logged)
}

impl Connection<'_> {
    pub async fn subscribe(&mut self, s: Subscribe) -> Option<u8> {
        // CONNACK said Subscription Identifiers are not available: sending one is a protocol
        // error (0xA1, "Subscription Identifiers not supported").
        if !s.properties.subscription_identifiers.is_empty() {
            return Some(0xA1);
        }
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut retained = Vec::new();
        let user = self.user();
        for (filter, options) in &s.filters {
            let qos = options.qos;
            // Subscribing again to a filter replaces the subscription.
            let existed = self.filters.remove(filter);
            if let Some((old, _)) = existed {
                self.subscriptions
                    .release(&self.worker.router, self.conn, Some(old))
                    .await;
            }
            // Retain Handling: the current records at every subscribe (0), only at a new one
            // (1), or never (2); never for a shared subscription.
            let Some((inner, share)) = shared(filter) else {
                codes.push(match self.version {
                    Version::V311 => 0x80,
                    Version::V5 => 0x8F, // topic filter invalid
                });
                continue;
            };
            // No Local on a shared subscription is a protocol error (MQTT-3.8.3-4).
            if share != 0 && options.no_local {
                return Some(0x82);
            }
            let send_current = share == 0
                && match options.retain_handling {
                    0 => true,
                    1 => existed.is_none(),
                    _ => false,
                };
            let readable = inner.split_once('/').and_then(|(t, _)| {
                let table = self.worker.app.tables.mqtt_export(t)?;
                Some(user.as_ref().is_some_and(|u| {
                    u.permission
                        .allows(&table.database, &table.name, Action::Read)
                }))
            });
            if readable == Some(false) {
                codes.push(match self.version {
                    Version::V311 => 0x80,
                    Version::V5 => 0x87, // not authorized
                });
                continue;
            }
            let mut current = Vec::new();
            let added = self.add_subscription(filter, options, &mut current).await;
            if send_current {
                retained.append(&mut current);
            }
            match added {
                Some(()) => codes.push(qos as u8),
                None => codes.push(match self.version {
                    Version::V311 => 0x80,
                    Version::V5 => 0x8F,
                }),
            }
        }
        self.save();
        let _ = self
            .outbox
            .send(Packet::SubAck(SubAck {
                packet_id: s.packet_id,
                properties: Properties::default(),
                codes,
            }))
            .await;
        let mut next_id = 0x8000;
        let tables = &self.worker.app.tables;
        for (change, qos) in retained {
            // Only what the role may read of each record (the filter's table allowed reading).
            let seen = match (&user, tables.export_by_id(change.table)) {
                (Some(u), Some(t)) => events::as_seen_by(&change, t, u),
                _ => None,
            };
            let Some(change) = seen else {
                continue;
            };
            let packet_id = (qos != QoS::AtMostOnce).then(|| {
                next_id = next_packet_id(next_id);
                next_id
            });
            if let Some(p) = publish_for(self.worker, &change, qos, true, packet_id) {
                let _ = self.outbox.send(Packet::Publish(p)).await;
            }
        }
        None
    }

    /// Registers one filter and collects the current records it covers. `None`: refused.
    pub(super) async fn add_subscription(
        &mut self,
        filter: &str,
        options: &Options,
        retained: &mut Vec<(Change, QoS)>,
    ) -> Option<()> {
        self.next_sub += 1;
        let qos = options.qos;
        let ids = (self.conn, self.next_sub);
        let sub = self.next_sub;
        let current = register(self.worker, ids, filter, options, &mut self.subscriptions).await?;
        self.filters.insert(filter.to_owned(), (sub, qos));
        retained.extend(current.into_iter().map(|c| (c, qos)));
        Some(())
    }

    /// Saves a kept session's filters as they are now.
    pub(super) fn save(&self) {
        if let Some(owner) = &self.kept {
            let filters = self.filters.iter().map(|(f, (_, q))| (f.clone(), *q));
            sessions::save(Saved::live(owner, filters));
        }
    }

    /// Picks up a parked session: its filters are subscribed again, without the current
    /// records (the deliverer sends what the session queued while the client was away). Returns
    /// the changes committed after `parked_at` that the session's filters cover.
    pub async fn resume(
        &mut self,
        filters: &[(String, QoS)],
        parked_at: Option<u64>,
    ) -> Vec<Delivery> {
        let first = self.next_sub + 1;
        let (subscribed, logged) = resubscribe(
            self.worker,
            self.conn,
            first,
            filters,
            parked_at,
            &mut self.subscriptions,
        )
        .await;
        for (filter, sub, qos) in subscribed {
            self.next_sub = self.next_sub.max(sub);
            self.filters.insert(filter, (sub, qos));
        }
        logged
    }

    pub async fn unsubscribe(&mut self, u: Unsubscribe) {
        for f in &u.filters {
            if let Some((n, _)) = self.filters.remove(f) {
                self.subscriptions
                    .release(&self.worker.router, self.conn, Some(n))
                    .await;
            }
        }
        self.save();
        let codes = if self.version == Version::V5 {
            vec![0; u.filters.len()]
        } else {
            Vec::new()
        };
        let _ = self
            .outbox
            .send(Packet::UnsubAck(UnsubAck {
                packet_id: u.packet_id,
                properties: Properties::default(),
                codes,
            }))
            .await;
    }
}

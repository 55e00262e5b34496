//! PUBLISH from a client: RETAIN=1 writes the topic's record (an empty payload deletes it),
//! RETAIN=0 is a message to the record's subscribers, and a topic of a wasm resource goes to the
//! resource. And the PUBLISH that tells a subscriber about a change.

use tessera_protocol::mqtt::codec::Reader;
use tessera_protocol::mqtt::properties::Context;
use tessera_protocol::mqtt::{Ack, Packet, Properties, Publish, QoS, Version};
use tessera_storage::Value;
use tessera_storage::record::RecordRef;
use tessera_storage::shard::{Change, Event, WriteKind, WriteOp, now_micros, record_key};
use tessera_storage::validate::WriteMode;
use tessera_storage::value::msgpack_to_json;

use super::{Connection, TOPIC_ALIAS_MAXIMUM};
use crate::app::AppError;
use crate::app::keys::{id_value, set_primary_key};
use crate::app::permissions::Action;
use crate::app::records::check_writable;
use crate::realtime;
use crate::wasm;
use crate::worker::Worker;

/// The topic of a change's record: its table's export and the record id (`Dog/42`).
fn topic_of(worker: &Worker, change: &Change) -> Option<String> {
    let table = worker.app.tables.export_by_id(change.table)?;
    let export = table.export.as_deref()?;
    Some(format!("{export}/{}", realtime::id_text(&change.key)?))
}

/// What a PUBLISH does to its topic's record: a message (an insert, for permissions), a put
/// (retained), or a delete (retained and empty).
fn publish_action(p: &Publish) -> Action {
    match (p.retain, p.payload.is_empty()) {
        (false, _) => Action::Insert,
        (true, true) => Action::Delete,
        (true, false) => Action::Update,
    }
}

/// A PUBLISH payload read as JSON.
fn payload_value(p: &Publish) -> Result<Value, crate::app::body::BodyError> {
    let mut body = p.payload.clone();
    crate::app::body::decode(
        Some("application/json"),
        &mut body,
        &mut simd_json::Buffers::default(),
    )
}

/// What a published message keeps for its subscribers (its [`Event::Message`] meta): its QoS,
/// then the MQTT 5 properties that travel with it to subscribers (payload format, content type,
/// response topic, correlation data, user properties).
fn message_meta(p: &Publish, conn: u64) -> Vec<u8> {
    let travelling = Properties {
        payload_format_indicator: p.properties.payload_format_indicator,
        content_type: p.properties.content_type.clone(),
        response_topic: p.properties.response_topic.clone(),
        correlation_data: p.properties.correlation_data.clone(),
        user_properties: p.properties.user_properties.clone(),
        ..Properties::default()
    };
    let mut meta = vec![p.qos as u8];
    meta.extend_from_slice(&conn.to_be_bytes());
    travelling.write(&mut meta);
    meta
}

/// The QoS a message was published at, when it is one an MQTT client published.
pub fn published_qos(change: &Change) -> Option<QoS> {
    meta_head(change).map(|(qos, _)| qos)
}

/// The QoS and publishing connection at the head of a message's meta, read without its
/// properties (which only the PUBLISH itself needs): checked for every delivery.
fn meta_head(change: &Change) -> Option<(QoS, u64)> {
    let Event::Message { meta, .. } = &change.event else {
        return None;
    };
    let qos = QoS::from_bits(*meta.first()?).ok()?;
    Some((qos, u64::from_be_bytes(meta.get(1..9)?.try_into().ok()?)))
}

/// The QoS and properties [`message_meta`] kept (none for a message published otherwise: by a
/// wasm resource).
fn read_meta(meta: &[u8]) -> Option<(QoS, Properties)> {
    let qos = QoS::from_bits(*meta.first()?).ok()?;
    let properties = Properties::read(&mut Reader::new(meta.get(9..)?), Context::Publish).ok()?;
    Some((qos, properties))
}

/// Whether `change` is a message the connection `conn` published (MQTT 5's No Local).
pub fn published_by(change: &Change, conn: u64) -> bool {
    meta_head(change).is_some_and(|(_, from)| from == conn)
}

/// The PUBLISH that tells a subscriber about a change: the record as JSON, `null` for a delete,
/// a message's payload as published, with its MQTT 5 properties (`None` once the message has
/// expired; MQTT 5 subscribers get the time it has left). A message goes at the lower of its
/// publish's QoS and `qos`, the subscription's.
pub fn publish_for(
    worker: &Worker,
    change: &Change,
    mut qos: QoS,
    retain: bool,
    mut packet_id: Option<u16>,
) -> Option<Publish> {
    let mut properties = Properties::default();
    let payload = match &change.event {
        Event::Put(stored) => {
            let rec = RecordRef::parse(stored)?;
            let mut json = Vec::with_capacity(rec.body.len() + 16);
            msgpack_to_json(rec.body, &mut json).ok()?;
            json
        }
        Event::Delete => b"null".to_vec(),
        Event::Message {
            payload,
            expires_at,
            meta,
        } => {
            if let Some((published, kept)) = read_meta(meta) {
                properties = kept;
                qos = qos.min(published);
                if qos == QoS::AtMostOnce {
                    packet_id = None;
                }
            }
            if let Some(at) = expires_at {
                let left_ms = at.checked_sub(now_micros() / 1000).filter(|l| *l > 0)?;
                properties.message_expiry_interval = Some(left_ms.div_ceil(1000) as u32);
            }
            payload.clone()
        }
    };
    Some(Publish {
        dup: false,
        qos,
        retain,
        topic: topic_of(worker, change)?,
        packet_id,
        properties,
        payload,
    })
}

impl Connection<'_> {
    /// PUBLISH from the client: RETAIN=1 writes the record (empty payload: deletes it), RETAIN=0
    /// is a message to the record's subscribers. Acknowledged once the write has committed.
    /// Returns the reason the connection must end with, if it must: a topic alias above the
    /// maximum or never set (0x94, a protocol error), or, in MQTT 3.1.1, which has no refusal
    /// codes, any refused publish.
    pub async fn publish(&mut self, mut p: Publish) -> Option<u8> {
        // MQTT 5 topic aliases: a topic with an alias sets it; an empty topic uses it.
        match p.properties.topic_alias {
            Some(alias) if alias == 0 || alias > TOPIC_ALIAS_MAXIMUM => return Some(0x94),
            Some(alias) if p.topic.is_empty() => match self.aliases.get(&alias) {
                Some(t) => p.topic = t.clone(),
                None => return Some(0x94),
            },
            Some(alias) => {
                self.aliases.insert(alias, p.topic.clone());
            }
            None => {}
        }
        let result = self.apply_publish(&p).await;
        if let (Err(code), Version::V311) = (result, self.version) {
            return Some(code);
        }
        let reason = match result {
            Ok(()) => 0,
            Err(code) => code,
        };
        let ack = |id| Ack {
            packet_id: id,
            reason: if self.version == Version::V5 {
                reason
            } else {
                0
            },
            properties: Properties::default(),
        };
        let reply = match (p.qos, p.packet_id) {
            (QoS::AtLeastOnce, Some(id)) => Some(Packet::PubAck(ack(id))),
            (QoS::ExactlyOnce, Some(id)) => Some(Packet::PubRec(ack(id))),
            _ => None,
        };
        if let Some(r) = reply {
            let _ = self.outbox.send(r).await;
        }
        None
    }

    /// Carries out a publish (also a will). The error is an MQTT 5 reason code.
    pub async fn apply_publish(&mut self, p: &Publish) -> Result<(), u8> {
        if let Some(answered) = self.publish_to_resource(p).await {
            return answered;
        }
        let worker = self.worker;
        // 0x90: topic name invalid (not an exported table).
        let (table, id) = worker.app.tables.topic(&p.topic).ok_or(0x90u8)?;
        // 0x87: not authorized (the role's table permission for what the publish does, as the
        // role is now).
        let action = publish_action(p);
        let user = self.user().ok_or(0x87u8)?;
        if !user.permission.allows(&table.database, &table.name, action) {
            return Err(0x87);
        }
        let pk = id_value(table, id);
        let key = record_key(table.id, &pk).map_err(|_| 0x90u8)?;
        if !p.retain {
            let cluster = &worker.app.cluster;
            if cluster.sends_messages() {
                cluster.send_message(crate::app::cluster::Message {
                    database: table.database.clone(),
                    table: table.name.clone(),
                    key: key.get(4..).unwrap_or_default().to_vec(),
                    payload: p.payload.clone(),
                    expires_at: p
                        .properties
                        .message_expiry_interval
                        .map(|s| now_micros() / 1000 + u64::from(s) * 1000),
                    // No connection here publishes it there (MQTT 5's No Local).
                    meta: message_meta(p, u64::MAX),
                });
            }
            let message = Change {
                table: table.id,
                key,
                event: Event::Message {
                    payload: p.payload.clone(),
                    // MQTT 5 message expiry.
                    expires_at: p
                        .properties
                        .message_expiry_interval
                        .map(|s| now_micros() / 1000 + u64::from(s) * 1000),
                    meta: message_meta(p, self.conn),
                },
                version: 0, // numbered where it is dispatched
            };
            return realtime::publish_message(&worker.router, message, &mut self.messages)
                .await
                .map_err(|_| 0x80);
        }
        // The write reaches subscribers after the messages published before it.
        self.messages.settle().await;
        if p.payload.is_empty() {
            let op = WriteOp {
                table: table.clone(),
                key,
                kind: WriteKind::Delete,
                from: None,
            };
            return worker.router.write(op).await.map(|_| ()).map_err(|_| 0x80);
        }
        let rec = payload_value(p).map_err(|_| 0x99u8)?; // payload format invalid
        // An attribute the role may not write is refused, as over REST and the Operations API.
        let limits = user
            .permission
            .attribute_limits(&table.database, &table.name);
        check_writable(table, limits, &rec, Action::Update).map_err(|_| 0x87u8)?;
        worker
            .write_record(table, rec, pk, WriteMode::Replace)
            .await
            .map(|_| ())
            .map_err(|e| {
                if let AppError::Internal(message) = e {
                    tracing::error!("{message}");
                }
                0x99 // payload format invalid
            })
    }

    /// A publish to a wasm resource's topic goes to the resource: a message to its `publish`, a
    /// retained one to its `put` (an empty retained one to its `delete`). `None`: there is no
    /// resource, or it does not override that verb, and the table's own handling applies.
    pub(super) async fn publish_to_resource(&mut self, p: &Publish) -> Option<Result<(), u8>> {
        let worker = self.worker;
        let (name, id) = p.topic.split_once('/')?;
        let res = worker.wasm.resource(name)?;
        let action = publish_action(p);
        let method = match action {
            Action::Delete => wasm::Method::Delete,
            Action::Update => wasm::Method::Put,
            _ => wasm::Method::Publish,
        };
        if res.falls_back(method) {
            return None;
        }
        // What the resource writes reaches subscribers after the messages published before.
        self.messages.settle().await;
        // As over REST: a resource extending a table is under the table's permissions; a
        // standalone one checks the user itself.
        let Some(user) = self.user() else {
            return Some(Err(0x87));
        };
        if let Some(table) = &res.extends
            && !user.permission.allows(&table.database, &table.name, action)
        {
            return Some(Err(0x87));
        }
        let data = if p.payload.is_empty() {
            None
        } else {
            let mut value = match (payload_value(p), method) {
                (Ok(v), _) => v,
                // A message need not be JSON: the guest gets its bytes.
                (Err(_), wasm::Method::Publish) => Value::Bytes(p.payload.clone()),
                (Err(_), _) => return Some(Err(0x99)), // payload format invalid
            };
            if let (Some(table), wasm::Method::Put) = (&res.extends, method) {
                let pk = &table.primary_key().name;
                set_primary_key(&mut value, pk, id_value(table, id));
            }
            Some(value.to_msgpack())
        };
        let call = wasm::Call {
            method,
            id: Some(id),
            pathname: id,
            search: "",
            is_collection: id.is_empty(),
            data,
            user: Some(user.clone()),
            head: Vec::new(),
        };
        match wasm::call(&worker.wasm, &worker.app, &worker.router, res, call).await {
            Ok(wasm::Handled::Fallback) => None,
            Ok(wasm::Handled::Respond(_)) => Some(Ok(())),
            Err(e) => Some(Err(match e.status() {
                400 | 413 | 422 => 0x99, // payload format invalid
                401 | 403 => 0x87,       // not authorized
                404 => 0x90,             // topic name invalid
                _ => 0x80,               // unspecified error
            })),
        }
    }
}

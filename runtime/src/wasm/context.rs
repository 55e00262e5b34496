//! The `context` import: who the request is from, its headers, and messages to publish.

use tessera_storage::shard::{WriteKind, WriteOp, record_key};
use tessera_storage::value;

use super::state::{HostState, error};
use super::{context_wit as context, types};
use crate::app::keys::id_value;

impl types::Host for &mut HostState {}

impl context::Host for &mut HostState {
    async fn user(&mut self) -> Option<String> {
        self.user.as_ref().map(|u| u.username.clone())
    }

    async fn headers(&mut self) -> Vec<(String, String)> {
        tessera_protocol::http::headers(&self.head)
    }

    async fn publish(&mut self, topic: String, message: Vec<u8>) -> Result<(), types::Error> {
        let app = self.app()?;
        let (table, id) = app
            .tables
            .topic(&topic)
            .ok_or_else(|| error(404, format!("no topic {topic}: it names no exported table")))?;
        let table = table.clone();
        let key = record_key(table.id, &id_value(&table, id))
            .map_err(|e| error(400, format!("bad topic: {e}")))?;
        // Subscribers get JSON, as from an MQTT client.
        let mut json = Vec::with_capacity(message.len() + 16);
        value::msgpack_to_json(&message, &mut json)
            .map_err(|e| error(400, format!("bad message: {e}")))?;
        self.txn.messages.push(WriteOp {
            table,
            key,
            kind: WriteKind::Message {
                payload: json,
                expires_at: None,
                meta: Vec::new(),
            },
            from: None,
        });
        Ok(())
    }
}

//! Server-Sent Events: `GET` with `Accept: text/event-stream` on a record or a table.

use std::sync::Arc;
use std::time::Duration;

use tessera_protocol::MediaType;
use tessera_storage::Table;
use tessera_storage::shard::Change;

use super::Rest;
use crate::app::AppError;
use crate::app::events;
use crate::net::reply::Reply;
use crate::realtime::{self, Guarantee, Scope, Subscriber, Subscriptions};

impl Rest {
    /// Server-Sent Events: the current record(s), then every change, one
    /// `data:` line each. The head waits for the first event; a comment every 15 s notices a
    /// client that has gone. The connection ends with the stream.
    pub(super) async fn event_stream(
        &self,
        table: &Arc<Table>,
        scope: Scope,
        since: Option<realtime::Since>,
        reply: &mut Reply<'_>,
    ) -> Result<(), AppError> {
        reply.keep_alive = false;
        let core = self.router.core();
        let conn = realtime::new_conn(core);
        let inbox = realtime::open_inbox(conn);
        let mut held = Subscriptions::default();
        let sub = Subscriber {
            core,
            conn,
            sub: 1,
            guarantee: Guarantee::AtMostOnce,
        };
        let result = async {
            let current = realtime::subscribe(&self.router, table, scope, since, sub, &mut held)
                .await
                .ok_or(AppError::NoSuchRecord)?;
            let mut started = false;
            let mut buf = Vec::new();
            let mut send = |reply: &mut Reply<'_>, change: &Change, started: &mut bool| {
                if !*started {
                    reply.start_chunked(MediaType::EventStream);
                    *started = true;
                }
                buf.clear();
                buf.extend_from_slice(b"data: ");
                if let Some(e) = events::envelope_json(change) {
                    buf.extend_from_slice(&e);
                }
                buf.extend_from_slice(b"\n\n");
                reply.frame(&buf);
            };
            for c in &current {
                send(reply, c, &mut started);
            }
            loop {
                if started && !reply.flush().await {
                    return Ok(());
                }
                match glommio::timer::timeout(Duration::from_secs(15), async {
                    Ok(inbox.recv().await)
                })
                .await
                {
                    Ok(Some(d)) => send(reply, &d.change, &mut started),
                    Ok(None) => return Ok(()),
                    Err(_) if started => reply.frame(b":\n\n"),
                    Err(_) => {}
                }
            }
        }
        .await;
        held.release(&self.router, conn, None).await;
        realtime::close_inbox(conn);
        result
    }
}

//! Server-Sent Events: `GET` with `Accept: text/event-stream` on a record or a table.

use std::sync::Arc;
use std::time::Duration;

use tessera_protocol::MediaType;
use tessera_storage::Table;
use tessera_storage::shard::Change;

use super::Rest;
use crate::app::AppError;
use crate::app::events;
use crate::app::permissions::User;
use crate::auth::LiveUser;
use crate::net::reply::Reply;
use crate::realtime::{self, Guarantee, Scope, Subscriber, Subscriptions};

impl Rest {
    /// Server-Sent Events: the current record(s), then every change, one
    /// `data:` line each, as `user`'s role may see it now (its attributes only; nothing once it
    /// may no longer read the table; the stream ends within a second once the user is dropped
    /// or deactivated). The head waits for the first event; a comment every 15 s notices a client
    /// that has gone. The connection ends with the stream.
    pub(super) async fn event_stream(
        &self,
        table: &Arc<Table>,
        scope: Scope,
        since: Option<realtime::Since>,
        user: &User,
        reply: &mut Reply<'_>,
    ) -> Result<(), AppError> {
        let live = LiveUser::new(self.auth.users().clone(), Arc::new(user.clone()));
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
            options: 0,
            share: 0,
        };
        let result = async {
            let current = realtime::subscribe(&self.router, table, scope, since, sub, &mut held)
                .await
                .ok_or(AppError::NoSuchRecord)?;
            // The head goes out at once, so that a client knows the stream is open (a
            // browser's `EventSource` fires `open`) before any change, and quiet streams get
            // their keep-alive comments from the start.
            reply.start_chunked(MediaType::EventStream);
            let mut buf = Vec::new();
            // Whether the stream goes on (the user still exists).
            let mut send = |reply: &mut Reply<'_>, change: &Change| {
                let Some(user) = live.current() else {
                    return false;
                };
                let Some(change) = events::as_seen_by(change, table, &user) else {
                    return true;
                };
                buf.clear();
                buf.extend_from_slice(b"data: ");
                if let Some(e) = events::envelope_json(&change) {
                    buf.extend_from_slice(&e);
                }
                buf.extend_from_slice(b"\n\n");
                reply.frame(&buf);
                true
            };
            for c in &current {
                if !send(reply, c) {
                    return Ok(());
                }
            }
            // Seconds without an event; a comment goes out every 15 of them.
            let mut quiet = 0;
            loop {
                if !reply.flush().await {
                    return Ok(());
                }
                match glommio::timer::timeout(Duration::from_secs(1), async {
                    Ok(inbox.recv().await)
                })
                .await
                {
                    Ok(Some(d)) => {
                        quiet = 0;
                        if !send(reply, &d.change) {
                            return Ok(());
                        }
                    }
                    Ok(None) => return Ok(()),
                    // A dropped or deactivated user's stream ends within a second.
                    Err(_) if live.current().is_none() => return Ok(()),
                    Err(_) => {
                        quiet += 1;
                        if quiet == 15 {
                            quiet = 0;
                            reply.frame(b":\n\n");
                        }
                    }
                }
            }
        }
        .await;
        held.release(&self.router, conn, None).await;
        realtime::close_inbox(conn);
        result
    }
}

//! WebSocket: `ws://host:port/<Table>/<id>` or `/<Table>/` subscribes the
//! connection to the resource, and every change arrives as an event envelope: a JSON text frame,
//! or a binary MessagePack/CBOR frame when `Accept` asks for one. Framing is async-tungstenite's;
//! the upgrade answer is written here, on the HTTP connection that asked for it.

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::handshake::derive_accept_key;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use futures::{FutureExt, StreamExt};
use tessera_protocol::MediaType;
use tessera_protocol::http::Request;
use tessera_protocol::media::negotiate;
use tessera_protocol::rest::{PathKind, Target};

use super::Rest;
use super::error::class;
use crate::app::Peer;
use crate::app::output::encode_value;
use crate::app::permissions::Action;
use crate::app::{AppError, events};
use crate::auth::LiveUser;
use crate::net::ws_stream;
use crate::net::{Transport, flush};
use crate::realtime::{self, Guarantee, Pattern, Scope, Subscriber, Subscriptions};

/// Answers an upgrade request and serves the WebSocket until either side closes it.
pub async fn serve(
    rest: &Rest,
    req: &Request<'_>,
    target: Target<'_>,
    peer: &Peer,
    conn: &mut dyn Transport,
    out: &mut Vec<u8>,
) {
    let Some(key) = req.websocket_key else {
        return;
    };
    out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n");
    out.extend_from_slice(b"Connection: Upgrade\r\nSec-WebSocket-Accept: ");
    out.extend_from_slice(derive_accept_key(key.as_bytes()).as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    if !flush(conn, out).await {
        return;
    }
    let mut ws = WebSocketStream::from_raw_socket(&mut *conn, Role::Server, None).await;
    let closing = |code: u16, reason: &str| {
        Message::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: reason.to_owned().into(),
        }))
    };
    // As Harper closes: 401 -> 3000, 403 -> 3003.
    let user = match rest.authenticate(req.authorization, peer).await {
        Ok(user) => user,
        Err(e) => {
            let code = if e.status() == 403 { 3003 } else { 3000 };
            let _ = ws.send(closing(code, &format!("{}: {e}", class(&e)))).await;
            return;
        }
    };
    let table = match rest.app.tables.export(target.resource.as_ref()) {
        Some(t) => t.clone(),
        None => {
            let _ = ws.send(closing(1011, "Not found")).await;
            return;
        }
    };
    if !user
        .permission
        .allows(&table.database, &table.name, Action::Read)
    {
        let e = AppError::Forbidden;
        let _ = ws.send(closing(3003, &format!("{}: {e}", class(&e)))).await;
        return;
    }
    let scope = match target.path {
        PathKind::Record(id) => Scope::Record(id),
        PathKind::Collection(p) if p.is_empty() => Scope::Pattern(Pattern(vec!["#".into()])),
        _ => {
            let _ = ws.send(closing(1011, "Not a record or table")).await;
            return;
        }
    };
    let binary = [MediaType::Json, MediaType::MsgPack, MediaType::Cbor];
    let fmt = negotiate(req.accept, &binary).unwrap_or(MediaType::Json);
    let router = &rest.router;
    let conn_id = realtime::new_conn(router.core());
    let inbox = realtime::open_inbox(conn_id);
    let mut held = Subscriptions::default();
    let sub = Subscriber {
        core: router.core(),
        conn: conn_id,
        sub: 1,
        guarantee: Guarantee::AtMostOnce,
        options: 0,
        share: 0,
    };
    let since = realtime::since_of(target.query);
    let current = realtime::subscribe(router, &table, scope, since, sub, &mut held).await;
    let (mut tx, mut rx) = ws.split();
    let encode = |change: &tessera_storage::shard::Change| -> Option<Message> {
        let mut json = events::envelope_json(change)?;
        if fmt == MediaType::Json {
            return String::from_utf8(json)
                .ok()
                .map(|s| Message::Text(s.into()));
        }
        let v = crate::app::body::json(&mut json, &mut simd_json::Buffers::default()).ok()?;
        let mut bin = Vec::new();
        encode_value(&v, fmt, &mut bin);
        Some(Message::Binary(bin.into()))
    };
    // Each change as the user's role may see it now; `Err` once the user is gone.
    let live = LiveUser::new(rest.auth.users().clone(), user);
    let frame = |change: &tessera_storage::shard::Change| -> Result<Option<Message>, ()> {
        let user = live.current().ok_or(())?;
        Ok(events::as_seen_by(change, &table, &user).and_then(|c| encode(&c)))
    };
    let mut open = true;
    let mut dropped = false;
    for change in current.iter().flatten() {
        match frame(change) {
            Ok(Some(m)) => open = tx.send(m).await.is_ok(),
            Ok(None) => {}
            Err(()) => (open, dropped) = (false, true),
        }
        if !open {
            break;
        }
    }
    // Changes go out as they come; client messages are read (and ignored) until it closes; a
    // dropped or deactivated user's socket is closed within a second.
    let mut gone = Box::pin(live.gone().fuse());
    while open {
        futures::select_biased! {
            () = gone => (open, dropped) = (false, true),
            d = inbox.recv().fuse() => match d {
                Some(d) => match frame(&d.change) {
                    Ok(Some(m)) => open = tx.send(m).await.is_ok(),
                    Ok(None) => {}
                    Err(()) => (open, dropped) = (false, true),
                },
                None => open = false,
            },
            m = rx.next() => match m {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => open = false,
                Some(Ok(_)) => {}
            },
        }
    }
    if dropped {
        // The user was dropped or deactivated: closed as a refused login is.
        let _ = tx
            .send(closing(3000, "Unauthorized: the user no longer exists"))
            .await;
    }
    let _ = tx.close(None).await;
    held.release(router, conn_id, None).await;
    realtime::close_inbox(conn_id);
}

/// MQTT over WebSocket (subprotocol `mqtt`): the MQTT session reads and writes a byte stream
/// carried in binary frames. The one call from one front into another: MQTT's session entry
/// point, for a transport the HTTP front accepted.
pub async fn serve_mqtt(
    rest: &Rest,
    peer: &Peer,
    conn: &mut dyn Transport,
    out: &mut Vec<u8>,
    key: &str,
) {
    if let Some((reader, writer)) = ws_stream::upgrade(conn, out, key, "mqtt").await {
        crate::mqtt::session(&rest.worker, peer, reader, writer).await;
    }
}

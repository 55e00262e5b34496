//! WebSocket (HARPER.md section 10): `ws://host:port/<Table>/<id>` or `/<Table>/` subscribes the
//! connection to the resource, and every change arrives as an event envelope: a JSON text frame,
//! or a binary MessagePack/CBOR frame when `Accept` asks for one. Framing is async-tungstenite's;
//! the upgrade answer is written here, on the HTTP connection that asked for it.

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::handshake::derive_accept_key;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use futures::{FutureExt, StreamExt};
use glommio::net::TcpStream;
use tessera_protocol::MediaType;
use tessera_protocol::http::Request;
use tessera_protocol::media::negotiate;
use tessera_protocol::mqtt::QoS;
use tessera_protocol::rest::{PathKind, Target};

use crate::output::encode_value;
use crate::realtime::{self, Held, Pattern, Scope, Subscriber};
use crate::rest::Core;
use crate::{events, http};

/// Answers an upgrade request and serves the WebSocket until either side closes it.
pub async fn serve(
    core: &Core,
    req: &Request<'_>,
    target: Target<'_>,
    from_loopback: bool,
    conn: &mut TcpStream,
    out: &mut Vec<u8>,
) {
    let Some(key) = req.websocket_key else {
        return;
    };
    out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n");
    out.extend_from_slice(b"Connection: Upgrade\r\nSec-WebSocket-Accept: ");
    out.extend_from_slice(derive_accept_key(key.as_bytes()).as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    if !http::flush(conn, out).await {
        return;
    }
    let mut ws = WebSocketStream::from_raw_socket(&mut *conn, Role::Server, None).await;
    let closing = |code: u16, reason: &str| {
        Message::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: reason.to_owned().into(),
        }))
    };
    // 401 -> 3000, 403 -> 3003 (HARPER.md section 10).
    let user = match core.authenticate(req, from_loopback).await {
        Ok(user) => user,
        Err(e) => {
            let code = if e.status() == 403 { 3003 } else { 3000 };
            let _ = ws.send(closing(code, &format!("{}: {e}", e.class()))).await;
            return;
        }
    };
    let table = match core.shared.tables.get(target.resource.as_ref()) {
        Some(t) => t.clone(),
        None => {
            let _ = ws.send(closing(1011, "Not found")).await;
            return;
        }
    };
    if !user
        .permission
        .allows(&table.database, &table.name, crate::roles::Action::Read)
    {
        let e = crate::error::RestError::Forbidden;
        let _ = ws.send(closing(3003, &format!("{}: {e}", e.class()))).await;
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
    let router = &core.router;
    let conn_id = realtime::new_conn(router.core());
    let inbox = realtime::open_inbox(conn_id);
    let mut held = Held::default();
    let sub = Subscriber {
        core: router.core(),
        conn: conn_id,
        sub: 1,
        qos: QoS::AtMostOnce,
    };
    let since = realtime::since_of(target.query);
    let current = realtime::subscribe(router, &table, scope, since, sub, &mut held).await;
    let (mut tx, mut rx) = ws.split();
    let frame = |change: &tessera_storage::shard::Change| -> Option<Message> {
        let mut json = events::envelope_json(change)?;
        if fmt == MediaType::Json {
            return String::from_utf8(json)
                .ok()
                .map(|s| Message::Text(s.into()));
        }
        let v = crate::body::json(&mut json, &mut simd_json::Buffers::default()).ok()?;
        let mut bin = Vec::new();
        encode_value(&v, fmt, &mut bin);
        Some(Message::Binary(bin.into()))
    };
    let mut open = true;
    for change in current.iter().flatten() {
        if let Some(m) = frame(change)
            && tx.send(m).await.is_err()
        {
            open = false;
            break;
        }
    }
    // Changes go out as they come; client messages are read (and ignored) until it closes.
    while open {
        futures::select_biased! {
            d = inbox.recv().fuse() => match d {
                Some((change, _)) => {
                    if let Some(m) = frame(&change) {
                        open = tx.send(m).await.is_ok();
                    }
                }
                None => open = false,
            },
            m = rx.next() => match m {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => open = false,
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = tx.close(None).await;
    held.release(router, conn_id, None).await;
    realtime::close_inbox(conn_id);
}

/// MQTT over WebSocket (subprotocol `mqtt`): the MQTT session reads and writes a byte stream
/// carried in binary frames.
pub async fn serve_mqtt(core: &Core, conn: &mut TcpStream, out: &mut Vec<u8>, key: &str) {
    out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n");
    out.extend_from_slice(b"Connection: Upgrade\r\nSec-WebSocket-Protocol: mqtt\r\n");
    out.extend_from_slice(b"Sec-WebSocket-Accept: ");
    out.extend_from_slice(derive_accept_key(key.as_bytes()).as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    if !http::flush(conn, out).await {
        return;
    }
    let ws = WebSocketStream::from_raw_socket(&mut *conn, Role::Server, None).await;
    let (tx, rx) = ws.split();
    let reader = FrameReader {
        rx,
        pending: Vec::new(),
        at: 0,
    };
    let writer = FrameWriter { tx };
    crate::mqtt::session(core, reader, writer).await;
}

/// Reads the payloads of binary frames as one byte stream.
struct FrameReader<S> {
    rx: async_tungstenite::WebSocketReceiver<S>,
    pending: Vec<u8>,
    at: usize,
}

impl<S> futures_lite::AsyncRead for FrameReader<S>
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin,
{
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::Poll;
        loop {
            if self.at < self.pending.len() {
                let n = buf.len().min(self.pending.len() - self.at);
                let at = self.at;
                buf[..n].copy_from_slice(&self.pending[at..at + n]);
                self.at += n;
                return Poll::Ready(Ok(n));
            }
            match futures::ready!(self.rx.poll_next_unpin(cx)) {
                Some(Ok(Message::Binary(b))) => {
                    self.pending = b.to_vec();
                    self.at = 0;
                }
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(0)),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(std::io::Error::other(e))),
            }
        }
    }
}

/// Writes each buffer as one binary frame.
struct FrameWriter<S> {
    tx: async_tungstenite::WebSocketSender<S>,
}

impl<S> futures_lite::AsyncWrite for FrameWriter<S>
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin,
{
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use futures::Sink;
        let mut tx = std::pin::Pin::new(&mut self.tx);
        futures::ready!(tx.as_mut().poll_ready(cx)).map_err(std::io::Error::other)?;
        tx.start_send(Message::Binary(buf.to_vec().into()))
            .map_err(std::io::Error::other)?;
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use futures::Sink;
        std::pin::Pin::new(&mut self.tx)
            .poll_flush(cx)
            .map_err(std::io::Error::other)
    }

    fn poll_close(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use futures::Sink;
        std::pin::Pin::new(&mut self.tx)
            .poll_close(cx)
            .map_err(std::io::Error::other)
    }
}

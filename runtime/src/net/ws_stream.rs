//! A WebSocket connection as a byte stream: the payloads of binary frames read as one stream,
//! and each write sent as one binary frame (how MQTT runs over WebSocket).

use super::{Transport, flush};
use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::handshake::derive_accept_key;
use async_tungstenite::tungstenite::protocol::Role;
use futures::StreamExt;

/// Answers an upgrade request (`key`: its `Sec-WebSocket-Key`) with `101 Switching Protocols`
/// for `subprotocol`, and returns the connection as a reader and a writer of bytes. `None` when
/// the client is gone.
pub async fn upgrade<'c>(
    conn: &'c mut dyn Transport,
    out: &mut Vec<u8>,
    key: &str,
    subprotocol: &str,
) -> Option<(
    FrameReader<&'c mut dyn Transport>,
    FrameWriter<&'c mut dyn Transport>,
)> {
    out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n");
    out.extend_from_slice(b"Connection: Upgrade\r\nSec-WebSocket-Protocol: ");
    out.extend_from_slice(subprotocol.as_bytes());
    out.extend_from_slice(b"\r\nSec-WebSocket-Accept: ");
    out.extend_from_slice(derive_accept_key(key.as_bytes()).as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    if !flush(conn, out).await {
        return None;
    }
    let ws = WebSocketStream::from_raw_socket(conn, Role::Server, None).await;
    let (tx, rx) = ws.split();
    let reader = FrameReader {
        rx,
        pending: Vec::new(),
        at: 0,
    };
    Some((reader, FrameWriter { tx }))
}

/// Reads the payloads of binary frames as one byte stream.
pub struct FrameReader<S> {
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
pub struct FrameWriter<S> {
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

//! The HTTP/1.1 connection loop: reads requests (pipelined ones included), frames their bodies,
//! hands each to the listener's [`Handler`] (the REST front or the Operations API), and writes
//! responses in order, flushing whenever no further complete request is waiting in the buffer.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use tessera_protocol::http::{
    BodyFraming, ChunkedDecoder, FramingError, Request, parse_head_info, parse_request, write_head,
};

use super::reply::Reply;
use super::{FLUSH_AT, Gate, Transport, accept, flush};
use crate::app::Peer;
use crate::app::settings::{ConnectionLimits, Mtls};

const READ_CHUNK: usize = 16 * 1024;

/// What serves the requests of one listener on one core.
// The futures stay on their core (glommio), so they need not be `Send`.
#[allow(async_fn_in_trait)]
pub trait Handler: 'static {
    /// Handles one request, writing the whole response (or its chunks) through `reply`.
    async fn handle(&self, req: &Request<'_>, body: &mut [u8], peer: &Peer, reply: &mut Reply<'_>);
}

/// What a connection may take: its requests' body size and time, its idle time.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body: usize,
    pub times: ConnectionLimits,
}

/// What a client over the connection limit is told.
const BUSY: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// Serves HTTP connections from `listener` forever, as many at once as `gate` lets in, each
/// request handled by `handler` within `limits`. `what` names the listener in the log.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Rc<H>,
    limits: Limits,
    gate: Arc<Gate>,
    what: &'static str,
) {
    accept(listener, what, gate, BUSY, move |stream| {
        plain(handler.clone(), stream, limits)
    })
    .await;
}

/// Reads more of a request (see [`Received::fill`]) until `deadline`: `Err` once it passed.
async fn fill_until<S: Transport>(
    input: &mut Received,
    stream: &mut S,
    want: usize,
    deadline: Instant,
) -> Result<bool, ()> {
    let left = deadline.saturating_duration_since(Instant::now());
    glommio::timer::timeout(left, async { Ok(input.fill(stream, want).await) })
        .await
        .map_err(drop)
}

/// Answers a client too slow to send its request (408) and closes.
async fn too_slow(stream: &mut dyn Transport, out: &mut Vec<u8>) {
    let body = b"\"ClientError: Request timeout\"";
    write_head(
        out,
        408,
        &[
            ("Content-Type", b"application/json"),
            ("Connection", b"close"),
        ],
        Some(body.len()),
        false,
    );
    out.extend_from_slice(body);
    flush(stream, out).await;
    let _ = stream.close().await;
}

/// Bytes received and not yet consumed: `buf[start..end]`.
struct Received {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Received {
    fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Reads more bytes, making room for at least `want` pending bytes. `false` on EOF or error.
    async fn fill<S: Transport>(&mut self, stream: &mut S, want: usize) -> bool {
        if self.start > 0 && (self.start == self.end || self.buf.len() - self.end < READ_CHUNK) {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let need = (self.start + want).max(self.end + READ_CHUNK);
        if self.buf.len() < need {
            self.buf.resize(need, 0);
        }
        match stream.read(&mut self.buf[self.end..]).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.end += n;
                true
            }
        }
    }

    /// Gives back memory held for a large body once it is consumed.
    fn shrink(&mut self) {
        if self.start == self.end && self.buf.len() > 4 * READ_CHUNK {
            self.buf = vec![0; READ_CHUNK];
            self.start = 0;
            self.end = 0;
        }
    }
}

/// After an error answer, stops writing and drains what the client is still sending for a moment,
/// so that closing does not reset the connection before the client has read the answer.
async fn linger_close(stream: &mut dyn Transport) {
    // Closing the writing side sends FIN (and, over TLS, close_notify) after the answer.
    let _ = stream.close().await;
    let mut sink = [0u8; 8192];
    let mut budget: usize = 64 << 20;
    let linger = Instant::now() + std::time::Duration::from_millis(500);
    loop {
        let left = linger.saturating_duration_since(Instant::now());
        let read = glommio::timer::timeout(left, async { Ok(stream.read(&mut sink).await) });
        match read.await {
            Ok(Ok(n)) if n > 0 && n < budget => budget -= n,
            _ => break,
        }
    }
}

/// Answers a framing error and tells the caller to close.
fn framing_error(out: &mut Vec<u8>, e: &FramingError) {
    // Harper words the body-limit answer without an error class.
    let body = match e {
        FramingError::BodyTooLarge(_) => format!("\"{e}\""),
        _ => format!("\"ClientError: {e}\""),
    };
    write_head(
        out,
        e.status(),
        &[("Content-Type", b"application/json")],
        Some(body.len()),
        false,
    );
    out.extend_from_slice(body.as_bytes());
}

/// Serves HTTPS connections from `listener` forever, as [`serve`] serves HTTP: the TLS handshake
/// (within `http.headersTimeout`), then the same connection loop over the TLS stream.
pub async fn serve_tls<H: Handler>(
    listener: TcpListener,
    handler: Rc<H>,
    limits: Limits,
    gate: Arc<Gate>,
    what: &'static str,
    (acceptor, mtls): (futures_rustls::TlsAcceptor, Option<Mtls>),
) {
    accept(listener, what, gate, b"", move |stream| {
        let (handler, acceptor) = (handler.clone(), acceptor.clone());
        async move {
            let _ = stream.set_nodelay(true);
            let loopback = stream.peer_addr().is_ok_and(|a| a.ip().is_loopback());
            let handshake = glommio::timer::timeout(limits.times.headers, async {
                Ok(acceptor.accept(stream).await)
            });
            if let Ok(Ok(tls)) = handshake.await {
                let peer = Peer {
                    loopback,
                    certificate_user: super::tls::certificate_user(tls.get_ref().1, mtls),
                };
                connection(handler, tls, &peer, limits).await;
            }
        }
    })
    .await;
}

/// A plain TCP connection: its options set, then [`connection`].
async fn plain<H: Handler>(handler: Rc<H>, stream: TcpStream, limits: Limits) {
    let _ = stream.set_nodelay(true);
    let peer = Peer {
        loopback: stream.peer_addr().is_ok_and(|a| a.ip().is_loopback()),
        certificate_user: None,
    };
    connection(handler, stream, &peer, limits).await;
}

async fn connection<H: Handler, S: Transport>(
    handler: Rc<H>,
    mut stream: S,
    peer: &Peer,
    limits: Limits,
) {
    let max_body = limits.max_body;
    let mut input = Received {
        buf: vec![0; READ_CHUNK],
        start: 0,
        end: 0,
    };
    let mut out = Vec::with_capacity(READ_CHUNK);
    let mut chunked = Vec::new();
    // When the request being read must have its head, and its body, by: a client that trickles
    // it (or never finishes) is cut off without holding anything but its own task.
    let mut started: Option<Instant> = None;
    loop {
        let info = match parse_head_info(input.pending(), max_body) {
            Ok(Some(info)) => info,
            Ok(None) => {
                if !flush(&mut stream, &mut out).await {
                    return;
                }
                let deadline = match started {
                    Some(t) => t + limits.times.headers,
                    // Idle between requests; a partial head starts the request's clock.
                    None if input.pending().is_empty() => Instant::now() + limits.times.keep_alive,
                    None => *started.insert(Instant::now()) + limits.times.headers,
                };
                match fill_until(&mut input, &mut stream, 0, deadline).await {
                    Ok(true) => {
                        started.get_or_insert_with(Instant::now);
                    }
                    Ok(false) => return,
                    Err(()) if started.is_none() => return,
                    Err(()) => return too_slow(&mut stream, &mut out).await,
                }
                continue;
            }
            Err(e) => {
                framing_error(&mut out, &e);
                flush(&mut stream, &mut out).await;
                linger_close(&mut stream).await;
                return;
            }
        };
        // The body: wait for all of it (Content-Length) or decode it (chunked).
        if info.expect_continue && input.pending().len() == info.len {
            out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            if !flush(&mut stream, &mut out).await {
                return;
            }
        }
        let body_deadline = started.unwrap_or_else(Instant::now) + limits.times.request;
        let consumed = match info.body {
            BodyFraming::Length(n) => {
                let total = info.len + n;
                while input.pending().len() < total {
                    match fill_until(&mut input, &mut stream, total, body_deadline).await {
                        Ok(true) => {}
                        Ok(false) => return,
                        Err(()) => return too_slow(&mut stream, &mut out).await,
                    }
                }
                total
            }
            BodyFraming::Chunked => {
                chunked.clear();
                let mut decoder = ChunkedDecoder::default();
                let mut at = info.len;
                loop {
                    match decoder.feed(&input.pending()[at..], &mut chunked, max_body) {
                        Ok((n, true)) => break at + n,
                        Ok((n, false)) => {
                            at += n;
                            // Keep the head; drop decoded chunk bytes as they are consumed.
                            let head_end = input.start + info.len;
                            let drop = at - info.len;
                            input.buf.copy_within(head_end + drop..input.end, head_end);
                            input.end -= drop;
                            at = info.len;
                            let want = info.len + READ_CHUNK;
                            match fill_until(&mut input, &mut stream, want, body_deadline).await {
                                Ok(true) => {}
                                Ok(false) => return,
                                Err(()) => return too_slow(&mut stream, &mut out).await,
                            }
                        }
                        Err(e) => {
                            framing_error(&mut out, &e);
                            flush(&mut stream, &mut out).await;
                            linger_close(&mut stream).await;
                            return;
                        }
                    }
                }
            }
        };
        let keep_alive = {
            let (head, rest) = input.buf[input.start..input.end].split_at_mut(info.len);
            let req = match parse_request(head) {
                Ok(r) => r,
                Err(e) => {
                    framing_error(&mut out, &e);
                    flush(&mut stream, &mut out).await;
                    return;
                }
            };
            let body: &mut [u8] = match info.body {
                BodyFraming::Length(n) => &mut rest[..n],
                BodyFraming::Chunked => &mut chunked,
            };
            let mut reply = Reply::new(&req, &mut out, &mut stream);
            handler.handle(&req, body, peer, &mut reply).await;
            reply.keep_alive
        };
        input.start += consumed;
        input.shrink();
        // The next request's clock starts with its first byte.
        started = (!input.pending().is_empty()).then(Instant::now);
        if !keep_alive {
            flush(&mut stream, &mut out).await;
            return;
        }
        if out.len() >= FLUSH_AT && !flush(&mut stream, &mut out).await {
            return;
        }
    }
}

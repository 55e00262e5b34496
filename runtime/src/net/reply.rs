//! What one handled HTTP request writes back: a whole response, or a `200` whose body follows
//! in chunks, into the connection's output buffer, flushed by the connection loop.

use std::io::Write;
use std::time::Instant;

use tessera_protocol::MediaType;
use tessera_protocol::http::{Method, Request, write_head};

use super::{FLUSH_AT, Transport, flush};
use crate::app::AppError;

/// Sent with every CSV body (Harper names the download `data.csv`).
const CSV_DISPOSITION: (&str, &[u8]) =
    ("Content-Disposition", b"attachment; filename=\"data.csv\"");
/// Sent with every negotiated body: the response depends on these request headers.
const VARY: &[u8] = b"Accept, Accept-Encoding";

/// What one handled request asks of the connection.
pub struct Reply<'o> {
    pub out: &'o mut Vec<u8>,
    /// The connection, for responses streamed in chunks.
    pub conn: &'o mut dyn Transport,
    pub keep_alive: bool,
    head_only: bool,
    started: Instant,
}

/// Most headers `Reply::send` writes besides the framing ones (a wasm resource's response may
/// set up to 12 of its own).
const MAX_REPLY_HEADERS: usize = 16;

impl<'o> Reply<'o> {
    pub fn new(req: &Request<'_>, out: &'o mut Vec<u8>, conn: &'o mut dyn Transport) -> Reply<'o> {
        Reply {
            out,
            conn,
            keep_alive: req.keep_alive,
            head_only: req.method == Method::Head,
            started: Instant::now(),
        }
    }

    /// Writes the whole response. `headers` are the caller's own (at most three); the content
    /// type, `Vary` and `Server-Timing` are added here. Nothing is allocated.
    pub fn send(
        &mut self,
        status: u16,
        content_type: Option<MediaType>,
        headers: &[(&str, &[u8])],
        body: &[u8],
    ) {
        let mut timing = [0u8; 40];
        let timing = server_timing(self.started, &mut timing);
        let negotiated = content_type.map(|ct| {
            [
                ("Content-Type", ct.content_type().as_bytes()),
                ("Vary", VARY),
            ]
        });
        let csv = (content_type == Some(MediaType::Csv)).then_some(CSV_DISPOSITION);
        let mut all = [("", &b""[..]); MAX_REPLY_HEADERS];
        let mut n = 0;
        for h in negotiated
            .iter()
            .flatten()
            .chain(csv.as_ref())
            .chain(headers)
            .chain([&("Server-Timing", timing)])
        {
            if let Some(slot) = all.get_mut(n) {
                *slot = *h;
                n += 1;
            }
        }
        write_head(
            self.out,
            status,
            &all[..n],
            Some(body.len()),
            self.keep_alive,
        );
        if !self.head_only {
            self.out.extend_from_slice(body);
        }
    }

    /// Starts a `200` response whose body follows in chunks ([`Self::chunk`], [`Self::end`]).
    pub fn start_chunked(&mut self, content_type: MediaType) {
        let headers = [
            ("Content-Type", content_type.content_type().as_bytes()),
            ("Vary", VARY),
            CSV_DISPOSITION,
        ];
        let n = if content_type == MediaType::Csv { 3 } else { 2 };
        write_head(self.out, 200, &headers[..n], None, self.keep_alive);
    }

    /// Sends one chunk of a chunked body, writing to the connection once enough is waiting.
    /// Fails when the client is gone.
    pub async fn chunk(&mut self, data: &[u8]) -> Result<(), AppError> {
        self.frame(data);
        if self.out.len() >= FLUSH_AT && !flush(self.conn, self.out).await {
            self.keep_alive = false;
            return Err(AppError::Unavailable("the client went away".into()));
        }
        Ok(())
    }

    /// Appends one chunk without flushing (a streamed response's frame).
    pub fn frame(&mut self, data: &[u8]) {
        if self.head_only || data.is_empty() {
            return;
        }
        let _ = write!(self.out, "{:x}\r\n", data.len());
        self.out.extend_from_slice(data);
        self.out.extend_from_slice(b"\r\n");
    }

    /// Writes what is waiting to the connection. `false` when the client is gone.
    pub async fn flush(&mut self) -> bool {
        flush(self.conn, self.out).await
    }

    /// Ends a chunked body.
    pub fn end(&mut self) {
        if !self.head_only {
            self.out.extend_from_slice(b"0\r\n\r\n");
        }
    }
}

/// `hdb;dur=<ms with 3 decimals>`, written into `buf`.
fn server_timing(started: Instant, buf: &mut [u8; 40]) -> &[u8] {
    let us = started.elapsed().as_micros() as u64;
    let mut w = &mut buf[..];
    let _ = write!(w, "hdb;dur={}.{:03}", us / 1000, us % 1000);
    let left = w.len();
    &buf[..40 - left]
}

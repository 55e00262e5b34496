//! Transport shared by the protocol fronts, with no protocol logic of its own: the accept loop,
//! the HTTP/1.1 connection loop and its [`reply::Reply`], and a WebSocket connection as a byte
//! stream (for MQTT over WebSocket).

pub mod http;
pub mod reply;
pub mod tls;
pub mod ws_stream;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::FutureExt;
use futures_lite::AsyncWriteExt;
use glommio::net::{TcpListener, TcpStream};

/// The connections open on some listeners, across every core, and how many may be (0: any
/// number).
#[derive(Debug, Default)]
pub struct Gate {
    max: usize,
    open: AtomicUsize,
    refused: AtomicUsize,
}

/// A connection let through a [`Gate`]; dropping it makes room for another.
pub struct Admitted(Arc<Gate>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Gate {
    pub fn new(max: usize) -> Arc<Gate> {
        Arc::new(Gate {
            max,
            open: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
        })
    }

    /// Lets a connection in, unless as many as allowed are open.
    fn admit(self: &Arc<Gate>) -> Option<Admitted> {
        let before = self.open.fetch_add(1, Ordering::Relaxed);
        let admitted = Admitted(self.clone());
        (self.max == 0 || before < self.max).then_some(admitted)
    }
}

/// Accepts connections forever, serving each with `serve` on its own task while `gate` lets
/// it in; one it does not is sent `refusal` and closed. `what` names the listener in the log.
pub async fn accept<F, Fut>(
    listener: TcpListener,
    what: &'static str,
    gate: Arc<Gate>,
    refusal: &'static [u8],
    serve: F,
) where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + 'static,
{
    loop {
        match listener.accept().await {
            Ok(mut stream) => match gate.admit() {
                Some(admitted) => {
                    // `map`, not an async block awaiting it: that would hold the connection's
                    // future twice (the moved-in value and its awaited state), 10 KB more for
                    // every MQTT connection.
                    let served = serve(stream).map(move |()| drop(admitted));
                    glommio::spawn_local(served).detach();
                }
                None => {
                    let refused = gate.refused.fetch_add(1, Ordering::Relaxed) + 1;
                    if refused % 1000 == 1 {
                        tracing::warn!(
                            "{what}: the connection limit is reached: {refused} connections refused so far"
                        );
                    }
                    glommio::spawn_local(async move {
                        let _ = stream.write_all(refusal).await;
                        let _ = stream.close().await;
                    })
                    .detach();
                }
            },
            Err(e) => {
                tracing::warn!("{what} accept failed: {e}");
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// A connection's byte stream: a TCP stream, or a TLS one over it.
pub trait Transport: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin {}

impl<T: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin> Transport for T {}

/// Responses are flushed early once this much is waiting.
pub const FLUSH_AT: usize = 64 * 1024;

/// Writes what is waiting in `out`. `false` when the client is gone.
pub async fn flush(stream: &mut dyn Transport, out: &mut Vec<u8>) -> bool {
    if out.is_empty() {
        return true;
    }
    let ok = stream.write_all(out).await.is_ok();
    out.clear();
    ok
}

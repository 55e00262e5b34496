//! Transport shared by the protocol fronts, with no protocol logic of its own: the accept loop,
//! the HTTP/1.1 connection loop and its [`reply::Reply`], and a WebSocket connection as a byte
//! stream (for MQTT over WebSocket).

pub mod http;
pub mod reply;
pub mod ws_stream;

use std::future::Future;

use futures_lite::AsyncWriteExt;
use glommio::net::{TcpListener, TcpStream};

/// Accepts connections forever, serving each with `serve` on its own task. `what` names the
/// listener in the log.
pub async fn accept<F, Fut>(listener: TcpListener, what: &str, serve: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + 'static,
{
    loop {
        match listener.accept().await {
            Ok(stream) => {
                glommio::spawn_local(serve(stream)).detach();
            }
            Err(e) => {
                tracing::warn!("{what} accept failed: {e}");
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// Responses are flushed early once this much is waiting.
pub const FLUSH_AT: usize = 64 * 1024;

/// Writes what is waiting in `out`. `false` when the client is gone.
pub async fn flush(stream: &mut TcpStream, out: &mut Vec<u8>) -> bool {
    if out.is_empty() {
        return true;
    }
    let ok = stream.write_all(out).await.is_ok();
    out.clear();
    ok
}

//! The HTTP ceiling for this machine: a bare glommio server, one pinned executor and one
//! `SO_REUSEPORT` listener per core, that answers every pipelined HTTP/1.1 request with the same
//! fixed 200 response. The side-by-side script measures it with the same wrk scenario as Tessera's
//! GET by id, so "Tessera reaches N% of the floor" is a ratio from one run.
//!
//! Usage: `floor PORT [THREADS]`.

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::{LocalExecutorBuilder, Placement, net::TcpListener};
use std::time::Duration;

const BODY: &[u8] =
    br#"{"id":1,"name":"Rex-1","breed":"Labrador","age":3,"owner":"owner-1","weight":12.5}"#;

fn response() -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        BODY.len()
    )
    .into_bytes();
    r.extend_from_slice(BODY);
    r
}

/// Counts complete request heads (`\r\n\r\n`) in `buf`, returning how many and where the last ended.
fn complete_heads(buf: &[u8]) -> (usize, usize) {
    let (mut n, mut end, mut i) = (0, 0, 0);
    while let Some(p) = buf
        .get(i..)
        .and_then(|s| s.windows(4).position(|w| w == b"\r\n\r\n"))
    {
        n += 1;
        end = i + p + 4;
        i = end;
    }
    (n, end)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().and_then(|p| p.parse().ok()).unwrap_or(9980);
    let threads: usize = args
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let handles: Vec<_> = (0..threads)
        .map(|cpu| {
            LocalExecutorBuilder::new(Placement::Fixed(cpu))
                .preempt_timer(Duration::from_millis(5))
                .spawn(move || async move {
                    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind");
                    let resp = response();
                    loop {
                        let Ok(mut stream) = listener.accept().await else {
                            continue;
                        };
                        let resp = resp.clone();
                        glommio::spawn_local(async move {
                            let mut buf = vec![0u8; 16384];
                            let mut filled = 0;
                            let mut out = Vec::with_capacity(8192);
                            loop {
                                let n = match stream.read(&mut buf[filled..]).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => n,
                                };
                                filled += n;
                                let (count, end) = complete_heads(&buf[..filled]);
                                for _ in 0..count {
                                    out.extend_from_slice(&resp);
                                }
                                buf.copy_within(end..filled, 0);
                                filled -= end;
                                if filled == buf.len() {
                                    return;
                                }
                                if !out.is_empty() {
                                    if stream.write_all(&out).await.is_err() {
                                        return;
                                    }
                                    out.clear();
                                }
                            }
                        })
                        .detach();
                    }
                })
                .expect("spawn executor")
        })
        .collect();
    println!("floor listening on 127.0.0.1:{port} with {threads} threads");
    for h in handles {
        let _ = h.join();
    }
}

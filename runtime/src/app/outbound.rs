//! Outbound HTTP: the calls caching-table sources and wasm resources make to other services.
//!
//! One thread of its own runs a tokio runtime and `reqwest` (rustls with ring, pooled keep-alive
//! connections, HTTP/2 where the origin offers it): every call in flight is a task there, so a
//! slow origin never holds an executor core, and thousands of calls wait on one thread. An
//! executor hands a call over a channel and awaits its answer on a oneshot. The thread starts
//! with the first call.
//!
//! Every failure comes back as a [`FetchError`] value: not allowed, refused, timed out, too
//! large, or a bad request; a caller decides what status it maps to.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::FutureExt;
use futures::channel::oneshot;

/// One outbound request.
#[derive(Debug, Clone)]
pub struct FetchRequest {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    /// The whole exchange, connect to last byte.
    pub timeout: Duration,
    /// The most body bytes taken; a longer answer is [`FetchError::TooLarge`].
    pub max_bytes: usize,
}

/// An origin's answer.
#[derive(Debug, Clone)]
pub struct FetchResponse {
    pub status: u16,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl FetchResponse {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a call got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// The URL's origin is not in the allowed list.
    NotAllowed(String),
    /// No answer within the time limit.
    Timeout,
    /// The connection could not be made or broke (refused, reset, TLS).
    Refused(String),
    /// The answer's body is longer than the limit.
    TooLarge(usize),
    /// The request itself is malformed (URL, method, header).
    Invalid(String),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::NotAllowed(o) => write!(f, "origin {o} is not allowed"),
            FetchError::Timeout => write!(f, "no answer within the time limit"),
            FetchError::Refused(e) => write!(f, "connection failed: {e}"),
            FetchError::TooLarge(n) => write!(f, "the answer is longer than {n} bytes"),
            FetchError::Invalid(e) => write!(f, "invalid request: {e}"),
        }
    }
}

type Job = (
    FetchRequest,
    oneshot::Sender<Result<FetchResponse, FetchError>>,
);

/// The outbound client, shared by every core.
#[derive(Default)]
pub struct Outbound {
    /// Origins (`scheme://host:port`) a wasm resource may call; sources' own URLs are theirs.
    allowed: Vec<String>,
    jobs: OnceLock<tokio::sync::mpsc::UnboundedSender<Job>>,
}

/// The origin of a URL as `scheme://host:port` (the port always written), for the allowed list.
pub fn origin_of(url: &str) -> Result<String, FetchError> {
    let u = reqwest::Url::parse(url).map_err(|e| FetchError::Invalid(format!("{url}: {e}")))?;
    match (u.scheme(), u.host_str(), u.port_or_known_default()) {
        (s @ ("http" | "https"), Some(h), Some(p)) => Ok(format!("{s}://{h}:{p}")),
        _ => Err(FetchError::Invalid(format!("{url}: not an http(s) URL"))),
    }
}

impl Outbound {
    /// A client that lets wasm resources call `allowed` (origins or URLs; only their origins
    /// count). Refuses an entry that is no http(s) URL.
    pub fn new(allowed: &[String]) -> anyhow::Result<Outbound> {
        let allowed = allowed
            .iter()
            .map(|a| origin_of(a).map_err(|e| anyhow::anyhow!("outbound.allow: {e}")))
            .collect::<anyhow::Result<_>>()?;
        Ok(Outbound {
            allowed,
            jobs: OnceLock::new(),
        })
    }

    /// Whether a wasm resource may call `url`.
    pub fn check(&self, url: &str) -> Result<(), FetchError> {
        let origin = origin_of(url)?;
        if self.allowed.contains(&origin) {
            Ok(())
        } else {
            Err(FetchError::NotAllowed(origin))
        }
    }

    /// Makes the call on the outbound thread; the caller only awaits.
    pub async fn fetch(&self, req: FetchRequest) -> Result<FetchResponse, FetchError> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .get_or_init(start)
            .send((req, tx))
            .map_err(|_| FetchError::Refused("the outbound thread stopped".into()))?;
        rx.await
            .unwrap_or_else(|_| Err(FetchError::Refused("the outbound thread stopped".into())))
    }
}

fn start() -> tokio::sync::mpsc::UnboundedSender<Job> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
    std::thread::Builder::new()
        .name("outbound".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the outbound runtime");
            let client = Arc::new(client());
            rt.block_on(async move {
                while let Some((req, answer)) = rx.recv().await {
                    let client = client.clone();
                    tokio::spawn(async move {
                        let timeout = req.timeout;
                        let out = tokio::time::timeout(timeout, call(&client, req))
                            .map(|r| r.unwrap_or(Err(FetchError::Timeout)))
                            .await;
                        let _ = answer.send(out);
                    });
                }
            });
        })
        .expect("spawning the outbound thread");
    tx
}

fn client() -> reqwest::Client {
    #[allow(deprecated)] // ring: see net/tls.rs
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring's protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::limited(5))
        .build()
        .expect("the outbound HTTP client")
}

async fn call(client: &reqwest::Client, req: FetchRequest) -> Result<FetchResponse, FetchError> {
    let method = reqwest::Method::from_bytes(req.method.as_bytes())
        .map_err(|_| FetchError::Invalid(format!("method {:?}", req.method)))?;
    let url = reqwest::Url::parse(&req.url)
        .map_err(|e| FetchError::Invalid(format!("{}: {e}", req.url)))?;
    let mut builder = client.request(method, url);
    for (name, value) in &req.headers {
        builder = builder.header(name, value);
    }
    if let Some(body) = req.body {
        builder = builder.body(body);
    }
    let resp = builder.send().await.map_err(failed)?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    if resp
        .content_length()
        .is_some_and(|n| n > req.max_bytes as u64)
    {
        return Err(FetchError::TooLarge(req.max_bytes));
    }
    let mut body = Vec::new();
    let mut resp = resp;
    while let Some(chunk) = resp.chunk().await.map_err(failed)? {
        if body.len() + chunk.len() > req.max_bytes {
            return Err(FetchError::TooLarge(req.max_bytes));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(FetchResponse {
        status,
        headers,
        body,
    })
}

fn failed(e: reqwest::Error) -> FetchError {
    if e.is_timeout() {
        FetchError::Timeout
    } else if e.is_builder() {
        FetchError::Invalid(e.to_string())
    } else {
        // The chain says why (refused, reset, certificate): reqwest's own text is only
        // "error sending request".
        let mut why = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            why = format!("{why}: {s}");
            source = s.source();
        }
        FetchError::Refused(why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_compared_with_their_port() {
        let o = Outbound::new(&["http://127.0.0.1:9000/any/path".into()]).unwrap();
        assert!(o.check("http://127.0.0.1:9000/breeds/1").is_ok());
        assert_eq!(
            o.check("http://127.0.0.1:9001/breeds/1"),
            Err(FetchError::NotAllowed("http://127.0.0.1:9001".into()))
        );
        assert!(matches!(
            o.check("file:///etc/passwd"),
            Err(FetchError::Invalid(_))
        ));
        assert_eq!(
            origin_of("https://a.example/x").unwrap(),
            "https://a.example:443"
        );
        assert!(Outbound::new(&["not a url".into()]).is_err());
    }
}

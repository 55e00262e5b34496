//! The `outbound` import: HTTP(S) calls of a resource to the origins `outbound.allow` lists,
//! made by the kernel's outbound client off the core (`app/outbound.rs`). The time waited is
//! given back to the request's time budget; every failure is a value for the guest.

use std::time::{Duration, Instant};

use super::outbound_wit::{FetchError, Host, HttpRequest, HttpResponse};
use super::state::HostState;
use crate::app::outbound::{self, FetchRequest};

/// The longest a call may take, whatever the guest asks.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest answer a call may take, whatever the guest asks.
const MAX_BYTES: u32 = 16 << 20;

impl Host for &mut HostState {
    async fn fetch(&mut self, req: HttpRequest) -> Result<HttpResponse, FetchError> {
        let app = self
            .app()
            .map_err(|e| FetchError::Invalid(e.message))?
            .clone();
        let outbound = &app.sources.outbound;
        outbound.check(&req.url).map_err(into_guest)?;
        let asked = Instant::now();
        let answer = outbound
            .fetch(FetchRequest {
                method: req.method,
                url: req.url,
                headers: req.headers,
                body: req.body,
                timeout: Duration::from_millis(req.timeout_ms.into()).min(MAX_TIMEOUT),
                max_bytes: req.max_bytes.min(MAX_BYTES) as usize,
            })
            .await;
        // Waiting on another service is not the guest's running time.
        self.started += asked.elapsed();
        let r = answer.map_err(into_guest)?;
        Ok(HttpResponse {
            status: r.status,
            headers: r.headers,
            body: r.body,
        })
    }
}

fn into_guest(e: outbound::FetchError) -> FetchError {
    match e {
        outbound::FetchError::NotAllowed(o) => FetchError::NotAllowed(o),
        outbound::FetchError::Timeout => FetchError::Timeout,
        outbound::FetchError::Refused(why) => FetchError::Refused(why),
        outbound::FetchError::TooLarge(n) => FetchError::TooLarge(n as u32),
        outbound::FetchError::Invalid(why) => FetchError::Invalid(why),
    }
}

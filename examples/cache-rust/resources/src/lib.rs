//! The source of the `Breed` caching table: a miss calls `get`, which asks the origin named by
//! the `Origin` record "breeds" (read as the user whose read missed) for `/breeds/<id>`; its
//! JSON becomes the stored record. Writes to `Breed` over REST go to the origin first.

use tessera_wasm_sdk::http::Request;
use tessera_wasm_sdk::{Context, Data, Error, Resource, Response, Result, Target, Value};

#[derive(Default)]
struct BreedSource;

impl BreedSource {
    /// `<origin>/breeds/<id>`.
    fn url(cx: &Context, target: &Target) -> Result<String> {
        let origin: Option<Value> = cx.table("Origin").get("breeds")?;
        let base = origin
            .as_ref()
            .and_then(|o| o["url"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "http://127.0.0.1:8090".to_owned());
        Ok(format!("{base}/breeds/{}", target.id()?))
    }

    fn sent(request: Request) -> Result<Response> {
        match request.send()?.status {
            200..=299 => Ok(Response::status(204)),
            s => Err(Error::new(
                502,
                format!("the origin refused the write: {s}"),
            )),
        }
    }
}

impl Resource for BreedSource {
    const NAME: &'static str = "BreedSource";
    const SOURCE_FOR: Option<&'static str> = Some("Breed");
    const ALLOW_STALE_WHILE_REVALIDATE: bool = true;

    fn get(&mut self, cx: &Context, target: &Target) -> Result<Response> {
        let r = Request::get(&Self::url(cx, target)?)
            .header("Accept", "application/json")
            .timeout(std::time::Duration::from_secs(5))
            .send()?;
        match r.status {
            200 => Response::with_data(200, &r.json::<Value>()?),
            404 => Err(Error::not_found("the origin has no such breed")),
            s => Err(Error::new(502, format!("the origin answered {s}"))),
        }
    }

    fn put(&mut self, cx: &Context, target: &Target, data: Data) -> Result<Response> {
        let breed: Value = data.parse()?;
        Self::sent(Request::new("PUT", &Self::url(cx, target)?).json(&breed)?)
    }

    fn delete(&mut self, cx: &Context, target: &Target) -> Result<Response> {
        Self::sent(Request::new("DELETE", &Self::url(cx, target)?))
    }
}

tessera_wasm_sdk::export!(BreedSource);

//! Test resources for `tests/tests/wasm.rs`, built for `wasm32-unknown-unknown` by the tests.
//!
//! `Widget` extends the `Widget` table (validation on put, a computed field on get, MQTT
//! messages through publish, the rest the table's); `Transfer` is a standalone action writing
//! several records in one transaction; `Echo` returns what the host told it; `Edit` puts,
//! patches, sets and deletes, then reads and searches its own writes; `Pass`, `Fresh` and
//! `Typed` are the benchmark's pass-through GETs; `Hostile` misbehaves, in each way it can;
//! `Residue` and `Keeper` look for what an earlier request left in their instance; `Priced`
//! computes attributes of its table for every reader.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tessera_wasm_sdk::{
    Comparator, Context, Data, Error, Query, Resource, Response, Result, Target, Value,
};

#[derive(Debug, Serialize, Deserialize)]
struct Widget {
    id: i64,
    name: String,
    price: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stock: Option<f64>,
}

/// `/Widget/`: validates puts, adds `priceWithTax` to gets, leaves the rest to the table.
#[derive(Default)]
struct Widgets;

impl Resource for Widgets {
    const NAME: &'static str = "Widget";
    const EXTENDS: Option<&'static str> = Some("Widget");

    fn get(&mut self, cx: &Context, target: &Target) -> Result<Response> {
        let id = target.id()?;
        let Some(mut w) = cx
            .this::<Self>()
            .get::<BTreeMap<String, serde_json_value::V>>(id)?
        else {
            return Err(Error::not_found(format!("no widget {id}")));
        };
        let price = w.get("price").and_then(|v| v.as_f64()).unwrap_or(0.0);
        w.insert("priceWithTax".into(), serde_json_value::V::F(price * 1.25));
        Response::ok(&w)
    }

    fn put(&mut self, cx: &Context, target: &Target, data: Data) -> Result<Response> {
        let w: Widget = data.parse()?;
        if w.price < 0.0 {
            return Err(Error::bad_request("price must not be negative"));
        }
        if w.name.trim().is_empty() {
            return Err(Error::new(422, "name is required"));
        }
        cx.this::<Self>().put(target.id()?, &w)?;
        Ok(Response::status(204))
    }

    /// An MQTT message to `Widget/<id>`: `{"restock": n}` adds n to the stock and tells the
    /// widget's subscribers.
    fn publish(&mut self, cx: &Context, target: &Target, data: Data) -> Result<Response> {
        #[derive(Deserialize)]
        struct Restock {
            restock: i64,
        }
        let r: Restock = data.parse()?;
        if r.restock <= 0 {
            return Err(Error::bad_request("restock must be positive"));
        }
        let id = target.id()?;
        cx.this::<Self>()
            .update(id)
            .add_to("stock", r.restock as f64)
            .apply()?;
        cx.publish(
            &format!("Widget/{id}"),
            &BTreeMap::from([("restocked", r.restock)]),
        )?;
        Ok(Response::status(204))
    }
}

/// A dynamically typed MessagePack value, enough for the tests (no serde_json in wasm guests).
mod serde_json_value {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(untagged)]
    pub enum V {
        Null,
        B(bool),
        I(i64),
        F(f64),
        S(String),
        A(Vec<V>),
        M(std::collections::BTreeMap<String, V>),
    }

    impl V {
        pub fn as_f64(&self) -> Option<f64> {
            match self {
                V::I(i) => Some(*i as f64),
                V::F(f) => Some(*f),
                _ => None,
            }
        }
    }
}

#[derive(Deserialize)]
struct TransferBody {
    from: i64,
    to: i64,
    amount: f64,
    /// Fail after writing (to see the writes rolled back): "error", "panic" or nothing.
    #[serde(default)]
    then: Option<String>,
}

/// `POST /Transfer/`: moves stock between two widgets and logs it, all in one transaction;
/// reads its own writes to refuse a negative stock.
#[derive(Default)]
struct Transfer;

impl Resource for Transfer {
    const NAME: &'static str = "Transfer";

    fn post(&mut self, cx: &Context, _target: &Target, data: Data) -> Result<Response> {
        let t: TransferBody = data.parse()?;
        let widgets = cx.table("Widget");
        widgets
            .update(t.from)
            .subtract_from("stock", t.amount)
            .apply()?;
        widgets.update(t.to).add_to("stock", t.amount).apply()?;
        let from: Widget = widgets
            .get(t.from)?
            .ok_or_else(|| Error::not_found("no such widget"))?;
        if from.stock.unwrap_or(0.0) < 0.0 {
            return Err(Error::new(409, "not enough stock"));
        }
        let log = cx.table("Log");
        let id = log.create(&BTreeMap::from([
            ("from", t.from),
            ("to", t.to),
            ("amount", t.amount as i64),
        ]))?;
        cx.publish(&format!("Log/{id}"), &"transferred")?;
        match t.then.as_deref() {
            Some("error") => Err(Error::new(418, "changed my mind")),
            Some("panic") => panic!("changed my mind"),
            _ => Response::with_data(201, &id),
        }
    }
}

#[derive(Serialize)]
struct EchoOut {
    id: Option<String>,
    pathname: String,
    is_collection: bool,
    tag: Option<String>,
    user: Option<String>,
    agent: Option<String>,
    body: Option<BTreeMap<String, serde_json_value::V>>,
    cheap: Vec<BTreeMap<String, serde_json_value::V>>,
}

/// `/Echo/...`: what the host told it, a custom header and status, and a search.
#[derive(Default)]
struct Echo;

impl Echo {
    fn echo(cx: &Context, target: &Target, data: Option<Data>) -> Result<Response> {
        let cheap = cx.table("Widget").search(
            &Query::new()
                .condition("price", Comparator::LessThan, &10)?
                .sort("price", true)
                .select(&["id", "price"])
                .limit(5),
        )?;
        let out = EchoOut {
            id: target.id.clone(),
            pathname: target.pathname.clone(),
            is_collection: target.is_collection,
            tag: target.get("tag"),
            user: cx.user(),
            agent: cx.header("x-agent"),
            body: data.map(|d| d.parse()).transpose()?,
            cheap,
        };
        Ok(Response::with_data(202, &out)?.header("X-Echo", "yes"))
    }
}

impl Resource for Echo {
    const NAME: &'static str = "Echo";

    fn get(&mut self, cx: &Context, target: &Target) -> Result<Response> {
        Echo::echo(cx, target, None)
    }

    fn search(&mut self, cx: &Context, target: &Target) -> Result<Response> {
        Echo::echo(cx, target, None)
    }

    fn post(&mut self, cx: &Context, target: &Target, data: Data) -> Result<Response> {
        Echo::echo(cx, target, Some(data))
    }

    fn delete(&mut self, _cx: &Context, _target: &Target) -> Result<Response> {
        Ok(Response::body("text/plain", b"gone".to_vec()).header("X-Deleted", "1"))
    }
}

/// `GET /Pass/id`: the `Plain` record, through the guest: the benchmark's pass-through, with its
/// instance kept between requests.
#[derive(Default)]
struct Pass;

impl Resource for Pass {
    const NAME: &'static str = "Pass";
    const REUSE: bool = true;

    fn get(&mut self, cx: &Context, target: &Target) -> Result<Response> {
        pass_through(cx, target)
    }
}

/// `GET /Fresh/id`: the same with the default isolation (each request on an instance in its
/// just-instantiated state: a fresh one, or one rewound).
#[derive(Default)]
struct Fresh;

impl Resource for Fresh {
    const NAME: &'static str = "Fresh";

    fn get(&mut self, cx: &Context, target: &Target) -> Result<Response> {
        pass_through(cx, target)
    }
}

/// `GET /Typed/id`: the `Plain` record decoded into a [`Value`] and encoded again (the default
/// isolation): what a resource that looks at the record before returning it pays.
#[derive(Default)]
struct Typed;

impl Resource for Typed {
    const NAME: &'static str = "Typed";

    fn get(&mut self, cx: &Context, target: &Target) -> Result<Response> {
        match cx.table("Plain").get::<Value>(target.id()?)? {
            Some(w) => Response::ok(&w),
            None => Err(Error::not_found("no such record")),
        }
    }
}

/// The record handed on as the table stores it: no decoding, no encoding.
fn pass_through(cx: &Context, target: &Target) -> Result<Response> {
    match cx.table("Plain").get_data(target.id()?)? {
        Some(record) => Ok(Response::with_raw(200, record)),
        None => Err(Error::not_found("no such record")),
    }
}

#[derive(Deserialize)]
struct EditBody {
    /// The widget to create and edit.
    id: i64,
    /// The widget to delete.
    drop: i64,
    /// "error": fail after everything (to see it all rolled back).
    #[serde(default)]
    then: Option<String>,
}

#[derive(Serialize)]
struct EditOut {
    /// The widgets with a price of at least 2, dearest first, as the request sees them.
    dear: Vec<Value>,
    /// The edited widget as the request sees it.
    edited: Option<Value>,
    dropped_existed: bool,
    dropped_now: Option<Value>,
}

/// `POST /Edit/`: put, patch, `update().set()` and delete in one request, then a search and
/// reads that must see all of them before they commit.
#[derive(Default)]
struct Edit;

impl Resource for Edit {
    const NAME: &'static str = "Edit";

    fn post(&mut self, cx: &Context, _target: &Target, data: Data) -> Result<Response> {
        let e: EditBody = data.parse()?;
        let widgets = cx.table("Widget");
        widgets.put(
            e.id,
            &Widget {
                id: e.id,
                name: "draft".into(),
                price: 1.0,
                stock: Some(1.0),
            },
        )?;
        widgets.patch(e.id, &BTreeMap::from([("price", 2.5)]))?;
        widgets.update(e.id).set("name", "edited")?.apply()?;
        let dropped_existed = widgets.delete(e.drop)?;
        let out = EditOut {
            dear: widgets.search(
                &Query::new()
                    .condition("price", Comparator::GreaterThanEqual, &2)?
                    .sort("price", true)
                    .select(&["id", "name", "price"]),
            )?,
            edited: widgets.get(e.id)?,
            dropped_existed,
            dropped_now: widgets.get(e.drop)?,
        };
        match e.then.as_deref() {
            Some("error") => Err(Error::new(409, "changed my mind")),
            _ => Response::ok(&out),
        }
    }
}

/// `GET /Hostile/<how>`: loops forever, panics, reads out of bounds or allocates without end.
#[derive(Default)]
struct Hostile;

impl Resource for Hostile {
    const NAME: &'static str = "Hostile";

    fn get(&mut self, _cx: &Context, target: &Target) -> Result<Response> {
        match target.id()? {
            "loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "panic" => panic!("hostile guest panics"),
            "oob" => {
                let p = std::hint::black_box(usize::MAX - 16) as *const u64;
                #[allow(unsafe_code)]
                // SAFETY: none: reading outside linear memory is the point (the host must trap).
                let v = unsafe { std::ptr::read_volatile(p) };
                Response::ok(&v)
            }
            "bomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            other => Err(Error::bad_request(format!("unknown misbehaviour {other}"))),
        }
    }
}

/// `POST /Residue/` with `{"secret": ...}` keeps the secret in a static and on the heap, and
/// grows memory by 2 MiB; `GET /Residue/<the secret reversed>` then reports what the instance
/// still holds of it. The default isolation (a fresh or rewound instance): it must hold nothing.
#[derive(Default)]
struct Residue;

impl Resource for Residue {
    const NAME: &'static str = "Residue";

    fn get(&mut self, _cx: &Context, target: &Target) -> Result<Response> {
        recall(target)
    }

    fn post(&mut self, _cx: &Context, _target: &Target, data: Data) -> Result<Response> {
        remember(data)
    }
}

/// The same with its instance kept: it holds the secret (the control that shows the scan finds
/// what is there).
#[derive(Default)]
struct Keeper;

impl Resource for Keeper {
    const NAME: &'static str = "Keeper";
    const REUSE: bool = true;

    fn get(&mut self, _cx: &Context, target: &Target) -> Result<Response> {
        recall(target)
    }

    fn post(&mut self, _cx: &Context, _target: &Target, data: Data) -> Result<Response> {
        remember(data)
    }
}

static SECRET: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

fn remember(data: Data) -> Result<Response> {
    #[derive(Deserialize)]
    struct Body {
        secret: String,
    }
    let body: Body = data.parse()?;
    *SECRET.lock().unwrap() = body.secret.clone();
    std::hint::black_box(Box::leak(body.secret.into_boxed_str()));
    drop(std::hint::black_box(vec![7u8; 2 << 20]));
    Ok(Response::status(204))
}

/// What an instance holds of an earlier request's secret.
#[derive(Serialize)]
struct Recalled {
    /// The secret in the static.
    kept: String,
    /// Copies of the secret anywhere in linear memory, besides the one this request made.
    copies: usize,
    /// The memory's size in 64 KiB pages: past its initial size only on a used instance.
    pages: usize,
}

fn recall(target: &Target) -> Result<Response> {
    let needle: Vec<u8> = target.id()?.bytes().rev().collect();
    let end = memory_pages() * 65536;
    let byte = |addr: usize| {
        // SAFETY: every address below the memory's size is linear memory the guest may read;
        // volatile, as the compiler may assume nothing of bytes the host or an earlier request
        // wrote.
        #[allow(unsafe_code)]
        unsafe {
            std::ptr::read_volatile(std::ptr::with_exposed_provenance::<u8>(addr))
        }
    };
    let copies = (1..end - needle.len())
        .filter(|&at| at != needle.as_ptr() as usize)
        .filter(|&at| needle.iter().enumerate().all(|(i, b)| byte(at + i) == *b))
        .count();
    Response::ok(&Recalled {
        kept: SECRET.lock().unwrap().clone(),
        copies,
        pages: memory_pages(),
    })
}

/// The linear memory's size in 64 KiB pages (none where this is not built for wasm).
fn memory_pages() -> usize {
    #[cfg(target_arch = "wasm32")]
    return core::arch::wasm32::memory_size(0);
    #[cfg(not(target_arch = "wasm32"))]
    return 0;
}

/// `/Priced/`: the table's own verbs, and two attributes its schema leaves to code: `total`
/// (price with tax; a price of 13 panics, a negative one is an error) and `band`.
#[derive(Default)]
struct Priced;

impl Resource for Priced {
    const NAME: &'static str = "Priced";
    const EXTENDS: Option<&'static str> = Some("Priced");
    const COMPUTES: &'static [&'static str] = &["total", "band"];

    fn compute(&self, attribute: &str, record: &Value) -> Result<Value> {
        let price = record["price"].as_f64();
        match (attribute, price) {
            (_, None) => Ok(Value::Nil),
            ("total", Some(13.0)) => panic!("unlucky price"),
            ("total", Some(p)) if p < 0.0 => Err(Error::bad_request("a negative price")),
            ("total", Some(p)) => {
                let rate = record["taxRate"].as_f64().unwrap_or(0.0);
                Ok(Value::from(p + p * rate))
            }
            (_, Some(p)) => Ok(Value::from(if p < 50.0 { "low" } else { "high" })),
        }
    }
}

/// `GET /Fetch/x?url=...&ms=...`: an outbound GET of `url` with a time limit of `ms`, answered
/// as `{status, body}`, or as `{error}` with the failure the host gave back as a value;
/// `GET /Fetch/x?table=T&id=I`: a record read by the guest; `GET /Fetch/x?invalidate=I`:
/// `Cached` record I invalidated.
#[derive(Default)]
struct Fetch;

impl Resource for Fetch {
    const NAME: &'static str = "Fetch";

    fn get(&mut self, cx: &Context, target: &Target) -> Result<Response> {
        // `?table=T&id=I`: record I of table T as the guest reads it (a caching table's
        // through its source).
        if let Some(id) = target.get("invalidate") {
            cx.table("Cached").invalidate(id)?;
            return Ok(Response::status(204));
        }
        if let (Some(table), Some(id)) = (target.get("table"), target.get("id")) {
            let t = cx.table(&table);
            let found = t.get_data(id.as_str())?;
            let loaded = if t.was_loaded_from_source(id.as_str())? {
                "yes"
            } else {
                "no"
            };
            return match found {
                Some(record) => {
                    Ok(Response::with_raw(200, record).header("X-Loaded-From-Source", loaded))
                }
                None => Err(Error::not_found("no such record")),
            };
        }
        let url = target.get("url").unwrap_or_default();
        let ms = target
            .get("ms")
            .and_then(|m| m.parse().ok())
            .unwrap_or(2000);
        let sent = tessera_wasm_sdk::http::Request::get(&url)
            .timeout(std::time::Duration::from_millis(ms))
            .max_bytes(64)
            .send();
        let out = match sent {
            Ok(r) => {
                let body = String::from_utf8_lossy(&r.body).into_owned();
                BTreeMap::from([("status", r.status.to_string()), ("body", body)])
            }
            Err(e) => BTreeMap::from([("error", format!("{e:?}"))]),
        };
        Response::with_data(200, &out)
    }
}

/// The source of the caching table `Cached`: its origin's base URL is the `name` of `Plain`
/// record 1 (read as the user whose read missed); `GET <base>/breeds/<id>` gives the record,
/// and writes go to the same URL.
#[derive(Default)]
struct CachedSource;

impl CachedSource {
    fn url(cx: &Context, target: &Target) -> Result<String> {
        let base: Value = cx
            .table("Plain")
            .get(1)?
            .ok_or_else(|| Error::new(500, "no origin configured in Plain/1"))?;
        let base = base["name"].as_str().unwrap_or_default().to_owned();
        Ok(format!("{base}/breeds/{}", target.id()?))
    }

    fn send(request: tessera_wasm_sdk::http::Request) -> Result<Response> {
        let r = request.send()?;
        match r.status {
            200..=299 => Ok(Response::status(204)),
            s => Err(Error::new(502, format!("the origin answered {s}"))),
        }
    }
}

impl Resource for CachedSource {
    const NAME: &'static str = "CachedSource";
    const SOURCE_FOR: Option<&'static str> = Some("Cached");

    fn get(&mut self, cx: &Context, target: &Target) -> Result<Response> {
        let r = tessera_wasm_sdk::http::Request::get(&Self::url(cx, target)?).send()?;
        match r.status {
            200 => Response::with_data(200, &r.json::<BTreeMap<String, String>>()?),
            404 => Err(Error::not_found("the origin has no such record")),
            s => Err(Error::new(502, format!("the origin answered {s}"))),
        }
    }

    fn put(&mut self, cx: &Context, target: &Target, data: Data) -> Result<Response> {
        let record: BTreeMap<String, String> = data.parse()?;
        let url = Self::url(cx, target)?;
        Self::send(tessera_wasm_sdk::http::Request::new("PUT", &url).json(&record)?)
    }

    fn delete(&mut self, cx: &Context, target: &Target) -> Result<Response> {
        let url = Self::url(cx, target)?;
        Self::send(tessera_wasm_sdk::http::Request::new("DELETE", &url))
    }
}

tessera_wasm_sdk::export!(
    Widgets,
    Transfer,
    Echo,
    Edit,
    Pass,
    Fresh,
    Typed,
    Hostile,
    Residue,
    Keeper,
    Priced,
    Fetch,
    CachedSource
);

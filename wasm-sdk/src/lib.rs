//! The guest side of Tessera's WebAssembly resources: custom resources written in Rust, compiled
//! to `wasm32-unknown-unknown`, served by the `tessera` host (the seed's Resource API).
//!
//! A resource is a struct with one [`Resource`] impl that overrides only the verbs it changes;
//! every other verb does the table's own behaviour (Harper's `super.get()` and friends). One
//! line, [`export!`], exports every resource of the crate:
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use tessera_wasm_sdk::{Context, Data, Error, Resource, Response, Result, Target};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Product {
//!     id: String,
//!     name: String,
//!     price: f64,
//! }
//!
//! /// `/Product/`: the `Product` table, with validation on `put`.
//! #[derive(Default)]
//! struct Products;
//!
//! impl Resource for Products {
//!     const NAME: &'static str = "Product";
//!     const EXTENDS: Option<&'static str> = Some("Product");
//!
//!     fn put(&mut self, cx: &Context, target: &Target, data: Data) -> Result<Response> {
//!         let product: Product = data.parse()?;
//!         if product.price < 0.0 {
//!             return Err(Error::bad_request("price must not be negative"));
//!         }
//!         cx.this::<Self>().put(target.id()?, &product)?;
//!         Ok(Response::status(204))
//!     }
//! }
//!
//! tessera_wasm_sdk::export!(Products);
//! ```
//!
//! Everything a request writes through [`Table`] commits together when the verb returns `Ok`
//! (atomically, even across shards) and is dropped when it returns `Err`, panics, traps or runs
//! out of time. Reads see the request's own writes. Records cross the boundary as MessagePack,
//! typed on this side through serde.
//!
//! The crate's feature `allocator` (on by default) makes dlmalloc, given the memory the instance
//! already has before any it grows, the global allocator: an instance the host rewinds after
//! each request then reuses its pages rather than growing its memory on every request. Turn it
//! off (`default-features = false`) to use an allocator of your own.

#[cfg(all(target_arch = "wasm32", feature = "allocator"))]
mod heap;
pub mod http;

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

#[allow(unsafe_code, missing_docs, clippy::all)]
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "guest",
        pub_export_macro: true,
        export_macro_name: "export_bindings",
        default_bindings_module: "tessera_wasm_sdk::bindings",
    });
}

use bindings::tessera::wasm::{context, tables, types};

/// The WIT package this SDK targets, as the host reads it.
///
/// ```
/// assert!(tessera_wasm_sdk::WIT.contains("world resource-module"));
/// ```
pub const WIT: &str = include_str!("../wit/tessera.wit");

/// A value of any shape (a record read without a struct for it), as MessagePack knows it.
///
/// ```
/// use tessera_wasm_sdk::Value;
/// let v = Value::Map(vec![("name".into(), "Harper".into())]);
/// assert_eq!(v["name"].as_str(), Some("Harper"));
/// ```
pub use rmpv::Value;

/// A result whose error is a [`Error`] (an HTTP status and a message).
///
/// ```
/// use tessera_wasm_sdk::{Error, Result};
/// fn half(n: i64) -> Result<i64> {
///     if n % 2 != 0 {
///         return Err(Error::bad_request("odd"));
///     }
///     Ok(n / 2)
/// }
/// assert_eq!(half(4).unwrap(), 2);
/// assert_eq!(half(3).unwrap_err().status, 400);
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A failure with the HTTP status it answers with (Harper's `error.statusCode`).
///
/// ```
/// use tessera_wasm_sdk::Error;
/// let e = Error::new(409, "out of stock");
/// assert_eq!(e.status, 409);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// The HTTP status (4xx or 5xx).
    pub status: u16,
    /// What went wrong, sent to the client.
    pub message: String,
}

impl Error {
    /// An error with this status and message.
    ///
    /// ```
    /// let e = tessera_wasm_sdk::Error::new(403, "not yours");
    /// assert_eq!(e.message, "not yours");
    /// ```
    pub fn new(status: u16, message: impl Into<String>) -> Error {
        Error {
            status,
            message: message.into(),
        }
    }

    /// A 400.
    ///
    /// ```
    /// assert_eq!(tessera_wasm_sdk::Error::bad_request("no").status, 400);
    /// ```
    pub fn bad_request(message: impl Into<String>) -> Error {
        Error::new(400, message)
    }

    /// A 404.
    ///
    /// ```
    /// assert_eq!(tessera_wasm_sdk::Error::not_found("gone").status, 404);
    /// ```
    pub fn not_found(message: impl Into<String>) -> Error {
        Error::new(404, message)
    }

    /// A 403.
    ///
    /// ```
    /// assert_eq!(tessera_wasm_sdk::Error::forbidden("no").status, 403);
    /// ```
    pub fn forbidden(message: impl Into<String>) -> Error {
        Error::new(403, message)
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

impl std::error::Error for Error {}

impl From<types::Error> for Error {
    fn from(e: types::Error) -> Error {
        Error::new(e.status, e.message)
    }
}

impl From<rmp_serde::decode::Error> for Error {
    /// Data that does not fit the type it is read as: a 400.
    fn from(e: rmp_serde::decode::Error) -> Error {
        Error::bad_request(format!("unexpected data: {e}"))
    }
}

impl From<rmp_serde::encode::Error> for Error {
    fn from(e: rmp_serde::encode::Error) -> Error {
        Error::new(500, format!("cannot encode: {e}"))
    }
}

/// Encodes a value as MessagePack, maps with property names.
fn encode<T: Serialize + ?Sized>(v: &T) -> Result<Vec<u8>> {
    Ok(rmp_serde::to_vec_named(v)?)
}

/// A value as a dynamic MessagePack tree (structs as maps with property names).
fn dynamic<T: Serialize + ?Sized>(v: &T) -> Result<rmpv::Value> {
    let bytes = encode(v)?;
    rmpv::decode::read_value(&mut bytes.as_slice())
        .map_err(|e| Error::new(500, format!("cannot encode: {e}")))
}

/// A record id: a number or a string, converted to the table's primary key type by the host
/// (`"42"` finds record 42 of a table with a `Long` key, as in a URL).
///
/// ```
/// use tessera_wasm_sdk::Id;
/// assert_eq!(Id::from(7), Id::Int(7));
/// assert_eq!(Id::from("a"), Id::Str("a".into()));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Id {
    /// A numeric key.
    Int(i64),
    /// A string key.
    Str(String),
}

impl std::fmt::Display for Id {
    /// The id as it appears in a URL path.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Id::Int(i) => write!(f, "{i}"),
            Id::Str(s) => f.write_str(s),
        }
    }
}

impl From<i64> for Id {
    fn from(v: i64) -> Id {
        Id::Int(v)
    }
}
impl From<i32> for Id {
    fn from(v: i32) -> Id {
        Id::Int(v.into())
    }
}
impl From<&str> for Id {
    fn from(v: &str) -> Id {
        Id::Str(v.to_owned())
    }
}
impl From<String> for Id {
    fn from(v: String) -> Id {
        Id::Str(v)
    }
}
impl From<&String> for Id {
    fn from(v: &String) -> Id {
        Id::Str(v.clone())
    }
}

impl Id {
    fn bytes(&self) -> Vec<u8> {
        // An untagged enum of an integer or a string always encodes.
        rmp_serde::to_vec(self).unwrap_or_default()
    }
}

/// What a request addresses (the seed's `RequestTarget`).
///
/// ```
/// use tessera_wasm_sdk::Target;
/// let t = Target {
///     id: Some("42".into()),
///     pathname: "42".into(),
///     search: "verbose=true&tag=a%20b".into(),
///     is_collection: false,
/// };
/// assert_eq!(t.id().unwrap(), "42");
/// assert_eq!(t.get("tag").as_deref(), Some("a b"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The record id from the path, as written in the URL; `None` for a collection.
    pub id: Option<String>,
    /// The path below the resource, without the query string.
    pub pathname: String,
    /// The raw query string, without the `?`.
    pub search: String,
    /// Whether the request addresses a collection (`/Dog/`, `/Dog/?name=x`).
    pub is_collection: bool,
}

impl Target {
    /// The record id, or a 400 when the request addresses a collection.
    ///
    /// ```
    /// # use tessera_wasm_sdk::Target;
    /// let t = Target { id: None, pathname: String::new(), search: String::new(), is_collection: true };
    /// assert_eq!(t.id().unwrap_err().status, 400);
    /// ```
    pub fn id(&self) -> Result<&str> {
        self.id
            .as_deref()
            .ok_or_else(|| Error::bad_request("this request needs a record id"))
    }

    /// The first value of query parameter `name`, percent-decoded (`+` is a space).
    ///
    /// ```
    /// # use tessera_wasm_sdk::Target;
    /// let t = Target { id: None, pathname: String::new(), search: "a=1&b=x+y".into(), is_collection: true };
    /// assert_eq!(t.get("b").as_deref(), Some("x y"));
    /// assert_eq!(t.get("c"), None);
    /// ```
    pub fn get(&self, name: &str) -> Option<String> {
        self.search.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode_component(k) == name).then(|| decode_component(v))
        })
    }
}

/// Percent-decodes one query component (`+` is a space; a bad escape stays as written).
fn decode_component(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let escaped = (b[i] == b'%')
            .then(|| b.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], escaped) {
            (_, Some(byte)) => {
                out.push(byte);
                i += 3;
                continue;
            }
            (b'+', None) => out.push(b' '),
            (c, None) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A request body or message, as MessagePack.
///
/// ```
/// use tessera_wasm_sdk::Data;
/// let d = Data::from_value(&serde_json_like()).unwrap();
/// let back: std::collections::BTreeMap<String, i64> = d.parse().unwrap();
/// assert_eq!(back["qty"], 2);
/// # fn serde_json_like() -> std::collections::BTreeMap<String, i64> {
/// #     [("qty".to_string(), 2)].into_iter().collect()
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Data(pub Vec<u8>);

impl Data {
    /// Reads the data as `T` (a 400 when it does not fit).
    ///
    /// ```
    /// use tessera_wasm_sdk::Data;
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Order { qty: u32 }
    /// let d = Data::from_value(&Order { qty: 2 }).unwrap();
    /// assert_eq!(d.parse::<Order>().unwrap().qty, 2);
    /// // The wrong shape is a 400.
    /// assert_eq!(d.parse::<String>().unwrap_err().status, 400);
    /// ```
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T> {
        Ok(rmp_serde::from_slice(&self.0)?)
    }

    /// Encodes a value.
    ///
    /// ```
    /// let d = tessera_wasm_sdk::Data::from_value(&[1, 2]).unwrap();
    /// assert_eq!(d.0, vec![0x92, 1, 2]);
    /// ```
    pub fn from_value<T: Serialize + ?Sized>(v: &T) -> Result<Data> {
        encode(v).map(Data)
    }
}

/// A response object: status, headers and either data (serialised by content negotiation) or a
/// body sent as it is.
///
/// ```
/// use tessera_wasm_sdk::Response;
/// let r = Response::status(302).header("Location", "/new");
/// assert_eq!(r.status, 302);
/// let r = Response::ok(&[1, 2, 3]).unwrap();
/// assert_eq!(r.status, 200);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The HTTP status.
    pub status: u16,
    /// Extra response headers.
    pub headers: Vec<(String, String)>,
    data: Option<Vec<u8>>,
    body: Option<Vec<u8>>,
    fallback: bool,
}

impl Response {
    /// A response with this status and nothing else.
    ///
    /// ```
    /// let r = tessera_wasm_sdk::Response::status(204);
    /// assert_eq!(r.status, 204);
    /// ```
    pub fn status(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            data: None,
            body: None,
            fallback: false,
        }
    }

    /// A 200 with `data`.
    ///
    /// ```
    /// let r = tessera_wasm_sdk::Response::ok(&"fine").unwrap();
    /// assert_eq!(r.status, 200);
    /// ```
    pub fn ok<T: Serialize + ?Sized>(data: &T) -> Result<Response> {
        Response::with_data(200, data)
    }

    /// A response with this status and `data`, serialised in the format the client asked for.
    ///
    /// ```
    /// let r = tessera_wasm_sdk::Response::with_data(201, &"made").unwrap();
    /// assert_eq!(r.status, 201);
    /// ```
    pub fn with_data<T: Serialize + ?Sized>(status: u16, data: &T) -> Result<Response> {
        let mut r = Response::status(status);
        r.data = Some(encode(data)?);
        Ok(r)
    }

    /// A response with this status whose data is MessagePack already (a record from
    /// [`Table::get_data`], say): handed on without decoding or encoding it, and serialised in
    /// the format the client asked for.
    ///
    /// ```
    /// use tessera_wasm_sdk::{Data, Response};
    /// let r = Response::with_raw(200, Data::from_value(&"as stored").unwrap());
    /// assert_eq!(r.status, 200);
    /// ```
    pub fn with_raw(status: u16, data: Data) -> Response {
        let mut r = Response::status(status);
        r.data = Some(data.0);
        r
    }

    /// A 200 whose body is sent as it is, with this content type.
    ///
    /// ```
    /// let r = tessera_wasm_sdk::Response::body("text/plain", b"hi".to_vec());
    /// assert_eq!(r.headers[0].0, "Content-Type");
    /// ```
    pub fn body(content_type: &str, body: Vec<u8>) -> Response {
        let mut r = Response::status(200).header("Content-Type", content_type);
        r.body = Some(body);
        r
    }

    /// Adds a response header.
    ///
    /// ```
    /// let r = tessera_wasm_sdk::Response::status(200).header("Cache-Control", "no-store");
    /// assert_eq!(r.headers, vec![("Cache-Control".to_string(), "no-store".to_string())]);
    /// ```
    pub fn header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The table's own behaviour for this verb: what every verb a resource does not override
    /// returns. The host remembers it and serves the verb natively from then on.
    #[doc(hidden)]
    pub fn fallback() -> Response {
        let mut r = Response::status(0);
        r.fallback = true;
        r
    }
}

/// A table, read and written inside the request's transaction.
///
/// ```no_run
/// # use tessera_wasm_sdk::{Context, Result};
/// # fn f(cx: &Context) -> Result<()> {
/// let stock = cx.table("Stock");
/// stock.update("widget").add_to("count", -1.0).apply()?;
/// let left: Option<serde_json_free::Stock> = stock.get("widget")?;
/// # Ok(()) }
/// # mod serde_json_free { #[derive(serde::Deserialize)] pub struct Stock { pub count: f64 } }
/// ```
#[derive(Debug, Clone)]
pub struct Table {
    name: String,
}

impl Table {
    /// The table's name.
    ///
    /// ```
    /// # fn f(cx: &tessera_wasm_sdk::Context) {
    /// assert_eq!(cx.table("Dog").name(), "Dog");
    /// # }
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The record with this id, if it exists.
    ///
    /// ```no_run
    /// # fn f(cx: &tessera_wasm_sdk::Context) -> tessera_wasm_sdk::Result<()> {
    /// #[derive(serde::Deserialize)]
    /// struct Dog { name: String }
    /// if let Some(dog) = cx.table("Dog").get::<Dog>(1)? {
    ///     println!("{}", dog.name);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn get<T: DeserializeOwned>(&self, id: impl Into<Id>) -> Result<Option<T>> {
        match tables::get(&self.name, &id.into().bytes())? {
            Some(bytes) => Ok(Some(rmp_serde::from_slice(bytes.as_slice())?)),
            None => Ok(None),
        }
    }

    /// The record with this id as the table stores it (MessagePack), not decoded: for a
    /// resource that hands records on unchanged ([`Response::with_raw`]), or decodes them only
    /// sometimes ([`Data::parse`]).
    ///
    /// ```no_run
    /// # fn f(cx: &tessera_wasm_sdk::Context) -> tessera_wasm_sdk::Result<tessera_wasm_sdk::Response> {
    /// use tessera_wasm_sdk::{Error, Response};
    /// match cx.table("Dog").get_data(1)? {
    ///     Some(dog) => Ok(Response::with_raw(200, dog)),
    ///     None => Err(Error::not_found("no such dog")),
    /// }
    /// # }
    /// ```
    pub fn get_data(&self, id: impl Into<Id>) -> Result<Option<Data>> {
        Ok(tables::get(&self.name, &id.into().bytes())?.map(Data))
    }

    /// Creates or replaces the record (validated against the table's schema).
    ///
    /// ```no_run
    /// # fn f(cx: &tessera_wasm_sdk::Context) -> tessera_wasm_sdk::Result<()> {
    /// #[derive(serde::Serialize)]
    /// struct Dog { id: i64, name: String }
    /// cx.table("Dog").put(1, &Dog { id: 1, name: "Harper".into() })?;
    /// # Ok(()) }
    /// ```
    pub fn put<T: Serialize + ?Sized>(&self, id: impl Into<Id>, record: &T) -> Result<()> {
        Ok(tables::put(
            &self.name,
            &id.into().bytes(),
            &encode(record)?,
        )?)
    }

    /// Merges these top-level properties into the record, creating it if missing.
    ///
    /// ```no_run
    /// # fn f(cx: &tessera_wasm_sdk::Context) -> tessera_wasm_sdk::Result<()> {
    /// cx.table("Dog").patch(1, &std::collections::BTreeMap::from([("age", 4)]))?;
    /// # Ok(()) }
    /// ```
    pub fn patch<T: Serialize + ?Sized>(&self, id: impl Into<Id>, changes: &T) -> Result<()> {
        Ok(tables::patch(
            &self.name,
            &id.into().bytes(),
            &encode(changes)?,
        )?)
    }

    /// Creates a record with a new primary key (a UUID or the next number) and returns it.
    ///
    /// ```no_run
    /// # fn f(cx: &tessera_wasm_sdk::Context) -> tessera_wasm_sdk::Result<()> {
    /// let id = cx.table("Order").create(&std::collections::BTreeMap::from([("qty", 2)]))?;
    /// cx.publish(&format!("Order/{id}"), &"created")?;
    /// # Ok(()) }
    /// ```
    pub fn create<T: Serialize + ?Sized>(&self, record: &T) -> Result<Id> {
        let id = tables::create(&self.name, &encode(record)?)?;
        Ok(rmp_serde::from_slice(&id)?)
    }

    /// Deletes the record; whether it existed.
    ///
    /// ```no_run
    /// # fn f(cx: &tessera_wasm_sdk::Context) -> tessera_wasm_sdk::Result<()> {
    /// if !cx.table("Dog").delete(1)? {
    ///     return Err(tessera_wasm_sdk::Error::not_found("no dog 1"));
    /// }
    /// # Ok(()) }
    /// ```
    pub fn delete(&self, id: impl Into<Id>) -> Result<bool> {
        Ok(tables::delete(&self.name, &id.into().bytes())?)
    }

    /// Drops a caching table's copy of the record, so that the next read loads it from the
    /// table's source (the seed's `invalidate`). It takes effect when the request commits, as a
    /// delete that subscribers see; the source itself is not asked to delete anything. A 400
    /// for a table with no source.
    ///
    /// ```no_run
    /// # fn f(cx: &tessera_wasm_sdk::Context) -> tessera_wasm_sdk::Result<()> {
    /// cx.table("Breed").invalidate("lab")?;
    /// # Ok(()) }
    /// ```
    pub fn invalidate(&self, id: impl Into<Id>) -> Result<()> {
        Ok(tables::invalidate(&self.name, &id.into().bytes())?)
    }

    /// Whether this request's [`Table::get`] of the record loaded it from the caching table's
    /// source rather than finding it in the table (the seed's `wasLoadedFromSource`).
    ///
    /// ```no_run
    /// # fn f(cx: &tessera_wasm_sdk::Context) -> tessera_wasm_sdk::Result<()> {
    /// let breeds = cx.table("Breed");
    /// let breed: Option<tessera_wasm_sdk::Value> = breeds.get("lab")?;
    /// let miss = breeds.was_loaded_from_source("lab")?;
    /// # Ok(()) }
    /// ```
    pub fn was_loaded_from_source(&self, id: impl Into<Id>) -> Result<bool> {
        Ok(tables::was_loaded_from_source(
            &self.name,
            &id.into().bytes(),
        )?)
    }

    /// The records matching `query`.
    ///
    /// ```no_run
    /// # fn f(cx: &tessera_wasm_sdk::Context) -> tessera_wasm_sdk::Result<()> {
    /// use tessera_wasm_sdk::{Comparator, Query, Value};
    /// let young: Vec<Value> = cx.table("Dog").search(
    ///     &Query::new().condition("age", Comparator::LessThan, &3)?.sort("age", false).limit(10),
    /// )?;
    /// # Ok(()) }
    /// ```
    pub fn search<T: DeserializeOwned>(&self, query: &Query) -> Result<Vec<T>> {
        let rows = tables::search(&self.name, &encode(query)?)?;
        Ok(rmp_serde::from_slice(&rows)?)
    }

    /// Starts an update of one record: `addTo`, `subtractFrom` and `set`, applied together.
    ///
    /// ```no_run
    /// # fn f(cx: &tessera_wasm_sdk::Context) -> tessera_wasm_sdk::Result<()> {
    /// cx.table("Dog").update(1).add_to("visits", 1.0).apply()?;
    /// # Ok(()) }
    /// ```
    pub fn update(&self, id: impl Into<Id>) -> Update {
        Update {
            table: self.name.clone(),
            id: id.into(),
            deltas: Vec::new(),
            sets: Vec::new(),
        }
    }
}

/// An update of one record (the seed's `Updatable`): increments that never lose a concurrent
/// one, and plain assignments.
///
/// ```no_run
/// # fn f(cx: &tessera_wasm_sdk::Context) -> tessera_wasm_sdk::Result<()> {
/// cx.table("Product")
///     .update(7)
///     .subtract_from("stock", 2.0)
///     .set("status", &"reserved")?
///     .apply()
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use = "an update does nothing until `apply`"]
pub struct Update {
    table: String,
    id: Id,
    deltas: Vec<(String, f64)>,
    sets: Vec<(String, rmpv::Value)>,
}

impl Update {
    /// Adds `n` to the numeric property (a missing one counts as 0).
    ///
    /// ```no_run
    /// # fn f(cx: &tessera_wasm_sdk::Context) -> tessera_wasm_sdk::Result<()> {
    /// cx.table("Account").update("a").add_to("balance", 2.5).apply()?;
    /// # Ok(()) }
    /// ```
    pub fn add_to(mut self, property: &str, n: f64) -> Update {
        self.deltas.push((property.to_owned(), n));
        self
    }

    /// Subtracts `n` from the numeric property.
    ///
    /// ```no_run
    /// # fn f(cx: &tessera_wasm_sdk::Context) -> tessera_wasm_sdk::Result<()> {
    /// cx.table("Product").update(7).subtract_from("stock", 1.0).apply()?;
    /// # Ok(()) }
    /// ```
    pub fn subtract_from(self, property: &str, n: f64) -> Update {
        self.add_to(property, -n)
    }

    /// Sets the property to `value`.
    ///
    /// ```no_run
    /// # fn f(cx: &tessera_wasm_sdk::Context) -> tessera_wasm_sdk::Result<()> {
    /// cx.table("Order").update(3).set("status", &"shipped")?.apply()?;
    /// # Ok(()) }
    /// ```
    pub fn set<T: Serialize + ?Sized>(mut self, property: &str, value: &T) -> Result<Update> {
        self.sets.push((property.to_owned(), dynamic(value)?));
        Ok(self)
    }

    /// Applies the update inside the request's transaction.
    ///
    /// ```no_run
    /// # fn f(cx: &tessera_wasm_sdk::Context) -> tessera_wasm_sdk::Result<()> {
    /// cx.table("Product").update(7).subtract_from("stock", 2.0).set("reserved", &true)?.apply()?;
    /// # Ok(()) }
    /// ```
    pub fn apply(self) -> Result<()> {
        let id = self.id.bytes();
        if !self.deltas.is_empty() {
            // Whole numbers travel as integers, so an `Int` property stays one.
            let deltas: Vec<(&str, rmpv::Value)> = self
                .deltas
                .iter()
                .map(|(k, n)| {
                    let v = if n.fract() == 0.0 && n.abs() < 9.0e15 {
                        rmpv::Value::from(*n as i64)
                    } else {
                        rmpv::Value::from(*n)
                    };
                    (k.as_str(), v)
                })
                .collect();
            tables::add_to(&self.table, &id, &encode(&Map(&deltas))?)?;
        }
        if !self.sets.is_empty() {
            let sets: Vec<(&str, &rmpv::Value)> =
                self.sets.iter().map(|(k, v)| (k.as_str(), v)).collect();
            tables::patch(&self.table, &id, &encode(&Map(&sets))?)?;
        }
        Ok(())
    }
}

/// Pairs serialised as a map.
struct Map<'a, V>(&'a [(&'a str, V)]);

impl<V: Serialize> Serialize for Map<'_, V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

/// A Query object (the seed's Resource API): conditions, operator, limit, offset, select and
/// sort.
///
/// ```
/// use tessera_wasm_sdk::{Comparator, Query};
/// let q = Query::new()
///     .condition("price", Comparator::LessThan, &100)
///     .unwrap()
///     .sort("price", false)
///     .limit(10);
/// assert_eq!(q.limit, Some(10));
/// ```
#[derive(Debug, Clone, Default, Serialize)]
pub struct Query {
    /// The conditions (all must hold unless `operator` is `or`).
    pub conditions: Vec<Condition>,
    /// `and` (the default) or `or`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    /// At most this many records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// Skip this many records first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Only these properties of each record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub select: Option<Vec<String>>,
    /// The order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sort: Option<Sort>,
}

/// One condition, or a nested group of them.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
///
/// ```
/// use tessera_wasm_sdk::{Comparator, Condition};
/// let either = Condition::Group {
///     operator: "or".into(),
///     conditions: vec![
///         Condition::Compare { attribute: "breed".into(), comparator: Comparator::Equals, value: "Poodle".into() },
///         Condition::Compare { attribute: "age".into(), comparator: Comparator::LessThan, value: 2.into() },
///     ],
/// };
/// let q = tessera_wasm_sdk::Query { conditions: vec![either], ..Default::default() };
/// assert_eq!(q.conditions.len(), 1);
/// ```
pub enum Condition {
    /// `attribute comparator value`.
    Compare {
        /// The property.
        attribute: String,
        /// How it is compared.
        comparator: Comparator,
        /// With what.
        value: rmpv::Value,
    },
    /// A nested group.
    Group {
        /// `and` or `or`.
        operator: String,
        /// Its conditions.
        conditions: Vec<Condition>,
    },
}

/// The comparators of the seed's Query object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
///
/// ```
/// use tessera_wasm_sdk::{Comparator, Query};
/// let q = Query::new().condition("age", Comparator::Between, &[2, 5]).unwrap();
/// assert_eq!(q.conditions.len(), 1);
/// ```
pub enum Comparator {
    /// `==`
    Equals,
    /// `!=` (never matches a missing value)
    NotEqual,
    /// `>`
    GreaterThan,
    /// `>=`
    GreaterThanEqual,
    /// `<`
    LessThan,
    /// `<=`
    LessThanEqual,
    /// A string prefix.
    StartsWith,
    /// A substring (or an array element).
    Contains,
    /// A string suffix.
    EndsWith,
    /// Within `[low, high]` (the value is a two-element array).
    Between,
}

/// A sort order.
#[derive(Debug, Clone, Serialize)]
///
/// ```
/// let q = tessera_wasm_sdk::Query::new().sort("age", true);
/// assert!(q.sort.unwrap().descending);
/// ```
pub struct Sort {
    /// The property.
    pub attribute: String,
    /// Highest first.
    pub descending: bool,
}

impl Query {
    /// A query that matches every record.
    ///
    /// ```
    /// assert!(tessera_wasm_sdk::Query::new().conditions.is_empty());
    /// ```
    pub fn new() -> Query {
        Query::default()
    }

    /// Adds a condition.
    ///
    /// ```
    /// use tessera_wasm_sdk::{Comparator, Query};
    /// let q = Query::new().condition("name", Comparator::StartsWith, &"Ha").unwrap();
    /// assert_eq!(q.conditions.len(), 1);
    /// ```
    pub fn condition<T: Serialize + ?Sized>(
        mut self,
        attribute: &str,
        comparator: Comparator,
        value: &T,
    ) -> Result<Query> {
        let value = dynamic(value)?;
        self.conditions.push(Condition::Compare {
            attribute: attribute.to_owned(),
            comparator,
            value,
        });
        Ok(self)
    }

    /// Joins the conditions with `or` instead of `and`.
    ///
    /// ```
    /// use tessera_wasm_sdk::{Comparator, Query};
    /// let q = Query::new()
    ///     .condition("breed", Comparator::Equals, &"Poodle").unwrap()
    ///     .condition("breed", Comparator::Equals, &"Husky").unwrap()
    ///     .any();
    /// assert_eq!(q.operator.as_deref(), Some("or"));
    /// ```
    pub fn any(mut self) -> Query {
        self.operator = Some("or".to_owned());
        self
    }

    /// At most `n` records.
    ///
    /// ```
    /// assert_eq!(tessera_wasm_sdk::Query::new().limit(5).limit, Some(5));
    /// ```
    pub fn limit(mut self, n: u64) -> Query {
        self.limit = Some(n);
        self
    }

    /// Skips `n` records.
    ///
    /// ```
    /// assert_eq!(tessera_wasm_sdk::Query::new().offset(20).offset, Some(20));
    /// ```
    pub fn offset(mut self, n: u64) -> Query {
        self.offset = Some(n);
        self
    }

    /// Only these properties.
    ///
    /// ```
    /// let q = tessera_wasm_sdk::Query::new().select(&["id", "name"]);
    /// assert_eq!(q.select.unwrap(), ["id", "name"]);
    /// ```
    pub fn select(mut self, names: &[&str]) -> Query {
        self.select = Some(names.iter().map(|s| (*s).to_owned()).collect());
        self
    }

    /// Sorts by a property.
    ///
    /// ```
    /// let q = tessera_wasm_sdk::Query::new().sort("price", false);
    /// assert_eq!(q.sort.unwrap().attribute, "price");
    /// ```
    pub fn sort(mut self, attribute: &str, descending: bool) -> Query {
        self.sort = Some(Sort {
            attribute: attribute.to_owned(),
            descending,
        });
        self
    }
}

/// The request's context: tables, the user, the headers, publishing.
///
/// ```no_run
/// # fn f(cx: &tessera_wasm_sdk::Context) -> tessera_wasm_sdk::Result<()> {
/// let who = cx.user().unwrap_or_default();
/// let agent = cx.header("user-agent");
/// cx.publish("Order/7", &("shipped", who, agent))?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Context {
    _private: PhantomData<()>,
}

impl Context {
    /// A table by its name.
    ///
    /// ```no_run
    /// # fn f(cx: &tessera_wasm_sdk::Context) -> tessera_wasm_sdk::Result<()> {
    /// let orders = cx.table("Order");
    /// # Ok(()) }
    /// ```
    pub fn table(&self, name: &str) -> Table {
        Table {
            name: name.to_owned(),
        }
    }

    /// The table resource `R` extends (its `super`), or the table named like the resource.
    ///
    /// ```no_run
    /// use tessera_wasm_sdk::{Context, Resource, Response, Result, Target};
    /// #[derive(Default)]
    /// struct Dogs;
    /// impl Resource for Dogs {
    ///     const NAME: &'static str = "Dog";
    ///     const EXTENDS: Option<&'static str> = Some("Dog");
    ///     fn get(&mut self, cx: &Context, target: &Target) -> Result<Response> {
    ///         // `super.get()`: the record from the extended table.
    ///         let dog: Option<tessera_wasm_sdk::Value> = cx.this::<Self>().get(target.id()?)?;
    ///         Response::ok(&dog)
    ///     }
    /// }
    /// ```
    pub fn this<R: Resource>(&self) -> Table {
        self.table(R::EXTENDS.unwrap_or(R::NAME))
    }

    /// The authenticated user's name.
    ///
    /// ```no_run
    /// # fn f(cx: &tessera_wasm_sdk::Context) -> tessera_wasm_sdk::Result<()> {
    /// if cx.user().as_deref() != Some("admin") {
    ///     return Err(tessera_wasm_sdk::Error::forbidden("admins only"));
    /// }
    /// # Ok(()) }
    /// ```
    pub fn user(&self) -> Option<String> {
        context::user()
    }

    /// A request header by name (any case).
    ///
    /// ```no_run
    /// # fn f(cx: &tessera_wasm_sdk::Context) -> tessera_wasm_sdk::Result<()> {
    /// let lang = cx.header("Accept-Language").unwrap_or_else(|| "en".into());
    /// # Ok(()) }
    /// ```
    pub fn header(&self, name: &str) -> Option<String> {
        context::headers()
            .into_iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Publishes a message to a topic (`Table/id`) when the request's transaction commits.
    ///
    /// ```no_run
    /// # fn f(cx: &tessera_wasm_sdk::Context) -> tessera_wasm_sdk::Result<()> {
    /// cx.publish("Order/7", &std::collections::BTreeMap::from([("status", "shipped")]))?;
    /// # Ok(()) }
    /// ```
    pub fn publish<T: Serialize + ?Sized>(&self, topic: &str, message: &T) -> Result<()> {
        Ok(context::publish(topic, &encode(message)?)?)
    }
}

/// A custom resource (the seed's Resource API). Override only the verbs you change; the others
/// do the extended table's own behaviour (or answer 405 for a standalone resource).
///
/// A fresh value (`Default`) serves each request, on an instance in its just-instantiated state
/// unless [`Resource::REUSE`] is set: a fresh one, or one the host used before and rewound, every
/// byte of its memory and every global back to what a fresh instance has (the WIT's `rewind`).
///
/// ```
/// use tessera_wasm_sdk::{Context, Data, Error, Resource, Response, Result, Target};
/// #[derive(Default)]
/// struct Dogs;
/// impl Resource for Dogs {
///     const NAME: &'static str = "Dog";
///     const EXTENDS: Option<&'static str> = Some("Dog");
///     // Validation on put; get, search, patch, post and delete stay the table's.
///     fn put(&mut self, cx: &Context, target: &Target, data: Data) -> Result<Response> {
///         let dog: tessera_wasm_sdk::Value = data.parse()?;
///         if dog["name"].as_str().is_none_or(str::is_empty) {
///             return Err(Error::new(422, "a dog needs a name"));
///         }
///         cx.this::<Self>().put(target.id()?, &dog)?;
///         Ok(Response::status(204))
///     }
/// }
/// ```
pub trait Resource: Default + 'static {
    /// The URL segment the resource is served at: `/NAME/`.
    const NAME: &'static str;
    /// The table it extends (replacing that table's `@export` when `NAME` is its export name).
    const EXTENDS: Option<&'static str> = None;
    /// Whether one instance may serve many requests as it is, keeping what earlier requests left
    /// in its memory (a trap still discards the instance). Rarely faster than the default.
    const REUSE: bool = false;
    /// Attributes of the table it extends that [`Resource::compute`] computes: those its schema
    /// declares `@computed` with no `from:` (what Harper's `setComputedAttribute` does in
    /// JavaScript). Every reader sees them: REST, the Operations API, SQL, subscriptions,
    /// conditions, sorting and an `@indexed` index.
    const COMPUTES: &'static [&'static str] = &[];
    /// The caching table this resource is the source of (the seed's `sourcedFrom`): a read of
    /// a missing or expired record of that table calls this resource's [`Resource::get`] with
    /// the record's id, as the user whose read missed; `Ok` with data (status 200) becomes the
    /// stored record, kept for the table's `expiration`; a 404 says there is none (remembered
    /// for the expiration too); another error fails the read with a 502 (504 for a 504). One
    /// call per missing key, however many requests want it. The table's REST writes call
    /// [`Resource::put`], [`Resource::patch`] and [`Resource::delete`] first, and are made in
    /// the table only when they succeed. A response says which happened in `Cache-Status`.
    ///
    /// ```
    /// use tessera_wasm_sdk::{Context, Resource, Response, Result, Target};
    /// #[derive(Default)]
    /// struct Breeds;
    /// impl Resource for Breeds {
    ///     const NAME: &'static str = "BreedSource";
    ///     const SOURCE_FOR: Option<&'static str> = Some("Breed");
    ///     fn get(&mut self, _cx: &Context, target: &Target) -> Result<Response> {
    ///         let url = format!("https://api.example/breeds/{}", target.id()?);
    ///         let r = tessera_wasm_sdk::http::Request::get(&url).send()?;
    ///         match r.status {
    ///             200 => Response::with_data(200, &r.json::<tessera_wasm_sdk::Value>()?),
    ///             404 => Err(tessera_wasm_sdk::Error::not_found("no such breed")),
    ///             s => Err(tessera_wasm_sdk::Error::new(502, format!("origin answered {s}"))),
    ///         }
    ///     }
    /// }
    /// ```
    const SOURCE_FOR: Option<&'static str> = None;
    /// With [`Resource::SOURCE_FOR`]: serve an expired record at once, marked stale, while one
    /// call of `get` refreshes it (the seed's `allowStaleWhileRevalidate`).
    const ALLOW_STALE_WHILE_REVALIDATE: bool = false;

    /// Computes `attribute`, one of [`Resource::COMPUTES`], of `record` (a map of the record's
    /// stored attributes). The host calls it wherever the attribute is read or indexed, so it
    /// must be a function of the record alone: table calls and publishing fail inside it.
    ///
    /// ```
    /// use tessera_wasm_sdk::{Resource, Result, Value};
    /// #[derive(Default)]
    /// struct Products;
    /// impl Resource for Products {
    ///     const NAME: &'static str = "Product";
    ///     const EXTENDS: Option<&'static str> = Some("Product");
    ///     const COMPUTES: &'static [&'static str] = &["totalPrice"];
    ///     fn compute(&self, _attribute: &str, record: &Value) -> Result<Value> {
    ///         let price = record["price"].as_f64().unwrap_or(0.0);
    ///         let rate = record["taxRate"].as_f64().unwrap_or(0.0);
    ///         Ok(Value::from(price + price * rate))
    ///     }
    /// }
    /// ```
    fn compute(&self, attribute: &str, record: &Value) -> Result<Value> {
        let _ = record;
        Err(Error::new(
            500,
            format!("{} does not compute {attribute}", Self::NAME),
        ))
    }

    /// `GET /NAME/id`.
    ///
    /// ```no_run
    /// use tessera_wasm_sdk::{Context, Data, Resource, Response, Result, Target};
    /// #[derive(Default)]
    /// struct R;
    /// impl Resource for R {
    ///     const NAME: &'static str = "R";
    ///     fn get(&mut self, cx: &Context, target: &Target) -> Result<Response> {
    ///         Response::ok(&format!("you asked for {}", target.id()?))
    ///     }
    /// }
    /// ```
    fn get(&mut self, cx: &Context, target: &Target) -> Result<Response> {
        let _ = (cx, target);
        Ok(Response::fallback())
    }
    /// `GET /NAME/?query`.
    ///
    /// ```no_run
    /// use tessera_wasm_sdk::{Context, Data, Resource, Response, Result, Target};
    /// #[derive(Default)]
    /// struct R;
    /// impl Resource for R {
    ///     const NAME: &'static str = "R";
    ///     fn search(&mut self, cx: &Context, target: &Target) -> Result<Response> {
    ///         let limit: u64 = target.get("limit").and_then(|l| l.parse().ok()).unwrap_or(10);
    ///         let rows: Vec<tessera_wasm_sdk::Value> =
    ///             cx.table("Dog").search(&tessera_wasm_sdk::Query::new().limit(limit))?;
    ///         Response::ok(&rows)
    ///     }
    /// }
    /// ```
    fn search(&mut self, cx: &Context, target: &Target) -> Result<Response> {
        let _ = (cx, target);
        Ok(Response::fallback())
    }
    /// `PUT /NAME/id`.
    ///
    /// ```no_run
    /// use tessera_wasm_sdk::{Context, Data, Resource, Response, Result, Target};
    /// #[derive(Default)]
    /// struct R;
    /// impl Resource for R {
    ///     const NAME: &'static str = "R";
    ///     fn put(&mut self, cx: &Context, target: &Target, data: Data) -> Result<Response> {
    ///         let record: tessera_wasm_sdk::Value = data.parse()?;
    ///         cx.table("Dog").put(target.id()?, &record)?;
    ///         Ok(Response::status(204))
    ///     }
    /// }
    /// ```
    fn put(&mut self, cx: &Context, target: &Target, data: Data) -> Result<Response> {
        let _ = (cx, target, data);
        Ok(Response::fallback())
    }
    /// `PATCH /NAME/id`.
    ///
    /// ```no_run
    /// use tessera_wasm_sdk::{Context, Data, Resource, Response, Result, Target};
    /// #[derive(Default)]
    /// struct R;
    /// impl Resource for R {
    ///     const NAME: &'static str = "R";
    ///     fn patch(&mut self, cx: &Context, target: &Target, data: Data) -> Result<Response> {
    ///         let changes: tessera_wasm_sdk::Value = data.parse()?;
    ///         cx.table("Dog").patch(target.id()?, &changes)?;
    ///         Ok(Response::status(204))
    ///     }
    /// }
    /// ```
    fn patch(&mut self, cx: &Context, target: &Target, data: Data) -> Result<Response> {
        let _ = (cx, target, data);
        Ok(Response::fallback())
    }
    /// `POST /NAME/`.
    ///
    /// ```no_run
    /// use tessera_wasm_sdk::{Context, Data, Resource, Response, Result, Target};
    /// #[derive(Default)]
    /// struct R;
    /// impl Resource for R {
    ///     const NAME: &'static str = "R";
    ///     fn post(&mut self, cx: &Context, _target: &Target, data: Data) -> Result<Response> {
    ///         let order: tessera_wasm_sdk::Value = data.parse()?;
    ///         let id = cx.table("Order").create(&order)?;
    ///         Response::with_data(201, &id.to_string())
    ///     }
    /// }
    /// ```
    fn post(&mut self, cx: &Context, target: &Target, data: Data) -> Result<Response> {
        let _ = (cx, target, data);
        Ok(Response::fallback())
    }
    /// `DELETE /NAME/id`.
    ///
    /// ```no_run
    /// use tessera_wasm_sdk::{Context, Data, Resource, Response, Result, Target};
    /// #[derive(Default)]
    /// struct R;
    /// impl Resource for R {
    ///     const NAME: &'static str = "R";
    ///     fn delete(&mut self, cx: &Context, target: &Target) -> Result<Response> {
    ///         cx.table("Dog").delete(target.id()?)?;
    ///         Ok(Response::status(204))
    ///     }
    /// }
    /// ```
    fn delete(&mut self, cx: &Context, target: &Target) -> Result<Response> {
        let _ = (cx, target);
        Ok(Response::fallback())
    }
    /// A message published to `NAME/id` (over MQTT, with RETAIN=0; a retained publish is a
    /// `put`, an empty retained one a `delete`). A payload that is not JSON arrives as bytes
    /// ([`Value::Binary`]).
    ///
    /// ```no_run
    /// use tessera_wasm_sdk::{Context, Data, Resource, Response, Result, Target};
    /// #[derive(Default)]
    /// struct R;
    /// impl Resource for R {
    ///     const NAME: &'static str = "R";
    ///     fn publish(&mut self, cx: &Context, target: &Target, data: Data) -> Result<Response> {
    ///         // Forward the message to the dog's own topic, stamped with the sender.
    ///         let message: tessera_wasm_sdk::Value = data.parse()?;
    ///         cx.publish(&format!("Dog/{}", target.id()?), &(cx.user(), message))?;
    ///         Ok(Response::status(204))
    ///     }
    /// }
    /// ```
    fn publish(&mut self, cx: &Context, target: &Target, data: Data) -> Result<Response> {
        let _ = (cx, target, data);
        Ok(Response::fallback())
    }
}

/// What [`export!`] expands to; not for direct use.
#[doc(hidden)]
pub mod __private {
    use super::*;
    pub use bindings::exports::tessera::wasm::handler::Guest;
    pub use bindings::exports::tessera::wasm::rewind::Guest as Rewind;
    use types::{Method, Outcome, Request, ResourceInfo};

    pub fn info<R: Resource>() -> ResourceInfo {
        ResourceInfo {
            name: R::NAME.to_owned(),
            extends: R::EXTENDS.map(str::to_owned),
            reuse: R::REUSE,
            computes: R::COMPUTES.iter().map(|a| (*a).to_owned()).collect(),
            source_for: R::SOURCE_FOR.map(|table| types::SourceInfo {
                table: table.to_owned(),
                allow_stale_while_revalidate: R::ALLOW_STALE_WHILE_REVALIDATE,
            }),
        }
    }

    fn wit_error(e: Error) -> types::Error {
        types::Error {
            status: e.status,
            message: e.message,
        }
    }

    pub fn compute<R: Resource>(attribute: &str, record: &[u8]) -> Result<Vec<u8>, types::Error> {
        let record: Value = rmp_serde::from_slice(record)
            .map_err(Error::from)
            .map_err(wit_error)?;
        R::default()
            .compute(attribute, &record)
            .and_then(|v| encode(&v))
            .map_err(wit_error)
    }

    pub fn dispatch<R: Resource>(req: Request) -> Result<Outcome, types::Error> {
        let cx = Context {
            _private: PhantomData,
        };
        let t = req.target;
        let target = Target {
            id: t.id,
            pathname: t.pathname,
            search: t.search,
            is_collection: t.is_collection,
        };
        let data = Data(req.data.unwrap_or_default());
        let mut r = R::default();
        let res = match req.method {
            Method::Get => r.get(&cx, &target),
            Method::Search => r.search(&cx, &target),
            Method::Put => r.put(&cx, &target, data),
            Method::Patch => r.patch(&cx, &target, data),
            Method::Post => r.post(&cx, &target, data),
            Method::Delete => r.delete(&cx, &target),
            Method::Publish => r.publish(&cx, &target, data),
        };
        match res {
            Ok(r) if r.fallback => Ok(Outcome::Fallback),
            Ok(r) => Ok(Outcome::Respond(types::Response {
                status: r.status,
                headers: r.headers,
                data: r.data,
                body: r.body,
            })),
            Err(e) => Err(wit_error(e)),
        }
    }

    pub fn unknown<T>(index: u32) -> Result<T, types::Error> {
        Err(types::Error {
            status: 500,
            message: format!("no resource {index} in this module"),
        })
    }

    pub type Info = ResourceInfo;
    pub type Req = Request;
    pub type Out = Result<Outcome, types::Error>;
    pub type Computed = Result<Vec<u8>, types::Error>;
}

/// Exports the crate's resources (every type that implements [`Resource`]) to the host.
///
/// ```
/// use tessera_wasm_sdk::{Context, Data, Resource, Response, Result, Target};
/// #[derive(Default)]
/// struct Products;
/// impl Resource for Products {
///     const NAME: &'static str = "Product";
///     const EXTENDS: Option<&'static str> = Some("Product");
/// }
/// #[derive(Default)]
/// struct Checkout;
/// impl Resource for Checkout {
///     const NAME: &'static str = "Checkout";
///     fn post(&mut self, _cx: &Context, _target: &Target, _data: Data) -> Result<Response> {
///         Ok(Response::status(201))
///     }
/// }
/// tessera_wasm_sdk::export!(Products, Checkout);
/// ```
#[macro_export]
macro_rules! export {
    ($($resource:ty),+ $(,)?) => {
        #[doc(hidden)]
        pub struct __TesseraModule;

        impl $crate::__private::Guest for __TesseraModule {
            fn resources() -> ::std::vec::Vec<$crate::__private::Info> {
                ::std::vec![$($crate::__private::info::<$resource>()),+]
            }

            fn handle(req: $crate::__private::Req) -> $crate::__private::Out {
                let mut index = 0u32;
                $(
                    if req.resource == index {
                        return $crate::__private::dispatch::<$resource>(req);
                    }
                    index += 1;
                )+
                $crate::__private::unknown(index)
            }

            fn compute(
                resource: u32,
                attribute: ::std::string::String,
                record: ::std::vec::Vec<u8>,
            ) -> $crate::__private::Computed {
                let mut index = 0u32;
                $(
                    if resource == index {
                        return $crate::__private::compute::<$resource>(&attribute, &record);
                    }
                    index += 1;
                )+
                $crate::__private::unknown(index)
            }
        }

        impl $crate::__private::Rewind for __TesseraModule {
            // The host replaces this body with the instance's own rewind (see the WIT). Run
            // as it is, it claims a memory too large to keep, so the instance is dropped.
            fn rewind() -> u32 {
                u32::MAX
            }
        }

        $crate::bindings::export_bindings!(__TesseraModule with_types_in $crate::bindings);
    };
}

//! Tessera's data: the schema catalog, the value model and its codecs, the order-preserving key
//! encoding, the stored record format, the persisted layout, and one shard's fjall store.
//!
//! This crate owns bytes at rest and their meaning. It must not know about executors, sockets or
//! HTTP: everything here is synchronous and is called either from a shard's writer thread
//! (writes, which may sleep in fjall) or, for reads, from the executor that owns the shard.

pub mod audit;
pub mod cbor;
pub mod computed;
pub mod history;
pub mod key;
pub mod layout;
pub mod query;
pub mod read_cache;
pub mod record;
pub mod schema;
pub mod shard;
pub mod validate;
pub mod value;

pub use fjall::Slice;
pub use schema::{Catalog, Scalar, Table};
pub use value::Value;

//! Reading data: query planning over indexes and shard walks, relationships, the Query objects
//! of the Operations API and the wasm host, and the sweeps that expire records.

pub mod cache;
pub mod conditions;
pub mod expiry;
pub mod query;
pub mod related;

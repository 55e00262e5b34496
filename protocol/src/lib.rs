//! Tessera's wire, sans-I/O: HTTP/1.1 framing, REST request targets, the query grammar and content
//! negotiation.
//!
//! This crate knows bytes and syntax, not schemas or sockets: it never performs I/O, never names an
//! executor, and turns every malformed input into an error value, never a panic.

pub mod http;
pub mod media;
pub mod mqtt;
pub mod query;
pub mod rest;

pub use media::MediaType;

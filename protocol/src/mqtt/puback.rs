//! PUBACK (section 3.4): acknowledges a QoS 1 PUBLISH. The body is the shared acknowledgement ([`super::ack`]).

pub use super::ack::{Ack, read, write};

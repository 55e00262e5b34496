//! PUBREL (section 3.6): releases a QoS 2 message; fixed-header flags 0b0010. The body is the shared acknowledgement ([`super::ack`]).

pub use super::ack::{Ack, read, write};

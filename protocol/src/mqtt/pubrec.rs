//! PUBREC (section 3.5): first answer to a QoS 2 PUBLISH. The body is the shared acknowledgement ([`super::ack`]).

pub use super::ack::{Ack, read, write};

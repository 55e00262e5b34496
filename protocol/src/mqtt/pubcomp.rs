//! PUBCOMP (section 3.7): completes a QoS 2 exchange. The body is the shared acknowledgement ([`super::ack`]).

pub use super::ack::{Ack, read, write};

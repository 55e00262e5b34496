//! PINGREQ (section 3.12): keep-alive probe; no variable header or payload.

use super::Error;

pub fn read(body: &[u8]) -> Result<(), Error> {
    if body.is_empty() {
        Ok(())
    } else {
        Err(Error::Malformed("PINGREQ with a body"))
    }
}

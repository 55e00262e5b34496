//! PINGRESP (section 3.13): the answer to PINGREQ; no variable header or payload.

use super::Error;

pub fn read(body: &[u8]) -> Result<(), Error> {
    if body.is_empty() {
        Ok(())
    } else {
        Err(Error::Malformed("PINGRESP with a body"))
    }
}

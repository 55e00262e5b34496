//! HTTP/1.1 framing never panics on any byte stream: pipelined requests are cut where their
//! heads say, a head the first parse accepts the second parse accepts too, and the chunked
//! decoder gives the same body however its input is split, never past the body limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_protocol::http::{BodyFraming, ChunkedDecoder, parse_head_info, parse_request};

const MAX_BODY: usize = 1 << 16;

/// Decodes a chunked body fed `step` bytes at a time: (body, bytes consumed) once complete.
fn chunked(input: &[u8], step: usize) -> Option<(Vec<u8>, usize)> {
    let mut decoder = ChunkedDecoder::default();
    let mut body = Vec::new();
    let mut at = 0;
    let mut end = step.min(input.len());
    loop {
        let (n, done) = decoder.feed(&input[at..end], &mut body, MAX_BODY).ok()?;
        assert!(body.len() <= MAX_BODY, "decoded past the limit");
        at += n;
        if done {
            return Some((body, at));
        }
        if end == input.len() {
            return None;
        }
        end = (end + step).min(input.len());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, mut rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    while let Ok(Some(info)) = parse_head_info(rest, MAX_BODY) {
        assert!(info.len <= rest.len());
        parse_request(&rest[..info.len]).expect("a head the first parse accepted");
        let body = &rest[info.len..];
        let used = match info.body {
            BodyFraming::Length(n) if n <= body.len() => n,
            BodyFraming::Length(_) => return,
            BodyFraming::Chunked => {
                let whole = chunked(body, body.len().max(1));
                let split = chunked(body, step);
                assert_eq!(whole, split, "the split changed the body");
                match whole {
                    Some((_, n)) => n,
                    None => return,
                }
            }
        };
        rest = &body[used..];
    }
});

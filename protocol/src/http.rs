//! HTTP/1.1 framing, sans-I/O: request heads (parsed by httparse), body framing by
//! `Content-Length` or chunked transfer coding, limits, and response heads.
//!
//! The connection loop owns the socket and the buffers; this module only looks at bytes. A head is
//! parsed twice on purpose: once to learn its length and body framing while the body may still be
//! arriving, and again, borrowed, once the body is complete (httparse costs ~100 ns per head).

/// Most headers accepted in one request.
pub const MAX_HEADERS: usize = 64;
/// Largest request head accepted (request line and headers).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Why a request cannot be framed. Each maps to one status; the connection is closed after it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("request head too large")]
    HeadTooLarge,
    #[error("Request body too large, maximum size is {0} bytes")]
    BodyTooLarge(usize),
    #[error("unsupported transfer coding")]
    UnsupportedTransferCoding,
}

impl FramingError {
    /// The status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            FramingError::Malformed(_) => 400,
            FramingError::HeadTooLarge => 431,
            FramingError::BodyTooLarge(_) => 413,
            FramingError::UnsupportedTransferCoding => 501,
        }
    }
}

/// How the body of a request is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    Length(usize),
    Chunked,
}

/// What the first parse of a head tells the connection loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadInfo {
    /// Bytes of the head including the blank line.
    pub len: usize,
    pub body: BodyFraming,
    /// `Expect: 100-continue` was sent: answer `100 Continue` before waiting for the body.
    pub expect_continue: bool,
}

/// The request method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Put,
    Patch,
    Post,
    Delete,
    Options,
    /// A method HTTP defines that Tessera does not serve (TRACE, CONNECT, QUERY, ...).
    Other,
}

impl Method {
    fn parse(m: &str) -> Method {
        match m {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            "POST" => Method::Post,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            _ => Method::Other,
        }
    }
}

/// A parsed request head, borrowing the connection's buffer.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub method: Method,
    /// The request target as sent (path and query, still percent-encoded).
    pub target: &'a str,
    /// Whether the connection stays open after this request.
    pub keep_alive: bool,
    pub content_type: Option<&'a str>,
    pub accept: Option<&'a str>,
    pub authorization: Option<&'a [u8]>,
    pub if_none_match: Option<&'a [u8]>,
    pub host: Option<&'a str>,
    /// `Sec-WebSocket-Key` of a WebSocket upgrade (`Upgrade: websocket`), else `None`.
    pub websocket_key: Option<&'a str>,
    /// `Sec-WebSocket-Protocol`: the subprotocols the client offers.
    pub websocket_protocol: Option<&'a str>,
    /// The whole head as received, for [`headers`].
    pub head: &'a [u8],
}

/// Every header of a request head, names in lower case, values as text (lossy): parsed again,
/// for the rare consumer that needs them all (a wasm resource's context).
pub fn headers(head: &[u8]) -> Vec<(String, String)> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    if req.parse(head).is_err() {
        return Vec::new();
    }
    req.headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}

fn header_str(v: &[u8]) -> Option<&str> {
    std::str::from_utf8(v).ok().map(str::trim)
}

fn has_token(v: &[u8], token: &str) -> bool {
    header_str(v).is_some_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// First parse of a head: its length and body framing. `Ok(None)` means the head is incomplete.
/// `max_body` is the body limit (`http.maxRequestBodySize`).
pub fn parse_head_info(buf: &[u8], max_body: usize) -> Result<Option<HeadInfo>, FramingError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > MAX_HEAD_BYTES {
                Err(FramingError::HeadTooLarge)
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(FramingError::HeadTooLarge),
        Err(_) => return Err(FramingError::Malformed("bad request line or header")),
    };
    if len > MAX_HEAD_BYTES {
        return Err(FramingError::HeadTooLarge);
    }
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = header_str(h.value)
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<usize>().ok())
                .ok_or(FramingError::Malformed("bad Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(FramingError::Malformed(
                    "conflicting Content-Length headers",
                ));
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let v = header_str(h.value).unwrap_or("");
            if v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            } else if !v.eq_ignore_ascii_case("identity") {
                return Err(FramingError::UnsupportedTransferCoding);
            }
        } else if h.name.eq_ignore_ascii_case("expect") {
            expect_continue = has_token(h.value, "100-continue");
        }
    }
    let body = match (chunked, length) {
        // Both present is a smuggling vector (RFC 9112 6.3): refuse rather than guess.
        (true, Some(_)) => return Err(FramingError::Malformed("both Content-Length and chunked")),
        (true, None) => BodyFraming::Chunked,
        (false, Some(n)) if n > max_body => return Err(FramingError::BodyTooLarge(max_body)),
        (false, n) => BodyFraming::Length(n.unwrap_or(0)),
    };
    Ok(Some(HeadInfo {
        len,
        body,
        expect_continue: expect_continue && body != BodyFraming::Length(0),
    }))
}

/// Second parse of a complete head, borrowing `head` (exactly the head's bytes).
pub fn parse_request(head: &[u8]) -> Result<Request<'_>, FramingError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(FramingError::Malformed("bad request line or header")),
    }
    let version = req.version.unwrap_or(1);
    let mut r = Request {
        method: Method::parse(req.method.unwrap_or("")),
        target: req.path.unwrap_or("/"),
        keep_alive: version >= 1,
        content_type: None,
        accept: None,
        authorization: None,
        if_none_match: None,
        host: None,
        websocket_key: None,
        websocket_protocol: None,
        head,
    };
    let mut upgrade = false;
    for h in req.headers.iter() {
        let n = h.name;
        if n.eq_ignore_ascii_case("content-type") {
            r.content_type = header_str(h.value);
        } else if n.eq_ignore_ascii_case("accept") {
            r.accept = header_str(h.value);
        } else if n.eq_ignore_ascii_case("authorization") {
            r.authorization = Some(h.value);
        } else if n.eq_ignore_ascii_case("if-none-match") {
            r.if_none_match = Some(h.value);
        } else if n.eq_ignore_ascii_case("host") {
            r.host = header_str(h.value);
        } else if n.eq_ignore_ascii_case("upgrade") {
            upgrade = has_token(h.value, "websocket");
        } else if n.eq_ignore_ascii_case("sec-websocket-key") {
            r.websocket_key = header_str(h.value);
        } else if n.eq_ignore_ascii_case("sec-websocket-protocol") {
            r.websocket_protocol = header_str(h.value);
        } else if n.eq_ignore_ascii_case("connection") {
            if has_token(h.value, "close") {
                r.keep_alive = false;
            } else if has_token(h.value, "keep-alive") {
                r.keep_alive = true;
            }
        }
    }
    if !upgrade {
        r.websocket_key = None;
    }
    Ok(r)
}

/// Incremental decoder of the chunked transfer coding (RFC 9112 section 7.1).
#[derive(Debug, Clone, Default)]
pub struct ChunkedDecoder {
    state: ChunkState,
    decoded: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Data(usize),
    DataEnd,
    Trailers,
    Done,
}

impl ChunkedDecoder {
    /// Decodes as much of `input` as possible into `out`. Returns the bytes consumed and whether
    /// the body is complete. Fails when the decoded body would exceed `max_body`.
    pub fn feed(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        max_body: usize,
    ) -> Result<(usize, bool), FramingError> {
        let mut pos = 0;
        loop {
            let rest = input.get(pos..).unwrap_or_default();
            match self.state {
                ChunkState::Done => return Ok((pos, true)),
                ChunkState::Size => {
                    let Some(eol) = find_crlf(rest) else {
                        return if rest.len() > 1024 {
                            Err(FramingError::Malformed("chunk size line too long"))
                        } else {
                            Ok((pos, false))
                        };
                    };
                    let line = &rest[..eol];
                    let hex = line.split(|&b| b == b';').next().unwrap_or_default();
                    let hex = std::str::from_utf8(hex)
                        .map_err(|_| FramingError::Malformed("bad chunk size"))?
                        .trim();
                    if hex.is_empty() || hex.len() > 15 {
                        return Err(FramingError::Malformed("bad chunk size"));
                    }
                    let size = usize::from_str_radix(hex, 16)
                        .map_err(|_| FramingError::Malformed("bad chunk size"))?;
                    if self.decoded.saturating_add(size) > max_body {
                        return Err(FramingError::BodyTooLarge(max_body));
                    }
                    pos += eol + 2;
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if rest.is_empty() {
                        return Ok((pos, false));
                    }
                    let n = left.min(rest.len());
                    out.extend_from_slice(&rest[..n]);
                    self.decoded += n;
                    pos += n;
                    self.state = if n == left {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left - n)
                    };
                }
                ChunkState::DataEnd => {
                    if rest.len() < 2 {
                        return Ok((pos, false));
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(FramingError::Malformed("chunk data not followed by CRLF"));
                    }
                    pos += 2;
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    let Some(eol) = find_crlf(rest) else {
                        return if rest.len() > MAX_HEAD_BYTES {
                            Err(FramingError::HeadTooLarge)
                        } else {
                            Ok((pos, false))
                        };
                    };
                    pos += eol + 2;
                    if eol == 0 {
                        self.state = ChunkState::Done;
                    }
                }
            }
        }
    }
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

/// The reason phrase of a status code.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Writes a response head into `out`: status line, the given headers, `Content-Length` (or
/// `Transfer-Encoding: chunked` when the length is `None`) and the blank line. The body (if any)
/// is appended by the caller.
pub fn write_head(
    out: &mut Vec<u8>,
    status: u16,
    headers: &[(&str, &[u8])],
    content_length: Option<usize>,
    keep_alive: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\n");
    for (k, v) in headers {
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    if status != 304 && status >= 200 {
        match content_length {
            Some(n) => {
                out.extend_from_slice(b"Content-Length: ");
                out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            None => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        }
    }
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_info_and_request() {
        let raw = b"PUT /Dog/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Type: application/json\r\n\r\nhello";
        let info = parse_head_info(raw, 100).unwrap().unwrap();
        assert_eq!(info.body, BodyFraming::Length(5));
        let r = parse_request(&raw[..info.len]).unwrap();
        assert_eq!(r.method, Method::Put);
        assert_eq!(r.target, "/Dog/1");
        assert!(r.keep_alive);
        assert_eq!(r.content_type, Some("application/json"));
        assert_eq!(parse_head_info(&raw[..20], 100).unwrap(), None);
        assert_eq!(
            parse_head_info(raw, 4).unwrap_err(),
            FramingError::BodyTooLarge(4)
        );
    }

    #[test]
    fn refuses_smuggling_and_garbage() {
        assert!(
            parse_head_info(
                b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                100
            )
            .is_err()
        );
        assert!(parse_head_info(b"\x00\x01garbage\r\n\r\n", 100).is_err());
        assert!(parse_head_info(b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 100).is_err());
        let http10 = parse_request(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(!http10.keep_alive);
    }

    #[test]
    fn chunked_in_pieces() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: y\r\n\r\nNEXT";
        for split in 0..body.len() {
            let mut d = ChunkedDecoder::default();
            let mut out = Vec::new();
            let (a, done) = d.feed(&body[..split], &mut out, 100).unwrap();
            let (b, done2) = if done {
                (0, true)
            } else {
                d.feed(&body[a..], &mut out, 100).unwrap()
            };
            assert!(done2, "split {split}");
            assert_eq!(out, b"hello world");
            assert_eq!(&body[a + b..], b"NEXT");
        }
        let mut d = ChunkedDecoder::default();
        assert_eq!(
            d.feed(b"ff\r\n", &mut Vec::new(), 10).unwrap_err(),
            FramingError::BodyTooLarge(10)
        );
    }

    proptest::proptest! {
        #[test]
        fn framing_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = parse_head_info(&bytes, 1000);
            let _ = parse_request(&bytes);
            let _ = ChunkedDecoder::default().feed(&bytes, &mut Vec::new(), 1000);
        }
    }
}

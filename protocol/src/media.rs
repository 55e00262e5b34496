//! Media types and `Accept` negotiation (docs/rest.md).
//!
//! The response type maximises client q × server q, where the server's preferences are Harper's:
//! CBOR 1, MessagePack 0.9, JSON 0.8, event stream 0.8, YAML 0.7, `*/*` (as JSON) 0.5, plain text
//! 0.2, CSV 0.1. Only the types a caller says it can produce take part.

/// A content type Tessera speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaType {
    Json,
    MsgPack,
    Cbor,
    Csv,
    EventStream,
    Yaml,
    Text,
}

impl MediaType {
    /// The `Content-Type` header value: the type alone, as Harper sends it (JSON is UTF-8 by
    /// definition, RFC 8259, so a charset parameter says nothing).
    pub fn content_type(self) -> &'static str {
        self.essence()
    }

    /// The type without parameters.
    pub fn essence(self) -> &'static str {
        match self {
            MediaType::Json => "application/json",
            MediaType::MsgPack => "application/x-msgpack",
            MediaType::Cbor => "application/cbor",
            MediaType::Csv => "text/csv",
            MediaType::EventStream => "text/event-stream",
            MediaType::Yaml => "text/yaml",
            MediaType::Text => "text/plain",
        }
    }

    fn server_q(self) -> f32 {
        match self {
            MediaType::Cbor => 1.0,
            MediaType::MsgPack => 0.9,
            MediaType::Json | MediaType::EventStream => 0.8,
            MediaType::Yaml => 0.7,
            MediaType::Text => 0.2,
            MediaType::Csv => 0.1,
        }
    }

    /// The media type named by a `Content-Type` value (parameters ignored), if Tessera knows it.
    pub fn from_content_type(value: &str) -> Option<MediaType> {
        let essence = value.split(';').next().unwrap_or_default().trim();
        [
            MediaType::Json,
            MediaType::MsgPack,
            MediaType::Cbor,
            MediaType::Csv,
            MediaType::EventStream,
            MediaType::Yaml,
            MediaType::Text,
        ]
        .into_iter()
        .find(|m| m.essence().eq_ignore_ascii_case(essence))
    }
}

/// Picks the response type for an `Accept` header among `offered`. `None` means 406.
/// No header, or an empty one, means JSON.
pub fn negotiate(accept: Option<&str>, offered: &[MediaType]) -> Option<MediaType> {
    let accept = accept.map(str::trim).unwrap_or_default();
    if accept.is_empty() {
        return offered
            .contains(&MediaType::Json)
            .then_some(MediaType::Json);
    }
    let mut best: Option<(f32, f32, MediaType)> = None;
    let mut consider = |score: f32, m: MediaType| {
        let key = (score, m.server_q());
        if score > 0.0 && best.is_none_or(|(s, q, _)| key > (s, q)) {
            best = Some((score, m.server_q(), m));
        }
    };
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let essence = parts.next().unwrap_or_default().trim();
        let mut q = 1.0f32;
        for p in parts {
            if let Some(v) = p.trim().strip_prefix("q=") {
                q = v.trim().parse().unwrap_or(0.0);
            }
        }
        if essence == "*/*" {
            if offered.contains(&MediaType::Json) {
                consider(q * 0.5, MediaType::Json);
            }
            continue;
        }
        let (ty, sub) = essence.split_once('/').unwrap_or((essence, ""));
        for &m in offered {
            let (mty, msub) = m.essence().split_once('/').unwrap_or_default();
            let matches = (sub == "*" && ty.eq_ignore_ascii_case(mty))
                || (ty.eq_ignore_ascii_case(mty) && sub.eq_ignore_ascii_case(msub));
            if matches {
                consider(q * m.server_q(), m);
            }
        }
    }
    best.map(|(_, _, m)| m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use MediaType::*;

    const ALL: &[MediaType] = &[Json, MsgPack, Cbor, Csv, Yaml, Text];

    #[test]
    fn harper_preferences() {
        assert_eq!(negotiate(None, ALL), Some(Json));
        assert_eq!(negotiate(Some("*/*"), ALL), Some(Json));
        assert_eq!(
            negotiate(
                Some("application/json, application/x-msgpack, application/cbor"),
                ALL
            ),
            Some(Cbor)
        );
        assert_eq!(
            negotiate(Some("application/json, application/x-msgpack"), ALL),
            Some(MsgPack)
        );
        assert_eq!(
            negotiate(Some("application/x-msgpack;q=0.5, application/json"), ALL),
            Some(Json)
        );
        assert_eq!(
            negotiate(Some("text/html,application/xhtml+xml,*/*;q=0.8"), ALL),
            Some(Json)
        );
        assert_eq!(negotiate(Some("application/msgpack"), ALL), None);
        assert_eq!(negotiate(Some("text/csv"), &[Json, MsgPack]), None);
        assert_eq!(
            negotiate(Some("application/json;q=0"), &[Json, MsgPack]),
            None
        );
    }

    #[test]
    fn content_types() {
        assert_eq!(
            MediaType::from_content_type("application/json; charset=utf-8"),
            Some(Json)
        );
        assert_eq!(
            MediaType::from_content_type("APPLICATION/X-MSGPACK"),
            Some(MsgPack)
        );
        assert_eq!(MediaType::from_content_type("text/calendar"), None);
    }
}

//! REST request targets (docs/rest.md): `/Table`, `/Table/`, `/Table/<id>` with multi-segment
//! ids, percent-decoding, and the `.json`/`.cbor`/`.msgpack`/`.csv` suffixes that choose the
//! response type.

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

use crate::media::MediaType;

/// What a path addresses below the resource name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathKind {
    /// `/Table`: the table itself (its description).
    Table,
    /// `/Table/` or `/Table/<prefix>/`: records whose id starts with the (decoded) prefix.
    Collection(String),
    /// `/Table/<id>`: one record, id percent-decoded, still a string.
    Record(String),
}

/// A parsed request target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a> {
    /// The first path segment, percent-decoded: the exported resource name.
    pub resource: Cow<'a, str>,
    pub path: PathKind,
    /// The raw query string after `?`, if any.
    pub query: Option<&'a str>,
    /// A response type chosen by a URL suffix, which wins over `Accept`.
    pub format: Option<MediaType>,
}

/// Why a target could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("the request target must be an absolute path")]
    NotAPath,
    #[error("the path is not valid UTF-8 once percent-decoded")]
    BadEncoding,
}

fn decode(s: &str) -> Result<Cow<'_, str>, TargetError> {
    percent_decode_str(s)
        .decode_utf8()
        .map_err(|_| TargetError::BadEncoding)
}

const SUFFIXES: [(&str, MediaType); 4] = [
    (".json", MediaType::Json),
    (".cbor", MediaType::Cbor),
    (".msgpack", MediaType::MsgPack),
    (".csv", MediaType::Csv),
];

/// Parses a request target such as `/Dog/42?select(name)`.
pub fn parse_target(target: &str) -> Result<Target<'_>, TargetError> {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let path = path.strip_prefix('/').ok_or(TargetError::NotAPath)?;
    let (name, rest) = match path.split_once('/') {
        Some((n, r)) => (n, Some(r)),
        None => (path, None),
    };
    let resource = decode(name)?;
    let Some(mut rest) = rest else {
        return Ok(Target {
            resource,
            path: PathKind::Table,
            query,
            format: None,
        });
    };
    let mut format = None;
    for (suffix, media) in SUFFIXES {
        if let Some(stripped) = rest.strip_suffix(suffix) {
            rest = stripped;
            format = Some(media);
            break;
        }
    }
    let path = if rest.is_empty() || rest.ends_with('/') {
        PathKind::Collection(decode(rest)?.into_owned())
    } else {
        PathKind::Record(decode(rest)?.into_owned())
    };
    Ok(Target {
        resource,
        path,
        query,
        format,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let t = parse_target("/Dog").unwrap();
        assert_eq!((t.resource.as_ref(), t.path), ("Dog", PathKind::Table));
        let t = parse_target("/Dog/?breed=x").unwrap();
        assert_eq!(
            (t.path, t.query),
            (PathKind::Collection(String::new()), Some("breed=x"))
        );
        let t = parse_target("/Item/has%20space").unwrap();
        assert_eq!(t.path, PathKind::Record("has space".into()));
        let t = parse_target("/Item/grp/one").unwrap();
        assert_eq!(t.path, PathKind::Record("grp/one".into()));
        let t = parse_target("/Item/grp/").unwrap();
        assert_eq!(t.path, PathKind::Collection("grp/".into()));
        let t = parse_target("/Product/p01.csv").unwrap();
        assert_eq!(
            (t.path, t.format),
            (PathKind::Record("p01".into()), Some(MediaType::Csv))
        );
        let t = parse_target("/Product/.msgpack?category=x").unwrap();
        assert_eq!(
            (t.path, t.format),
            (
                PathKind::Collection(String::new()),
                Some(MediaType::MsgPack)
            )
        );
        let t = parse_target("/Product/p01.nope").unwrap();
        assert_eq!(t.path, PathKind::Record("p01.nope".into()));
        assert!(parse_target("Dog/1").is_err());
        assert!(parse_target("/Dog/%FF").is_err());
    }
}

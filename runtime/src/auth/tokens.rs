//! Authentication tokens (docs/operations.md): an operation token and a refresh token, both
//! JWTs naming the user, signed (HS256) with a key generated on first start and kept in
//! `<root>/data/token.key` (mode 0600). An operation token is a credential on REST and the
//! Operations API (`Authorization: Bearer`); a refresh token only buys a new operation token.

use std::path::Path;

use anyhow::Context;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use tessera_storage::layout::write_atomically;

/// What a token is for (its `sub` claim).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Operation,
    Refresh,
}

impl Kind {
    fn sub(self) -> &'static str {
        match self {
            Kind::Operation => "operation",
            Kind::Refresh => "refresh",
        }
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Invalid,
    Expired,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    username: String,
    super_user: bool,
    cluster_user: bool,
    iat: u64,
    exp: u64,
    sub: String,
}

/// The signing key and the lifetimes of tokens.
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// Seconds an operation token lives (`authentication.operationTokenTimeout`, 1 day).
    pub operation_ttl: u64,
    /// Seconds a refresh token lives (`authentication.refreshTokenTimeout`, 30 days).
    pub refresh_ttl: u64,
}

fn now_s() -> u64 {
    tessera_storage::shard::now_micros() / 1_000_000
}

impl Tokens {
    /// Reads the signing key from `<data_dir>/token.key`, creating it on first start.
    pub fn open(data_dir: &Path, operation_ttl: u64, refresh_ttl: u64) -> anyhow::Result<Tokens> {
        let path = data_dir.join("token.key");
        let key = match std::fs::read(&path) {
            Ok(k) if k.len() >= 32 => k,
            Ok(_) => anyhow::bail!("{} is corrupt", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut k = vec![0u8; 32];
                rand::rng().fill_bytes(&mut k);
                write_atomically(&path, &k, 0o600)
                    .with_context(|| format!("writing {}", path.display()))?;
                k
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Ok(Tokens {
            encoding: EncodingKey::from_secret(&key),
            decoding: DecodingKey::from_secret(&key),
            operation_ttl,
            refresh_ttl,
        })
    }

    /// A signed token of `kind` for `username`, living `ttl` seconds.
    pub fn issue(&self, username: &str, super_user: bool, kind: Kind, ttl: u64) -> String {
        let iat = now_s();
        let claims = Claims {
            username: username.to_owned(),
            super_user,
            cluster_user: false,
            iat,
            exp: iat.saturating_add(ttl),
            sub: kind.sub().to_owned(),
        };
        // HS256 over serializable claims cannot fail.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .unwrap_or_default()
    }

    /// The user a token of `kind` names, if it is ours, unexpired and of that kind.
    pub fn verify(&self, token: &str, kind: Kind) -> Result<String, TokenError> {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 0;
        v.set_required_spec_claims(&["exp", "sub"]);
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.decoding, &v).map_err(|e| {
                match e.kind() {
                    ErrorKind::ExpiredSignature => TokenError::Expired,
                    _ => TokenError::Invalid,
                }
            })?;
        if data.claims.sub != kind.sub() {
            return Err(TokenError::Invalid);
        }
        Ok(data.claims.username)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tokens::open(dir.path(), 60, 600).unwrap();
        let op = t.issue("rita", false, Kind::Operation, 60);
        assert_eq!(t.verify(&op, Kind::Operation), Ok("rita".into()));
        assert_eq!(t.verify(&op, Kind::Refresh), Err(TokenError::Invalid));
        let old = t.issue("rita", false, Kind::Operation, 0);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(t.verify(&old, Kind::Operation), Err(TokenError::Expired));
        assert_eq!(
            t.verify("garbage", Kind::Operation),
            Err(TokenError::Invalid)
        );
        // The key survives a restart; another key does not verify our tokens.
        let again = Tokens::open(dir.path(), 60, 600).unwrap();
        assert!(again.verify(&op, Kind::Operation).is_ok());
        let other = Tokens::open(tempfile::tempdir().unwrap().path(), 60, 600).unwrap();
        assert_eq!(other.verify(&op, Kind::Operation), Err(TokenError::Invalid));
    }
}

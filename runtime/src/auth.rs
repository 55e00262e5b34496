//! Users and HTTP authentication.
//!
//! Users live in `<root>/data/users.json` (mode 0600) with argon2id password hashes. The super
//! user is created on first start from `TESSERA_ADMIN_USERNAME`/`TESSERA_ADMIN_PASSWORD` (or
//! Harper's `HDB_ADMIN_USERNAME`/`HDB_ADMIN_PASSWORD`). A password is verified on glommio's
//! blocking pool, never on an executor thread, and a verified `Authorization` value is remembered
//! per core so the cost is paid once per credential and core, as Harper caches it too.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use argon2::Argon2;
use argon2::password_hash::{
    PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng,
};
use base64::Engine;
use futures::FutureExt;
use futures::future::{LocalBoxFuture, Shared};
use serde::{Deserialize, Serialize};
use tessera_storage::layout::write_atomically;

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub username: String,
    pub super_user: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredUser {
    username: String,
    /// PHC string of an argon2id hash.
    password: String,
    role: String,
    active: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct UsersFile {
    users: Vec<StoredUser>,
}

/// The user store.
#[derive(Debug)]
pub struct Users {
    path: PathBuf,
    file: UsersFile,
}

impl Users {
    /// Opens `<data_dir>/users.json` (empty if it does not exist yet).
    pub fn open(data_dir: &Path) -> anyhow::Result<Users> {
        let path = data_dir.join("users.json");
        let file = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .with_context(|| format!("{} is corrupt", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => UsersFile::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Ok(Users { path, file })
    }

    pub fn is_empty(&self) -> bool {
        self.file.users.is_empty()
    }

    /// Adds a super user unless a user of that name exists. Returns whether it was added.
    pub fn ensure_super_user(&mut self, username: &str, password: &str) -> anyhow::Result<bool> {
        if self.file.users.iter().any(|u| u.username == username) {
            return Ok(false);
        }
        let salt = SaltString::generate(&mut OsRng);
        let hash = Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))?
            .to_string();
        self.file.users.push(StoredUser {
            username: username.to_owned(),
            password: hash,
            role: "super_user".to_owned(),
            active: true,
        });
        self.save()?;
        Ok(true)
    }

    fn save(&self) -> anyhow::Result<()> {
        write_atomically(&self.path, &serde_json::to_vec_pretty(&self.file)?, 0o600)
            .with_context(|| format!("writing {}", self.path.display()))
    }

    /// Checks a password (slow by design: run it off the executor).
    pub fn verify(&self, username: &str, password: &str) -> Option<User> {
        let u = self
            .file
            .users
            .iter()
            .find(|u| u.username == username && u.active)?;
        let hash = PasswordHash::new(&u.password).ok()?;
        Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .ok()?;
        Some(User {
            username: u.username.clone(),
            super_user: u.role == "super_user",
        })
    }
}

/// `user:password` from an `Authorization: Basic ...` value.
fn basic_credentials(header: &[u8]) -> Option<(String, String)> {
    let s = std::str::from_utf8(header).ok()?.trim();
    let (scheme, token) = s.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (u, p) = decoded.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

/// Most remembered credentials per core; the map is cleared when full.
const CACHE_ENTRIES: usize = 4096;

type Verification = Shared<LocalBoxFuture<'static, Option<Arc<User>>>>;

/// One core's authenticator.
pub struct Authenticator {
    users: Arc<Users>,
    verified: RefCell<HashMap<Box<[u8]>, Arc<User>>>,
    /// Checks in progress, so that many requests arriving with the same new credentials share
    /// one password hash computation instead of queueing one each (argon2 also takes 19 MiB
    /// per computation).
    pending: RefCell<HashMap<Box<[u8]>, Verification>>,
}

impl Authenticator {
    pub fn new(users: Arc<Users>) -> Self {
        Authenticator {
            users,
            verified: RefCell::new(HashMap::new()),
            pending: RefCell::new(HashMap::new()),
        }
    }

    /// The user an `Authorization` header value proves, or `None`.
    pub async fn authenticate(&self, header: &[u8]) -> Option<Arc<User>> {
        if let Some(u) = self.verified.borrow().get(header) {
            return Some(u.clone());
        }
        let in_flight = self.pending.borrow().get(header).cloned();
        let check = match in_flight {
            Some(check) => check,
            None => {
                let (username, password) = basic_credentials(header)?;
                let users = self.users.clone();
                let check: Verification = async move {
                    glommio::executor()
                        .spawn_blocking(move || users.verify(&username, &password))
                        .await
                        .map(Arc::new)
                }
                .boxed_local()
                .shared();
                self.pending
                    .borrow_mut()
                    .insert(header.into(), check.clone());
                check
            }
        };
        let user = check.await;
        self.pending.borrow_mut().remove(header);
        let user = user?;
        let mut cache = self.verified.borrow_mut();
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(header.into(), user.clone());
        Some(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let mut users = Users::open(dir.path()).unwrap();
        assert!(users.ensure_super_user("admin", "s3cret").unwrap());
        assert!(!users.ensure_super_user("admin", "other").unwrap());
        let stored = std::fs::read_to_string(dir.path().join("users.json")).unwrap();
        assert!(!stored.contains("s3cret") && stored.contains("$argon2id$"));
        let users = Users::open(dir.path()).unwrap();
        assert_eq!(
            users.verify("admin", "s3cret").map(|u| u.super_user),
            Some(true)
        );
        assert!(users.verify("admin", "wrong").is_none());
        assert!(users.verify("nobody", "s3cret").is_none());
    }

    #[test]
    fn parses_basic() {
        assert_eq!(
            basic_credentials(b"Basic YWRtaW46cGFzczp3b3Jk"),
            Some(("admin".into(), "pass:word".into()))
        );
        assert_eq!(basic_credentials(b"Bearer abc"), None);
        assert_eq!(basic_credentials(b"Basic !!!"), None);
    }
}

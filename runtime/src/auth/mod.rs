//! Authentication: who a request is made by, from Basic credentials or a Bearer token.
//!
//! A password is verified on glommio's blocking pool, never on an executor thread, and a verified
//! `Authorization` value is remembered per core so the cost is paid once per credential and core,
//! as Harper caches it too. The cache is dropped whenever users or roles change.

pub mod tokens;
pub mod users;

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use futures::FutureExt;
use futures::future::{LocalBoxFuture, Shared};

use crate::app::events::View;
use crate::app::permissions::User;
use tokens::{Kind, TokenError, Tokens};
use users::Users;

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

/// Why credentials were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No credentials at all.
    Missing,
    LoginFailed,
    /// The right password of a deactivated user.
    Inactive,
    InvalidToken,
    TokenExpired,
}

impl Denied {
    /// The Operations API's message for it.
    pub fn message(self) -> &'static str {
        match self {
            Denied::Missing => "Must login",
            Denied::LoginFailed => "Login failed",
            Denied::Inactive => "Cannot complete request: User is inactive",
            Denied::InvalidToken => "invalid token",
            Denied::TokenExpired => "token expired",
        }
    }
}

/// The token of an `Authorization: Bearer ...` value.
pub fn bearer(header: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(header).ok()?.trim();
    let (scheme, token) = s.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Most remembered credentials per core; the map is cleared when full.
const CACHE_ENTRIES: usize = 4096;

type Verification = Shared<LocalBoxFuture<'static, Option<Arc<User>>>>;

/// One core's authenticator.
pub struct Authenticator {
    users: Arc<Users>,
    tokens: Arc<Tokens>,
    verified: RefCell<HashMap<Box<[u8]>, Arc<User>>>,
    /// The users' generation the cache was filled at.
    seen: std::cell::Cell<u64>,
    /// Checks in progress, so that many requests arriving with the same new credentials share
    /// one password hash computation instead of queueing one each (argon2 also takes 19 MiB
    /// per computation).
    pending: RefCell<HashMap<Box<[u8]>, Verification>>,
}

impl Authenticator {
    pub fn new(users: Arc<Users>, tokens: Arc<Tokens>) -> Self {
        Authenticator {
            users,
            tokens,
            verified: RefCell::new(HashMap::new()),
            seen: std::cell::Cell::new(0),
            pending: RefCell::new(HashMap::new()),
        }
    }

    /// The user and role store.
    pub fn users(&self) -> &Arc<Users> {
        &self.users
    }

    /// The token signer.
    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    /// The user an `Authorization` value proves (Basic credentials or a Bearer operation
    /// token), or why not.
    pub async fn check(&self, header: &[u8]) -> Result<Arc<User>, Denied> {
        if let Some(token) = bearer(header) {
            let username = self
                .tokens
                .verify(token, Kind::Operation)
                .map_err(|e| match e {
                    TokenError::Expired => Denied::TokenExpired,
                    TokenError::Invalid => Denied::InvalidToken,
                })?;
            // Deactivated or dropped since the token was issued: refused.
            return self
                .users
                .active_user(&username)
                .map(Arc::new)
                .ok_or(Denied::InvalidToken);
        }
        if let Some(user) = self.authenticate(header).await {
            return Ok(user);
        }
        let Some((username, password)) = basic_credentials(header) else {
            return Err(Denied::LoginFailed);
        };
        let users = self.users.clone();
        let inactive = glommio::executor()
            .spawn_blocking(move || users.is_inactive(&username, &password))
            .await;
        Err(if inactive {
            Denied::Inactive
        } else {
            Denied::LoginFailed
        })
    }

    /// The active user `name`, whom something other than a password proved (a client
    /// certificate).
    pub fn user_named(&self, name: &str) -> Result<Arc<User>, Denied> {
        self.users
            .active_user(name)
            .map(Arc::new)
            .ok_or(Denied::LoginFailed)
    }

    /// The user an `Authorization` header value proves, or `None`.
    pub async fn authenticate(&self, header: &[u8]) -> Option<Arc<User>> {
        // A changed user or role (password, role, active flag, permissions) invalidates the cache.
        let generation = self.users.generation();
        if self.seen.get() != generation {
            self.verified.borrow_mut().clear();
            self.seen.set(generation);
        }
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
        if self.users.generation() != generation {
            // Users changed while checking: answer, but do not remember.
            return Some(user);
        }
        let mut cache = self.verified.borrow_mut();
        if cache.len() >= CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(header.into(), user.clone());
        Some(user)
    }
}

/// A long-lived connection's user (a subscription's, an MQTT session's) as its role is now:
/// after `alter_role`, `alter_user` or `drop_user`, the next delivery or publish sees the
/// change. Checking costs one atomic load while nothing changes.
pub struct LiveUser {
    users: Arc<Users>,
    user: RefCell<Option<Arc<User>>>,
    seen: std::cell::Cell<u64>,
    /// What the user may see of each table it was asked about, while its role is as it is
    /// (table id, view): a fan-out asks once per delivery, always about the same few tables.
    views: RefCell<Vec<(u32, View)>>,
}

impl LiveUser {
    pub fn new(users: Arc<Users>, user: Arc<User>) -> LiveUser {
        let seen = std::cell::Cell::new(users.generation());
        LiveUser {
            users,
            user: RefCell::new(Some(user)),
            seen,
            views: RefCell::new(Vec::new()),
        }
    }

    /// What the user may see of table `table` now (`decide` works it out the first time after
    /// each change of users or roles); `None` once the user is gone.
    pub fn view(&self, table: u32, decide: impl FnOnce(&User) -> View) -> Option<View> {
        self.refresh();
        let user = self.user.borrow();
        let user = user.as_ref()?;
        if let Some((_, v)) = self.views.borrow().iter().find(|(t, _)| *t == table) {
            return Some(*v);
        }
        let v = decide(user);
        self.views.borrow_mut().push((table, v));
        Some(v)
    }

    /// Resolves once the user has been dropped or deactivated, looking once a second (so that
    /// an idle connection of a dropped user ends within about a second).
    pub async fn gone(&self) {
        while self.current().is_some() {
            glommio::timer::sleep(std::time::Duration::from_secs(1)).await;
        }
    }

    /// The user now; `None` once it has been dropped or deactivated (its connection should
    /// end). The user trusted on loopback (`authorizeLocal`) is not in the store and stays.
    pub fn current(&self) -> Option<Arc<User>> {
        self.refresh();
        self.user.borrow().clone()
    }

    /// Reads the user again (and forgets its views) once users or roles have changed.
    fn refresh(&self) {
        let generation = self.users.generation();
        if self.seen.get() != generation {
            self.seen.set(generation);
            let mut user = self.user.borrow_mut();
            let fresh = match user.as_ref() {
                Some(u) if **u == User::local() => Some(u.clone()),
                Some(u) => self.users.active_user(&u.username).map(Arc::new),
                None => None,
            };
            *user = fresh;
            self.views.borrow_mut().clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

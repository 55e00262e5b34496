//! The one place where failures become HTTP statuses and bodies (HARPER.md section 2).

use tessera_shards::ShardError;

use crate::body::BodyError;

/// A failed REST request.
#[derive(Debug, thiserror::Error)]
pub enum RestError {
    /// No or bad credentials: 401 with `WWW-Authenticate: Basic`.
    #[error("Must login")]
    Unauthorized,
    /// Authenticated, but the role does not allow it: 403.
    #[error("Unauthorized access to resource")]
    Forbidden,
    /// Unknown first path segment: 404 with the text `Not found` and no content type.
    #[error("Not found")]
    NoSuchResource,
    /// A missing record: 404 with an empty body.
    #[error("")]
    NoSuchRecord,
    #[error("{0}")]
    BadRequest(String),
    /// 404 with a message (an undefined attribute in a query).
    #[error("{0}")]
    NotFound(String),
    /// 405 with the methods the target allows.
    #[error("Method not allowed")]
    MethodNotAllowed(&'static str),
    #[error("Not acceptable")]
    NotAcceptable,
    #[error("{0}")]
    NotImplemented(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
    /// A wasm resource's own error: its status and message.
    #[error("{1}")]
    Resource(u16, String),
}

impl RestError {
    pub fn status(&self) -> u16 {
        match self {
            RestError::Unauthorized => 401,
            RestError::Forbidden => 403,
            RestError::NoSuchResource | RestError::NoSuchRecord | RestError::NotFound(_) => 404,
            RestError::BadRequest(_) => 400,
            RestError::MethodNotAllowed(_) => 405,
            RestError::NotAcceptable => 406,
            RestError::NotImplemented(_) => 501,
            RestError::Unavailable(_) => 503,
            RestError::Internal(_) => 500,
            RestError::Resource(status, _) => *status,
        }
    }

    /// Harper's error class prefix of the body (`"ClientError: ..."`).
    pub fn class(&self) -> &'static str {
        match self {
            RestError::Unauthorized | RestError::Forbidden => "AccessViolation",
            RestError::Internal(_) | RestError::Unavailable(_) | RestError::NotImplemented(_) => {
                "ServerError"
            }
            RestError::Resource(status, _) if *status >= 500 => "ServerError",
            _ => "ClientError",
        }
    }
}

impl From<BodyError> for RestError {
    fn from(e: BodyError) -> Self {
        RestError::BadRequest(e.to_string())
    }
}

impl From<tessera_storage::shard::StoreError> for RestError {
    fn from(e: tessera_storage::shard::StoreError) -> Self {
        eprintln!("error: {e}");
        RestError::Internal(e.to_string())
    }
}

impl From<ShardError> for RestError {
    fn from(e: ShardError) -> Self {
        match e {
            ShardError::Closing => RestError::Unavailable(e.to_string()),
            e => {
                eprintln!("error: {e}");
                RestError::Internal(e.to_string())
            }
        }
    }
}

//! The kernel's one error type. Each front maps it to its own wire: the HTTP front to a status,
//! an error class and a body (`http/error.rs`), the Operations API to `{"error": ...}`
//! (`ops/mod.rs`), MQTT to a reason code (`mqtt/publish.rs`), a wasm guest to its `error` record.
//! [`AppError::status`] is the HTTP status Harper gives each kind, which every front starts from.

use tessera_shards::ShardError;

use super::body::BodyError;

/// Why a kernel call failed.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// No or bad credentials: 401 with `WWW-Authenticate: Basic`.
    #[error("Must login")]
    Unauthorized,
    /// The right credentials of a deactivated user: 401, answered as the Operations API
    /// answers it (`{"error": ...}`) on every front.
    #[error("Cannot complete request: User is inactive")]
    Inactive,
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
    #[error("{message}")]
    Resource { status: u16, message: String },
}

impl AppError {
    pub fn status(&self) -> u16 {
        match self {
            AppError::Unauthorized | AppError::Inactive => 401,
            AppError::Forbidden => 403,
            AppError::NoSuchResource | AppError::NoSuchRecord | AppError::NotFound(_) => 404,
            AppError::BadRequest(_) => 400,
            AppError::MethodNotAllowed(_) => 405,
            AppError::NotAcceptable => 406,
            AppError::NotImplemented(_) => 501,
            AppError::Unavailable(_) => 503,
            AppError::Internal(_) => 500,
            AppError::Resource { status, .. } => *status,
        }
    }
}

impl From<BodyError> for AppError {
    fn from(e: BodyError) -> Self {
        AppError::BadRequest(e.to_string())
    }
}

impl From<tessera_storage::shard::StoreError> for AppError {
    fn from(e: tessera_storage::shard::StoreError) -> Self {
        AppError::Internal(e.to_string())
    }
}

impl From<ShardError> for AppError {
    fn from(e: ShardError) -> Self {
        match e {
            ShardError::Closing => AppError::Unavailable(e.to_string()),
            e => AppError::Internal(e.to_string()),
        }
    }
}

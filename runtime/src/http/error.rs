//! An [`AppError`] as the HTTP front answers it: Harper's status, error class and body.

use tessera_protocol::MediaType;
use tessera_storage::Value;

use crate::app::AppError;
use crate::app::output::encode_value;
use crate::net::reply::Reply;

/// Harper's error class, the prefix of an error body (`"ClientError: ..."`).
pub fn class(e: &AppError) -> &'static str {
    match e {
        AppError::Unauthorized | AppError::Inactive | AppError::Forbidden => "AccessViolation",
        AppError::Internal(_) | AppError::Unavailable(_) | AppError::NotImplemented(_) => {
            "ServerError"
        }
        AppError::Resource { status, .. } if *status >= 500 => "ServerError",
        _ => "ClientError",
    }
}

pub fn send(reply: &mut Reply<'_>, e: &AppError, fmt: MediaType) {
    let status = e.status();
    if let AppError::Internal(message) = e {
        tracing::error!("{message}");
    }
    match e {
        AppError::NoSuchRecord => reply.send(status, None, &[], b""),
        AppError::NoSuchResource => reply.send(status, None, &[], b"Not found"),
        AppError::Inactive => {
            let mut body = Vec::new();
            let error = Value::Object(vec![("error".into(), Value::String(e.to_string()))]);
            encode_value(&error, fmt, &mut body);
            reply.send(status, Some(fmt), &[], &body);
        }
        _ => {
            let mut body = Vec::new();
            encode_value(&Value::String(format!("{}: {e}", class(e))), fmt, &mut body);
            let extra: &[(&str, &[u8])] = match e {
                AppError::Unauthorized => &[("WWW-Authenticate", b"Basic")],
                AppError::MethodNotAllowed(allow) => &[("Allow", allow.as_bytes())],
                _ => &[],
            };
            reply.send(status, Some(fmt), extra, &body);
        }
    }
}

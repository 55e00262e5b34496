//! A wasm resource as the source of a caching table (`SOURCE_FOR` in the SDK, `source-for` in
//! the WIT): the kernel's read-through (`data/cache.rs`) calls its `get` for a missing or
//! expired record, and its `put`, `patch` and `delete` before the table's REST writes.

use std::sync::Arc;

use futures::future::LocalBoxFuture;
use tessera_shards::Router;
use tessera_storage::{Value, value};

use super::call::{Call, Handled, call};
use super::{Method, WasmHost, WasmResource};
use crate::app::permissions::User;
use crate::app::sources::{FromSource, LoadError, Loader, max_age};
use crate::app::{App, AppError};

#[derive(Clone)]
pub struct WasmSource {
    pub host: Arc<WasmHost>,
    pub resource: Arc<WasmResource>,
}

impl WasmSource {
    async fn call(
        &self,
        app: &Arc<App>,
        method: Method,
        id: &str,
        data: Option<Vec<u8>>,
        user: Option<Arc<User>>,
    ) -> Result<Handled, AppError> {
        let router = Router::with_local(Router::clone)
            .ok_or_else(|| AppError::Internal("no router on this thread".into()))?;
        let asked = Call {
            method,
            id: Some(id),
            pathname: id,
            search: "",
            is_collection: false,
            data,
            user,
            head: Vec::new(),
        };
        call(&self.host, app, &router, &self.resource, asked).await
    }
}

impl Loader for WasmSource {
    fn load(
        &self,
        app: Arc<App>,
        id: String,
        user: Option<Arc<User>>,
    ) -> LocalBoxFuture<'static, Result<Option<FromSource>, LoadError>> {
        let this = self.clone();
        Box::pin(async move {
            let name = &this.resource.name;
            match this.call(&app, Method::Get, &id, None, user).await {
                Ok(Handled::Respond(r)) if r.status == 404 => Ok(None),
                Ok(Handled::Respond(r)) if (200..300).contains(&r.status) => {
                    let data = r.data.ok_or_else(|| {
                        LoadError::Failed(format!("source {name} answered {id} with no data"))
                    })?;
                    let max_age = max_age(r.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
                    match value::from_msgpack(&data) {
                        Ok(record @ Value::Object(_)) => Ok(Some(FromSource { record, max_age })),
                        _ => Err(LoadError::Failed(format!(
                            "source {name} answered {id} with something not a record"
                        ))),
                    }
                }
                Ok(Handled::Respond(r)) => Err(LoadError::Failed(format!(
                    "source {name} answered {id} with status {}",
                    r.status
                ))),
                Ok(Handled::Fallback) => Err(LoadError::Failed(format!(
                    "source {name} does not implement get"
                ))),
                Err(AppError::Resource { status: 404, .. } | AppError::NoSuchRecord) => Ok(None),
                Err(AppError::Resource {
                    status: 504,
                    message,
                }) => Err(LoadError::Timeout(message)),
                Err(e) => Err(LoadError::Failed(format!("source {name}: {e}"))),
            }
        })
    }

    fn write(
        &self,
        app: Arc<App>,
        method: &'static str,
        id: String,
        record: Option<Value>,
        user: Option<Arc<User>>,
    ) -> LocalBoxFuture<'static, Result<(), AppError>> {
        let this = self.clone();
        Box::pin(async move {
            let verb = match method {
                "PUT" => Method::Put,
                "PATCH" => Method::Patch,
                _ => Method::Delete,
            };
            let data = record.map(|r| r.to_msgpack());
            match this.call(&app, verb, &id, data, user).await? {
                Handled::Respond(r) if r.status >= 400 => Err(AppError::Resource {
                    status: r.status,
                    message: format!("source {} refused the write", this.resource.name),
                }),
                // A source that does not take writes leaves them to the table.
                Handled::Respond(_) | Handled::Fallback => Ok(()),
            }
        })
    }

    fn name(&self) -> String {
        self.resource.name.clone()
    }
}

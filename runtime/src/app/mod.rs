//! The kernel: the application that every protocol front serves. It knows tables, records, users
//! and permissions, and imports no front (see ARCHITECTURE.md for the layers).
//!
//! [`App`] is shared by every core: the resolved settings and the table registry. What is per
//! core (the router to the shards, the authenticator, the wasm host) is held by
//! the per-core worker (`worker.rs`), one layer up.

pub mod body;
pub mod cluster;
pub mod component;
pub mod error;
pub mod events;
pub mod keys;
pub mod logging;
pub mod outbound;
pub mod output;
pub mod permissions;
pub mod records;
pub mod settings;
pub mod sources;
pub mod tables;

pub use error::AppError;
pub use settings::Settings;
pub use tables::Tables;

/// The application, shared by every core.
pub struct App {
    pub settings: Settings,
    pub tables: Tables,
    /// What replication knows of the cluster (`cluster_status`).
    pub cluster: cluster::Cluster,
    /// Caching tables' sources and the outbound HTTP client.
    pub sources: sources::Sources,
}

/// The first table of a `schema.graphql` source, for unit tests.
#[cfg(test)]
pub fn table_of(schema: &str) -> tessera_storage::Table {
    let mut c = tessera_storage::Catalog::default();
    c.load_schema("schema.graphql", schema)
        .expect("a valid schema");
    c.tables.remove(0)
}

/// Who is at the other end of a connection, before any request says who it is.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    /// It connected over loopback (`authentication.authorizeLocal` trusts it).
    pub loopback: bool,
    /// The user its client certificate names (mTLS), if the listener takes that.
    pub certificate_user: Option<String>,
}

impl Peer {
    /// Whether a request from it proves a user without credentials of its own.
    pub fn vouched(&self, authorize_local: bool) -> bool {
        (authorize_local && self.loopback) || self.certificate_user.is_some()
    }
}

//! What this node knows of its cluster, for the Operations API's `cluster_status`: the
//! replication thread notes its connection and what it receives from each node; the
//! Operations API reads it. Nothing here is on a request's hot path.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// The cluster as replication sees it.
#[derive(Debug, Default)]
pub struct Cluster {
    state: Mutex<State>,
}

/// A copy of what [`Cluster`] holds.
#[derive(Debug, Default, Clone)]
pub struct State {
    /// This node's name, once replication runs.
    pub node: Option<String>,
    /// Whether it is connected to NATS now.
    pub connected: bool,
    /// What it last applied from each other node, per database.
    pub peers: BTreeMap<String, BTreeMap<String, Received>>,
}

/// The last change applied from one node of one database.
#[derive(Debug, Default, Clone, Copy)]
pub struct Received {
    /// Its version (µs since the epoch, the other node's clock).
    pub version: u64,
    /// When it was applied here (ms since the epoch).
    pub at_ms: u64,
}

impl Cluster {
    pub fn state(&self) -> State {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Notes this node's name and whether it is connected.
    pub fn connected(&self, node: &str, connected: bool) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.node = Some(node.to_owned());
        s.connected = connected;
    }

    /// Notes a change of `database` from `node` at `version`, applied at `at_ms`.
    pub fn received(&self, node: &str, database: &str, version: u64, at_ms: u64) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let last = s
            .peers
            .entry(node.to_owned())
            .or_default()
            .entry(database.to_owned())
            .or_default();
        last.version = last.version.max(version);
        last.at_ms = at_ms;
    }
}

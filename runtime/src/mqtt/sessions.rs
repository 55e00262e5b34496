//! MQTT client ids across the process: one live connection per client id (a new CONNECT takes
//! the id over and the old connection is closed), and persistent sessions (clean session 0, or
//! MQTT 5 clean start 0 with a session expiry) that outlive their connection: their
//! subscriptions stay registered, QoS 1 changes are queued while the client is away (after the
//! deliveries it never acknowledged, which go again) in its backlog (`backlog.rs`: 10,000 in
//! memory, the rest on disk), and the next connection with the id gets both back. A session is resumed only by the user it belongs to.
//!
//! Kept sessions are also written to disk ([`save`], one file per client id under
//! `<root>/mqtt-sessions/`), so that they outlive a restart: at start-up each one is parked again
//! with its filters and the deliveries it was owed when its connection ended, followed by the
//! changes committed since, which the shards' audit logs give back. Messages published without
//! RETAIN are not in the audit log: those queued for an absent client do not outlive a restart.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::Duration;

use futures::channel::oneshot;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tessera_protocol::mqtt::QoS;

use super::backlog::{Backlog, Pending, Redelivery};
use super::{guarantee_of, qos_of};
use crate::realtime::{Broadcast, Delivery};

/// What a resumed session gets back: its filters, the changes queued while it was away, and
/// when its connection ended (changes committed after it that never reached the queue are
/// still in the audit logs).
pub struct Resumed {
    pub filters: Vec<(String, QoS)>,
    pub queued: Backlog,
    pub parked_at: Option<u64>,
}

/// A session whose connection has ended: its parker holds the subscriptions and the queue.
struct ParkedEntry {
    /// The user it belongs to.
    user: String,
    filters: Vec<(String, QoS)>,
    /// When its connection ended (µs, the clock of change versions), if known.
    parked_at: Option<u64>,
    /// Asks the parker to stop and hand over what it queued.
    take: oneshot::Sender<oneshot::Sender<Backlog>>,
}

#[derive(Default)]
struct Entry {
    /// The live connection, and its takeover signal (taken once sent).
    live: Option<(u64, Option<oneshot::Sender<()>>)>,
    parked: Option<ParkedEntry>,
}

static SESSIONS: Mutex<Option<HashMap<String, Entry>>> = Mutex::new(None);

fn with<R>(f: impl FnOnce(&mut HashMap<String, Entry>) -> R) -> R {
    let mut guard = SESSIONS.lock().unwrap_or_else(|e| e.into_inner());
    f(guard.get_or_insert_with(HashMap::new))
}

/// Wills waiting out their MQTT 5 Will Delay Interval: client id -> the connection that left
/// it. A new connection with the client id cancels it ([`claim`]).
static DELAYED_WILLS: Mutex<Option<HashMap<String, u64>>> = Mutex::new(None);

fn with_wills<R>(f: impl FnOnce(&mut HashMap<String, u64>) -> R) -> R {
    let mut guard = DELAYED_WILLS.lock().unwrap_or_else(|e| e.into_inner());
    f(guard.get_or_insert_with(HashMap::new))
}

/// Notes the will of connection `conn` as waiting for its delay.
pub fn delay_will(client_id: &str, conn: u64) {
    with_wills(|w| w.insert(client_id.to_owned(), conn));
}

/// Whether the will `conn` left is still due (no connection with its client id came since),
/// and takes it off the list.
pub fn will_due(client_id: &str, conn: u64) -> bool {
    with_wills(|w| match w.get(client_id) {
        Some(c) if *c == conn => w.remove(client_id).is_some(),
        _ => false,
    })
}

/// How long a new connection waits for the one it takes over to end (which takes up to the
/// second its last packets may linger for, when its client stopped reading).
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// Claims `client_id` for connection `conn` of `user`: a live connection with the id is told to
/// go, and this waits until it has (parking or releasing its session). Returns the signal this
/// connection is taken over by, and the parked session when `resume` asks for it and it is
/// `user`'s (otherwise a parked session is discarded).
pub async fn claim(
    client_id: &str,
    conn: u64,
    user: &str,
    resume: bool,
) -> (oneshot::Receiver<()>, Option<Resumed>) {
    let old = with(|m| {
        m.get_mut(client_id)
            .and_then(|e| e.live.as_mut())
            .and_then(|(_, kill)| kill.take())
    });
    if let Some(kill) = old {
        let _ = kill.send(());
        let started = std::time::Instant::now();
        while with(|m| m.get(client_id).is_some_and(|e| e.live.is_some()))
            && started.elapsed() < TAKEOVER_WAIT
        {
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
    }
    // A new connection to the session: a will still waiting for its delay is not sent.
    with_wills(|w| w.remove(client_id));
    let (kill_tx, kill_rx) = oneshot::channel();
    let parked = with(|m| {
        let e = m.entry(client_id.to_owned()).or_default();
        e.live = Some((conn, Some(kill_tx)));
        e.parked.take()
    });
    let resumed = match parked {
        Some(p) => {
            let (tx, rx) = oneshot::channel();
            let queued = match p.take.send(tx) {
                Ok(()) => rx.await.unwrap_or_default(),
                Err(_) => Backlog::default(),
            };
            (resume && p.user == user).then_some(Resumed {
                filters: p.filters,
                queued,
                parked_at: p.parked_at,
            })
        }
        None => None,
    };
    (kill_rx, resumed)
}

/// The connection `conn` with `client_id` has ended without a session to keep.
pub fn release(client_id: &str, conn: u64) {
    with(|m| {
        if let Some(e) = m.get_mut(client_id) {
            if e.live.as_ref().is_some_and(|(c, _)| *c == conn) {
                e.live = None;
            }
            if e.live.is_none() && e.parked.is_none() {
                m.remove(client_id);
            }
        }
    });
}

/// Where whoever resumes a parked session asks its parker to hand over the queue.
pub type Handover = oneshot::Receiver<oneshot::Sender<Backlog>>;

/// The connection `conn` (0: none, for a session restored at start-up) has ended, at
/// `parked_at` if known, and its session stays: `filters` remain subscribed, and the returned
/// receiver is where whoever resumes the session asks for the queue.
pub fn park(
    client_id: &str,
    conn: u64,
    user: &str,
    filters: Vec<(String, QoS)>,
    parked_at: Option<u64>,
) -> Handover {
    let (take, handover) = oneshot::channel();
    with(|m| {
        let e = m.entry(client_id.to_owned()).or_default();
        if e.live.as_ref().is_some_and(|(c, _)| *c == conn) {
            e.live = None;
        }
        e.parked = Some(ParkedEntry {
            user: user.to_owned(),
            filters,
            parked_at,
            take,
        });
    });
    handover
}

/// Forgets a parked session whose expiry has passed (if it is still the one parked), on disk
/// too.
pub fn expire(client_id: &str) {
    with(|m| {
        if let Some(e) = m.get_mut(client_id) {
            e.parked = None;
            if e.live.is_none() {
                m.remove(client_id);
            }
        }
    });
    forget(client_id);
}

/// Appends `logged` (in commit order) to `queue`, leaving out the changes its head already holds
/// (the deliveries saved with a session, which the logs give back too).
pub async fn append_new(queue: &mut Backlog, logged: Vec<Delivery>) {
    if logged.is_empty() {
        return;
    }
    let queued: HashSet<(u64, Vec<u8>)> = queue
        .head()
        .iter()
        .map(|p| (p.delivery.change.version, p.delivery.change.key.clone()))
        .collect();
    for d in logged {
        if !queued.contains(&(d.change.version, d.change.key.clone())) {
            queue.push_back(Pending::new(d));
            queue.settle().await;
        }
    }
}

/// Who a kept session belongs to and how long it outlives its connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Owner {
    pub client_id: String,
    pub user: String,
    /// Seconds it outlives its connection; `None`: for ever (MQTT 3.1.1, or 5 with the
    /// maximum interval).
    pub expiry: Option<u32>,
}

/// A kept session as written to disk.
#[derive(Debug, Serialize, Deserialize)]
pub struct Saved {
    pub owner: Owner,
    /// Its filters and their QoS (0, 1 or 2).
    pub filters: Vec<(String, u8)>,
    /// When its connection ended (µs since the epoch, the clock of change versions); `None`
    /// while a connection had it.
    pub parked_at: Option<u64>,
    /// What it was owed then, in order.
    pub queue: Vec<SavedDelivery>,
}

/// A delivery a saved session is owed.
#[derive(Debug, Serialize, Deserialize)]
pub struct SavedDelivery {
    /// The packet id and PUBREC state of a delivery sent before.
    again: Option<(u16, bool)>,
    qos: u8,
    /// [`tessera_storage::shard::Change::encode`].
    change: Vec<u8>,
}

impl Saved {
    /// The session of `owner` as it is while a connection has it.
    pub fn live(owner: &Owner, filters: impl IntoIterator<Item = (String, QoS)>) -> Saved {
        Saved {
            owner: owner.clone(),
            filters: filters.into_iter().map(|(f, q)| (f, q as u8)).collect(),
            parked_at: None,
            queue: Vec::new(),
        }
    }

    /// The session of `owner` as its connection ends at `parked_at`, owed `queue` (the
    /// deliveries in its head: see `backlog`).
    pub fn parked(
        owner: &Owner,
        filters: &[(String, QoS)],
        parked_at: u64,
        queue: &Backlog,
    ) -> Saved {
        Saved {
            parked_at: Some(parked_at),
            queue: queue
                .head()
                .iter()
                .map(|p| SavedDelivery {
                    again: p.redelivery.map(|a| (a.id, a.received)),
                    qos: qos_of(p.delivery.guarantee) as u8,
                    change: p.delivery.change.change().encode(),
                })
                .collect(),
            ..Saved::live(owner, filters.iter().cloned())
        }
    }

    /// The deliveries it was owed (those that cannot be read back are left out).
    pub fn queued(&self) -> VecDeque<Pending> {
        self.queue
            .iter()
            .filter_map(|owed| {
                let change = tessera_storage::shard::Change::decode(&owed.change)?;
                let qos = QoS::from_bits(owed.qos).ok()?;
                Some(Pending {
                    redelivery: owed.again.map(|(id, received)| Redelivery { id, received }),
                    delivery: Delivery {
                        change: Broadcast::new(change),
                        guarantee: guarantee_of(qos),
                        options: 0,
                        share: 0,
                    },
                })
            })
            .collect()
    }

    /// Its filters with their QoS.
    pub fn filters(&self) -> Vec<(String, QoS)> {
        self.filters
            .iter()
            .filter_map(|(f, q)| Some((f.clone(), QoS::from_bits(*q).ok()?)))
            .collect()
    }

    /// How long it still outlives its connection, from now; `Err` once it has expired.
    pub fn remaining(&self) -> Result<Option<Duration>, ()> {
        let Some(expiry) = self.owner.expiry else {
            return Ok(None);
        };
        let expiry = Duration::from_secs(u64::from(expiry));
        let Some(at) = self.parked_at else {
            return Ok(Some(expiry));
        };
        let gone = Duration::from_micros(tessera_storage::shard::now_micros().saturating_sub(at));
        expiry.checked_sub(gone).map(Some).ok_or(())
    }
}

enum DiskOp {
    Save(Saved),
    Forget(String),

    Flush(mpsc::Sender<()>),
}

/// The queue of the thread that writes sessions to disk, in the order they are asked for.
static DISK: OnceLock<mpsc::Sender<DiskOp>> = OnceLock::new();

fn send(op: DiskOp) {
    if let Some(tx) = DISK.get() {
        let _ = tx.send(op);
    }
}

/// Writes `saved` to disk (in the background: a session is not a write anyone waits for).
pub fn save(saved: Saved) {
    send(DiskOp::Save(saved));
}

/// Removes the session of `client_id` from disk, if it is there.
pub fn forget(client_id: &str) {
    send(DiskOp::Forget(client_id.to_owned()));
}

/// Waits until every session asked for so far is on disk (at shutdown).
pub fn flush() {
    let (tx, rx) = mpsc::channel();
    send(DiskOp::Flush(tx));
    let _ = rx.recv_timeout(Duration::from_secs(10));
}

/// The file of a client id's session: named by a hash, since a client id may hold any
/// character and up to 65,535 bytes.
fn file_of(dir: &Path, client_id: &str) -> PathBuf {
    let hash = sha2::Sha256::digest(client_id.as_bytes());
    let name: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    dir.join(format!("{name}.session"))
}

/// Opens the sessions directory `dir` and starts the thread that writes to it. Returns the
/// sessions kept there that have not expired (expired ones are removed).
pub fn open(dir: &Path) -> std::io::Result<Vec<Saved>> {
    std::fs::create_dir_all(dir)?;
    super::backlog::open(&dir.join("backlog"))?;
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            continue;
        }
        if path.extension().is_some_and(|e| e == "tmp") {
            let _ = std::fs::remove_file(&path);
            continue;
        }
        let saved = std::fs::read(&path)
            .ok()
            .and_then(|b| rmp_serde::from_slice::<Saved>(&b).ok());
        match saved {
            Some(s) if s.remaining().is_ok() => found.push(s),
            Some(_) => std::fs::remove_file(&path)?,
            None => tracing::warn!("mqtt: ignoring unreadable session file {}", path.display()),
        }
    }
    let known: HashSet<String> = found.iter().map(|s| s.owner.client_id.clone()).collect();
    let (tx, rx) = mpsc::channel();
    let dir = dir.to_owned();
    std::thread::Builder::new()
        .name("tessera-sessions".into())
        .spawn(move || write_sessions(&dir, known, &rx))?;
    let _ = DISK.set(tx);
    Ok(found)
}

/// The session writer: each session is written to a temporary file, synced and renamed over
/// the old one, so that a crash leaves either version whole.
fn write_sessions(dir: &Path, mut known: HashSet<String>, rx: &mpsc::Receiver<DiskOp>) {
    let sync_dir = || std::fs::File::open(dir).and_then(|d| d.sync_all());
    for op in rx {
        let done = match op {
            DiskOp::Save(saved) => {
                let path = file_of(dir, &saved.owner.client_id);
                let tmp = path.with_extension("tmp");
                let written = rmp_serde::to_vec(&saved)
                    .map_err(std::io::Error::other)
                    .and_then(|bytes| {
                        let mut f = std::fs::File::create(&tmp)?;
                        f.write_all(&bytes)?;
                        f.sync_data()?;
                        std::fs::rename(&tmp, &path)?;
                        sync_dir()
                    });
                known.insert(saved.owner.client_id);
                written
            }
            DiskOp::Forget(client_id) => {
                if known.remove(&client_id) {
                    std::fs::remove_file(file_of(dir, &client_id)).and_then(|()| sync_dir())
                } else {
                    Ok(())
                }
            }
            DiskOp::Flush(done) => {
                let _ = done.send(());
                Ok(())
            }
        };
        if let Err(e) = done {
            tracing::error!("mqtt: writing a session to {}: {e}", dir.display());
        }
    }
}

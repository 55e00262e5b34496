//! MQTT client ids across the process: one live connection per client id (a new CONNECT takes
//! the id over and the old connection is closed), and persistent sessions (clean session 0, or
//! MQTT 5 clean start 0 with a session expiry) that outlive their connection: their
//! subscriptions stay registered, QoS 1 changes are queued while the client is away (after the
//! deliveries it never acknowledged, which go again), and the next connection with the id gets
//! both back (HARPER.md section 9). Sessions live in memory.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use futures::channel::oneshot;
use tessera_protocol::mqtt::QoS;

use crate::realtime::Delivery;

/// Changes queued for an absent client before older ones are dropped.
pub const PARKED_QUEUE: usize = 10_000;

/// A delivery for a session; [`Again`] when it was sent before and never completed.
pub type Queued = (Option<Again>, Delivery);

/// A delivery that goes again with the packet id it was first sent with (MQTT 3.1.1 and 5,
/// 4.4): its PUBLISH with DUP set or, for a QoS 2 one the client has received (it answered
/// PUBREC), only the PUBREL.
#[derive(Clone, Copy, Debug)]
pub struct Again {
    pub id: u16,
    pub received: bool,
}

/// What a resumed session gets back: its filters and the changes queued while it was away.
pub struct Resumed {
    pub filters: Vec<(String, QoS)>,
    pub queued: VecDeque<Queued>,
}

/// A session whose connection has ended: its parker holds the subscriptions and the queue.
struct Parked {
    filters: Vec<(String, QoS)>,
    /// Asks the parker to stop and hand over what it queued.
    take: oneshot::Sender<oneshot::Sender<VecDeque<Queued>>>,
}

#[derive(Default)]
struct Entry {
    /// The live connection, and its takeover signal (taken once sent).
    live: Option<(u64, Option<oneshot::Sender<()>>)>,
    parked: Option<Parked>,
}

static SESSIONS: Mutex<Option<HashMap<String, Entry>>> = Mutex::new(None);

fn with<R>(f: impl FnOnce(&mut HashMap<String, Entry>) -> R) -> R {
    let mut guard = SESSIONS.lock().unwrap_or_else(|e| e.into_inner());
    f(guard.get_or_insert_with(HashMap::new))
}

/// How long a new connection waits for the one it takes over to end.
const TAKEOVER_WAIT: Duration = Duration::from_secs(2);

/// Claims `client_id` for connection `conn`: a live connection with the id is told to go, and
/// this waits until it has (parking or releasing its session). Returns the signal this
/// connection is taken over by, and the parked session when `resume` asks for it (otherwise a
/// parked session is discarded).
pub async fn claim(
    client_id: &str,
    conn: u64,
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
                Err(_) => VecDeque::new(),
            };
            resume.then_some(Resumed {
                filters: p.filters,
                queued,
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

/// The connection `conn` has ended and its session stays: `filters` remain subscribed, and the
/// returned receiver is where whoever resumes the session asks for the queue.
pub fn park(
    client_id: &str,
    conn: u64,
    filters: Vec<(String, QoS)>,
) -> oneshot::Receiver<oneshot::Sender<VecDeque<Queued>>> {
    let (take, asked) = oneshot::channel();
    with(|m| {
        let e = m.entry(client_id.to_owned()).or_default();
        if e.live.as_ref().is_some_and(|(c, _)| *c == conn) {
            e.live = None;
        }
        e.parked = Some(Parked { filters, take });
    });
    asked
}

/// Forgets a parked session whose expiry has passed (if it is still the one parked).
pub fn expire(client_id: &str) {
    with(|m| {
        if let Some(e) = m.get_mut(client_id) {
            e.parked = None;
            if e.live.is_none() {
                m.remove(client_id);
            }
        }
    });
}

/// A queue of deliveries bounded at [`PARKED_QUEUE`] (oldest dropped first).
pub fn push_bounded(q: &mut VecDeque<Queued>, d: Queued) {
    if q.len() == PARKED_QUEUE {
        q.pop_front();
    }
    q.push_back(d);
}

//! A kept session's backlog: the QoS 1 and 2 deliveries it is owed, in order, none ever dropped.
//! The first [`IN_MEMORY`] are held in memory; past them, deliveries are appended to a file of
//! the session's own under `<root>/mqtt-sessions/backlog/` and read back a chunk at a time as
//! the head drains, so a client that stays away (or stops reading) while a million messages
//! arrive costs disk, not memory. The file's reads and writes run on glommio's blocking pool,
//! never on an executor thread.
//!
//! A backlog lives for its session in this process: its file is unlinked as soon as it is
//! created and used through its descriptor, so it goes when the backlog does, or with the
//! process (a session kept across a restart gets back the deliveries saved with it and the
//! changes in the audit logs).

use std::collections::VecDeque;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use tessera_protocol::mqtt::QoS;
use tessera_storage::shard::Change;

use super::{guarantee_of, qos_of};
use crate::realtime::{Broadcast, Delivery};

/// Deliveries a backlog holds in memory; the rest wait on disk.
pub const IN_MEMORY: usize = 10_000;
/// Bytes written to, or read from, a backlog's file at a time.
const CHUNK: usize = 1 << 20;

/// Where backlog files go (set at start-up).
static DIR: OnceLock<PathBuf> = OnceLock::new();
static NEXT_FILE: AtomicU64 = AtomicU64::new(0);

/// Makes `dir` the directory of backlog files, removing any an earlier process left.
pub fn open(dir: &Path) -> std::io::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    let _ = DIR.set(dir.to_owned());
    Ok(())
}

/// A delivery a session is owed; with a [`Redelivery`] when it was sent before and never
/// completed.
#[derive(Clone)]
pub struct Pending {
    pub redelivery: Option<Redelivery>,
    pub delivery: Delivery,
}

impl Pending {
    /// A delivery never sent before.
    pub fn new(delivery: Delivery) -> Pending {
        Pending {
            redelivery: None,
            delivery,
        }
    }
}

/// A delivery that goes again with the packet id it was first sent with (MQTT 3.1.1 and 5,
/// 4.4): its PUBLISH with DUP set or, for a QoS 2 one the client has received (it answered
/// PUBREC), only the PUBREL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Redelivery {
    pub id: u16,
    pub received: bool,
}

/// The deliveries a session is owed, oldest first.
#[derive(Default)]
pub struct Backlog {
    head: VecDeque<Pending>,
    spill: Option<Spill>,
}

/// The part of a backlog past its head: in its file, then in `buffer` (not written yet).
struct Spill {
    path: PathBuf,
    file: Arc<std::fs::File>,
    buffer: Vec<u8>,
    /// Bytes in the file, and how many of them were read back.
    written: u64,
    read: u64,
    /// Deliveries in the file (unread) and the buffer.
    count: usize,
}

impl From<VecDeque<Pending>> for Backlog {
    fn from(head: VecDeque<Pending>) -> Backlog {
        Backlog { head, spill: None }
    }
}

impl Backlog {
    pub fn len(&self) -> usize {
        self.head.len() + self.spill.as_ref().map_or(0, |s| s.count)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether some of it waits on disk.
    pub fn spilled(&self) -> bool {
        self.spill.is_some()
    }

    /// The deliveries held in memory, first in order (those that go again are among them).
    pub fn head(&self) -> &VecDeque<Pending> {
        &self.head
    }

    /// Puts a delivery back in front (one that was being sent when the session parked).
    pub fn push_front(&mut self, p: Pending) {
        self.head.push_front(p);
    }

    /// Adds a delivery at the end: in memory while the head has room and nothing waits on
    /// disk, else to the spill's buffer ([`Backlog::settle`] writes it out).
    pub fn push_back(&mut self, p: Pending) {
        if self.spill.is_none() && self.head.len() < IN_MEMORY {
            self.head.push_back(p);
            return;
        }
        let spill = match &mut self.spill {
            Some(s) => s,
            None => match Spill::create() {
                Ok(s) => self.spill.insert(s),
                Err(e) => {
                    // Kept in memory rather than lost.
                    tracing::error!("mqtt: cannot spill a session's backlog to disk: {e}");
                    self.head.push_back(p);
                    return;
                }
            },
        };
        encode(&p, &mut spill.buffer);
        spill.count += 1;
    }

    /// Writes the spill's buffer out once it holds a chunk.
    pub async fn settle(&mut self) {
        if let Some(s) = &mut self.spill
            && s.buffer.len() >= CHUNK
        {
            s.write_out().await;
        }
    }

    /// The next delivery, reading the next chunk from disk when the head is empty.
    pub async fn pop_front(&mut self) -> Option<Pending> {
        if self.head.is_empty() {
            self.refill().await;
        }
        self.head.pop_front()
    }

    async fn refill(&mut self) {
        let Some(s) = &mut self.spill else {
            return;
        };
        if s.read == s.written {
            // Nothing unread on disk: the buffer not written out yet.
            let buffer = std::mem::take(&mut s.buffer);
            decode_all(&buffer, &mut self.head);
            self.spill = None;
            return;
        }
        let len = CHUNK.min((s.written - s.read) as usize);
        let mut read = s.read_at(s.read, len).await;
        // A delivery larger than a chunk: read it whole.
        if let Ok(chunk) = &read
            && let Some(need) = whole_length(chunk)
        {
            read = s.read_at(s.read, need).await;
        }
        match read {
            Ok(chunk) => {
                let (used, records) = decode_all(&chunk, &mut self.head);
                s.read += used as u64;
                s.count -= records;
                if s.count == 0 {
                    self.spill = None;
                }
            }
            Err(e) => {
                tracing::error!(
                    "mqtt: reading a session's backlog from {}: {e}; {} deliveries lost",
                    s.path.display(),
                    s.count
                );
                self.spill = None;
            }
        }
    }
}

/// The length of the first delivery of `chunk` (with its length prefix) when the chunk does not
/// hold it whole.
fn whole_length(chunk: &[u8]) -> Option<usize> {
    let len = u32::from_le_bytes(chunk.get(..4)?.try_into().ok()?) as usize;
    (chunk.len() < 4 + len).then_some(4 + len)
}

impl Spill {
    fn create() -> std::io::Result<Spill> {
        let dir = DIR
            .get()
            .ok_or_else(|| std::io::Error::other("no backlog directory"))?;
        let n = NEXT_FILE.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{n}.backlog"));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        // Used through its descriptor only: unlinked now, it goes when the backlog does, or
        // with the process.
        std::fs::remove_file(&path)?;
        Ok(Spill {
            path,
            file: Arc::new(file),
            buffer: Vec::new(),
            written: 0,
            read: 0,
            count: 0,
        })
    }

    /// `len` bytes of the file from `at`, read on the blocking pool.
    async fn read_at(&self, at: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let file = self.file.clone();
        glommio::executor()
            .spawn_blocking(move || {
                let mut buf = vec![0; len];
                file.read_exact_at(&mut buf, at).map(|()| buf)
            })
            .await
    }

    async fn write_out(&mut self) {
        let (file, at) = (self.file.clone(), self.written);
        let buffer = std::mem::take(&mut self.buffer);
        let len = buffer.len();
        let written = glommio::executor()
            .spawn_blocking(move || file.write_all_at(&buffer, at).map(|()| buffer))
            .await;
        match written {
            Ok(mut buffer) => {
                self.written += len as u64;
                buffer.clear();
                self.buffer = buffer;
            }
            Err(e) => tracing::error!(
                "mqtt: writing a session's backlog to {}: {e}",
                self.path.display()
            ),
        }
    }
}

/// `len (u32 LE) ++ again flag ++ id (u16 LE) ++ received ++ qos ++ options ++ change`.
fn encode(p: &Pending, out: &mut Vec<u8>) {
    let change = p.delivery.change.change().encode();
    out.extend_from_slice(&(6 + change.len() as u32).to_le_bytes());
    let (again, id, received) = match p.redelivery {
        Some(r) => (1, r.id, r.received),
        None => (0, 0, false),
    };
    out.push(again);
    out.extend_from_slice(&id.to_le_bytes());
    out.push(u8::from(received));
    out.push(qos_of(p.delivery.guarantee) as u8);
    out.push(p.delivery.options);
    out.extend_from_slice(&change);
}

/// Decodes the whole deliveries at the start of `bytes` onto `into`; returns the bytes and the
/// deliveries used (one that does not decode is left out).
fn decode_all(bytes: &[u8], into: &mut VecDeque<Pending>) -> (usize, usize) {
    let (mut at, mut records) = (0, 0);
    while let Some(len) = bytes.get(at..at + 4) {
        let len = u32::from_le_bytes(len.try_into().unwrap_or_default()) as usize;
        let Some(record) = bytes.get(at + 4..at + 4 + len) else {
            break;
        };
        if let Some(p) = decode(record) {
            into.push_back(p);
        }
        at += 4 + len;
        records += 1;
    }
    (at, records)
}

fn decode(r: &[u8]) -> Option<Pending> {
    let id = u16::from_le_bytes([*r.get(1)?, *r.get(2)?]);
    let redelivery = (*r.first()? == 1).then_some(Redelivery {
        id,
        received: *r.get(3)? == 1,
    });
    let qos = QoS::from_bits(*r.get(4)?).ok()?;
    let change = Change::decode(r.get(6..)?)?;
    Some(Pending {
        redelivery,
        delivery: Delivery {
            change: Broadcast::new(change),
            guarantee: guarantee_of(qos),
            options: *r.get(5)?,
            share: 0,
        },
    })
}

//! Where a shard's publishing stands in its audit log, kept on disk: written before every batch
//! goes out (so that after a crash the same batch goes again, under the same message ids) and
//! after JetStream stored it.
//!
//! The file holds two slots, at 0 and at 4096 (their own pages), each `seq ++ done ++ sending ++
//! check` (u64 BE each; `u64::MAX` for none); a write goes in place to the slot after the last
//! one, so a write torn by a crash leaves the other slot whole, and reading takes the valid slot
//! with the higher `seq`. A write is a `pwrite` of 32 bytes: no new file, no rename, no fsync
//! (creating, syncing and renaming a file per batch was a fifth of a publishing node's CPU).
//! A `kill -9` keeps what was written (the page cache has it); a power loss may take the cursor
//! back, and the node then publishes again what it had published, under other ids: receivers drop
//! those changes (full writes by version, partial writes by each record's history). Before the
//! slots the file was `done ++ sending` alone, which is still read.

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

const SLOT: u64 = 4096;
const MAGIC: u64 = 0x7465_7373_6572_6163;

/// Where publishing stands: the last entry JetStream stored, the last of the batch being sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Position {
    pub done: Option<u64>,
    pub sending: Option<u64>,
}

/// A shard's cursor file, open.
pub(super) struct CursorFile {
    file: File,
    /// The sequence of the last slot written.
    seq: u64,
}

fn check(seq: u64, done: u64, sending: u64) -> u64 {
    seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ done.rotate_left(17) ^ sending.rotate_left(41) ^ MAGIC
}

fn some(n: u64) -> Option<u64> {
    (n != u64::MAX).then_some(n)
}

/// The slot at `at` of `b`: its sequence and position, if it is whole.
fn slot(b: &[u8], at: usize) -> Option<(u64, Position)> {
    let word = |i: usize| {
        Some(u64::from_be_bytes(
            b.get(at + i * 8..at + i * 8 + 8)?.try_into().ok()?,
        ))
    };
    let (seq, done, sending, sum) = (word(0)?, word(1)?, word(2)?, word(3)?);
    (sum == check(seq, done, sending)).then_some((
        seq,
        Position {
            done: some(done),
            sending: some(sending),
        },
    ))
}

impl CursorFile {
    /// Opens (or makes) the file at `path` and reads where publishing stood.
    pub fn open(path: &Path) -> std::io::Result<(CursorFile, Position)> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        let b = std::fs::read(path)?;
        let (seq, position) = match [slot(&b, 0), slot(&b, SLOT as usize)] {
            [Some(a), Some(b)] => {
                if a.0 >= b.0 {
                    a
                } else {
                    b
                }
            }
            [Some(s), None] | [None, Some(s)] => s,
            // As it was kept before the slots: `done ++ sending`.
            [None, None] if b.len() == 8 || b.len() == 16 => {
                let word = |at: usize| {
                    b.get(at..at + 8)
                        .map(|w| u64::from_be_bytes(w.try_into().unwrap()))
                };
                let done = word(0).and_then(some);
                let sending = word(8).map_or(done, some);
                (0, Position { done, sending })
            }
            [None, None] => (0, Position::default()),
        };
        Ok((CursorFile { file, seq }, position))
    }

    /// Writes `position` to the next slot.
    pub fn keep(&mut self, position: Position) -> std::io::Result<()> {
        self.seq += 1;
        let (done, sending) = (
            position.done.unwrap_or(u64::MAX),
            position.sending.unwrap_or(u64::MAX),
        );
        let mut b = [0u8; 32];
        for (i, w) in [self.seq, done, sending, check(self.seq, done, sending)]
            .into_iter()
            .enumerate()
        {
            b[i * 8..i * 8 + 8].copy_from_slice(&w.to_be_bytes());
        }
        self.file.write_all_at(&b, (self.seq % 2) * SLOT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_whole_slot_is_read_back_and_the_old_file_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shard-0.cursor");
        let (mut f, p) = CursorFile::open(&path).unwrap();
        assert_eq!(p, Position::default());
        let at = |done, sending| Position {
            done: Some(done),
            sending: Some(sending),
        };
        f.keep(at(1, 5)).unwrap();
        f.keep(at(5, 9)).unwrap();
        drop(f);
        let (mut f, p) = CursorFile::open(&path).unwrap();
        assert_eq!(p, at(5, 9));
        f.keep(at(9, 12)).unwrap();
        // A torn write of the newest slot: the one before it is read.
        let newest = (f.seq % 2) * SLOT;
        f.file.write_all_at(&[0xff; 8], newest + 8).unwrap();
        assert_eq!(CursorFile::open(&path).unwrap().1, at(5, 9));
        // The file as it was kept before: `done ++ sending`.
        let old = dir.path().join("old.cursor");
        std::fs::write(&old, [7u64.to_be_bytes(), 8u64.to_be_bytes()].concat()).unwrap();
        assert_eq!(CursorFile::open(&old).unwrap().1, at(7, 8));
        std::fs::write(&old, u64::MAX.to_be_bytes()).unwrap();
        assert_eq!(CursorFile::open(&old).unwrap().1, Position::default());
    }
}

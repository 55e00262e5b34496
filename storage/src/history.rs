//! What a replicating shard keeps of each record beside it (the `tombstones` keyspace): the
//! version and node of the record's last full write (a put or a delete) and the partial writes
//! (patches and `addTo`s) made since, with what each changed. Harper's rules for a change that
//! arrives late need both:
//!
//! - a full write or patch older than the last full write here is dropped (a newer write
//!   overtook it);
//! - one older only than some partial writes is applied, and those newer partial writes are
//!   applied again on top of it, in version order ([`History::rebuild`]);
//! - a partial write already in the list is a duplicate, and is dropped: an `addTo` delivered
//!   twice (a redelivery, or a batch published again after a crash) is not counted twice.
//!
//! The list is bounded ([`KEPT_PARTIALS`]): past it the oldest go and [`History::floor`] says
//! how far back the list is complete. A full write or patch older than the floor cannot be
//! rebuilt under what came after it, and is dropped; an `addTo` older than it is added (an
//! increment is never lost; only a duplicate of one that old could count twice).

use crate::Value;
use crate::value;

/// Partial writes kept per record.
pub const KEPT_PARTIALS: usize = 32;

/// The first byte of a history as stored (a history kept before partial writes were, a version
/// and a node name, starts with the version's top byte: 0).
const TAG: u8 = 1;

/// What a partial write changed.
#[derive(Debug, Clone, PartialEq)]
pub enum Delta {
    /// These top-level properties were set (a patch).
    Set(Vec<(String, Value)>),
    /// Each number was added to its property (an `addTo`).
    Add(Vec<(String, Value)>),
}

/// A [`Delta`] borrowed from the write that made it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DeltaRef<'a> {
    Set(&'a [(String, Value)]),
    Add(&'a [(String, Value)]),
}

impl Delta {
    pub fn as_ref(&self) -> DeltaRef<'_> {
        match self {
            Delta::Set(p) => DeltaRef::Set(p),
            Delta::Add(p) => DeltaRef::Add(p),
        }
    }
}

impl DeltaRef<'_> {
    pub fn to_owned(self) -> Delta {
        match self {
            DeltaRef::Set(p) => Delta::Set(p.to_vec()),
            DeltaRef::Add(p) => Delta::Add(p.to_vec()),
        }
    }

    fn pairs(&self) -> &[(String, Value)] {
        match self {
            DeltaRef::Set(p) | DeltaRef::Add(p) => p,
        }
    }

    /// `record` (or an empty one) with this change made to it.
    pub fn apply(self, record: Option<Value>) -> Value {
        self.apply_to(record, |_| true)
    }

    /// `record` with this change made to the properties `touches` names (all of a set).
    fn apply_to(self, record: Option<Value>, touches: impl Fn(&str) -> bool) -> Value {
        let mut v = record.unwrap_or_else(|| Value::Object(Vec::new()));
        match self {
            DeltaRef::Set(props) => v.merge(props.to_vec()),
            DeltaRef::Add(deltas) => {
                for (k, delta) in deltas.iter().filter(|(k, _)| touches(k)) {
                    let sum = value::add_numbers(v.get(k), delta);
                    v.set(k, sum);
                }
            }
        }
        v
    }

    /// `kind (u8: 1 add, 2 set) ++ MessagePack map` appended to `out`.
    pub fn encode(self, out: &mut Vec<u8>) {
        out.push(match self {
            DeltaRef::Add(_) => 1,
            DeltaRef::Set(_) => 2,
        });
        Value::write_msgpack_map(self.pairs(), out);
    }
}

/// [`DeltaRef::encode`] undone.
pub fn decode_delta(b: &[u8]) -> Option<Delta> {
    let (kind, map) = b.split_first()?;
    let pairs = match value::from_msgpack(map).ok()? {
        Value::Object(pairs) => pairs,
        _ => return None,
    };
    match kind {
        1 => Some(Delta::Add(pairs)),
        2 => Some(Delta::Set(pairs)),
        _ => None,
    }
}

/// A partial write since the record's last full write.
#[derive(Debug, Clone, PartialEq)]
pub struct Partial {
    pub version: u64,
    /// The node that made it (`None`: this one).
    pub node: Option<Box<str>>,
    pub delta: Delta,
}

/// What is kept of a record for replication's rules.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// The version of its last full write and the node that made it (`None`: this one);
    /// `None` when the record was never written here.
    pub full: Option<(u64, Option<Box<str>>)>,
    /// The partial writes since, oldest first.
    pub partials: Vec<Partial>,
    /// The version of the newest partial write left out of [`Self::partials`] (0: none was).
    pub floor: u64,
}

/// What to do with a change from another node, by [`History::judge`].
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// A newer write overtook it, or it was applied before.
    Drop,
    /// Apply it, then apply again the partial writes newer than it.
    Apply,
}

impl History {
    /// The history of a record whose last full write is the one at `version`.
    pub fn of_full_write(version: u64, node: Option<Box<str>>) -> History {
        History {
            full: Some((version, node)),
            ..History::default()
        }
    }

    /// What to do with a change from `node` at `version` (`delta`: a partial write; `None`: a
    /// full one). `wins_tie`: whether a full write at the same version as the last one here
    /// wins it (Harper's rule: the greater node name).
    pub fn judge(
        &self,
        version: u64,
        node: &str,
        delta: Option<DeltaRef<'_>>,
        wins_tie: impl FnOnce(Option<&str>) -> bool,
    ) -> Verdict {
        if let Some((full, by)) = &self.full {
            let overtaken = *full > version || (*full == version && !wins_tie(by.as_deref()));
            if overtaken {
                return Verdict::Drop;
            }
        }
        if self
            .partials
            .iter()
            .any(|p| p.version == version && p.node.as_deref() == Some(node))
        {
            return Verdict::Drop;
        }
        // Older than what the list still holds: an increment is added all the same; anything
        // else would need partial writes no longer kept to be applied again.
        if version < self.floor && !matches!(delta, Some(DeltaRef::Add(_))) {
            return Verdict::Drop;
        }
        Verdict::Apply
    }

    /// Whether partial writes newer than `version` are kept.
    pub fn has_newer(&self, version: u64) -> bool {
        self.partials.last().is_some_and(|p| p.version > version)
    }

    /// The record after a change at `version` is applied under the partial writes newer than
    /// it: `base` is the record with the change made (for a full write, the record it wrote);
    /// `reset` names what the change set (`None`: everything, a full write). An `addTo` newer
    /// than the change is added again only to what was set since; to the rest it already is.
    pub fn rebuild(&self, version: u64, base: Option<Value>, reset: Option<Vec<String>>) -> Value {
        let mut reset = reset;
        let mut v = base;
        for p in self.partials.iter().filter(|p| p.version > version) {
            let d = p.delta.as_ref();
            v = Some(match (&mut reset, d) {
                (None, _) => d.apply(v),
                (Some(names), DeltaRef::Set(props)) => {
                    names.extend(props.iter().map(|(k, _)| k.clone()));
                    d.apply(v)
                }
                (Some(names), DeltaRef::Add(_)) => d.apply_to(v, |k| names.iter().any(|n| n == k)),
            });
        }
        v.unwrap_or_else(|| Value::Object(Vec::new()))
    }

    /// The newest version among the partial writes kept.
    pub fn newest(&self) -> Option<u64> {
        self.partials.last().map(|p| p.version)
    }

    /// After a full write at `version` by `node`: it is the last full write, and only the
    /// partial writes newer than it are kept.
    pub fn full_write(&mut self, version: u64, node: Option<Box<str>>) {
        self.full = Some((version, node));
        self.partials.retain(|p| p.version > version);
    }

    /// Adds a partial write, in version order, leaving out the oldest past [`KEPT_PARTIALS`].
    pub fn add(&mut self, partial: Partial) {
        let at = self
            .partials
            .partition_point(|p| p.version <= partial.version);
        self.partials.insert(at, partial);
        if self.partials.len() > KEPT_PARTIALS {
            let gone = self.partials.remove(0);
            self.floor = self.floor.max(gone.version);
        }
    }

    /// `TAG ++ full version (u64 BE, 0: none) ++ node ++ floor (u64 BE) ++ partials`, a node a
    /// u16 BE length and its name, a partial `version ++ node ++ u32 BE length ++ delta`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32);
        out.push(TAG);
        let (full, node) = match &self.full {
            Some((v, n)) => (*v, n.as_deref()),
            None => (0, None),
        };
        out.extend_from_slice(&full.to_be_bytes());
        put_node(node, &mut out);
        out.extend_from_slice(&self.floor.to_be_bytes());
        for p in &self.partials {
            out.extend_from_slice(&p.version.to_be_bytes());
            put_node(p.node.as_deref(), &mut out);
            let at = out.len();
            out.extend_from_slice(&[0; 4]);
            p.delta.as_ref().encode(&mut out);
            let len = (out.len() - at - 4) as u32;
            out[at..at + 4].copy_from_slice(&len.to_be_bytes());
        }
        out
    }

    /// [`Self::encode`] undone; also reads what was kept before (a version and a node name).
    pub fn decode(b: &[u8]) -> Option<History> {
        if b.first() != Some(&TAG) {
            let version = u64::from_be_bytes(b.get(..8)?.try_into().ok()?);
            let node = std::str::from_utf8(&b[8..]).ok().filter(|n| !n.is_empty());
            return Some(History::of_full_write(version, node.map(Into::into)));
        }
        let mut r = Reader(&b[1..]);
        let full = r.u64()?;
        let node = r.node()?;
        let floor = r.u64()?;
        let mut partials = Vec::new();
        while !r.0.is_empty() {
            let version = r.u64()?;
            let node = r.node()?;
            let n = u32::from_be_bytes(r.take(4)?.try_into().ok()?) as usize;
            partials.push(Partial {
                version,
                node,
                delta: decode_delta(r.take(n)?)?,
            });
        }
        Some(History {
            full: (full != 0).then_some((full, node)),
            partials,
            floor,
        })
    }
}

fn put_node(node: Option<&str>, out: &mut Vec<u8>) {
    let name = node.unwrap_or_default().as_bytes();
    out.extend_from_slice(&(name.len() as u16).to_be_bytes());
    out.extend_from_slice(name);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let b = self.0.get(..n)?;
        self.0 = &self.0[n..];
        Some(b)
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }

    fn node(&mut self) -> Option<Option<Box<str>>> {
        let n = u16::from_be_bytes(self.take(2)?.try_into().ok()?) as usize;
        let name = std::str::from_utf8(self.take(n)?).ok()?;
        Some((!name.is_empty()).then(|| name.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ints(pairs: &[(&str, i64)]) -> Vec<(String, Value)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Value::Int(*v)))
            .collect()
    }

    fn set(pairs: &[(&str, i64)]) -> Delta {
        Delta::Set(ints(pairs))
    }

    fn add(pairs: &[(&str, i64)]) -> Delta {
        Delta::Add(ints(pairs))
    }

    fn partial(version: u64, node: &str, delta: Delta) -> Partial {
        Partial {
            version,
            node: Some(node.into()),
            delta,
        }
    }

    fn get(v: &Value, k: &str) -> Option<i64> {
        match v.get(k) {
            Some(Value::Int(n)) => Some(*n),
            _ => None,
        }
    }

    #[test]
    fn a_late_full_write_is_applied_under_the_newer_partial_writes() {
        let mut h = History::of_full_write(10, None);
        h.add(partial(30, "b", set(&[("a", 3)])));
        h.add(partial(20, "c", add(&[("n", 5)])));
        assert_eq!(h.partials[0].version, 20, "kept in version order");
        // A put at 15: newer than the last full write, older than both partial writes.
        assert_eq!(h.judge(15, "d", None, |_| false), Verdict::Apply);
        let put = Value::Object(vec![
            ("a".into(), Value::Int(1)),
            ("b".into(), Value::Int(1)),
            ("n".into(), Value::Int(100)),
        ]);
        let v = h.rebuild(15, Some(put), None);
        assert_eq!(
            (get(&v, "a"), get(&v, "b"), get(&v, "n")),
            (Some(3), Some(1), Some(105))
        );
        // Older than the last full write: dropped; so is a tie the other node wins.
        assert_eq!(h.judge(5, "d", None, |_| true), Verdict::Drop);
        assert_eq!(h.judge(10, "d", None, |_| false), Verdict::Drop);
        assert_eq!(h.judge(10, "d", None, |_| true), Verdict::Apply);
    }

    #[test]
    fn a_late_patch_sets_only_what_newer_writes_did_not_and_increments_add_up_once() {
        let mut h = History::of_full_write(10, None);
        h.add(partial(30, "b", set(&[("a", 3)])));
        h.add(partial(40, "b", add(&[("n", 1), ("a", 10)])));
        // The record as it is: a patched at 30 then 10 added at 40; n 100 + 1.
        let now = Value::Object(vec![
            ("a".into(), Value::Int(13)),
            ("n".into(), Value::Int(101)),
        ]);
        // A patch at 20 setting a and n: a comes out as the newer patch and add made it, n is
        // the late patch's value plus the newer add.
        let late = set(&[("a", 7), ("n", 50)]);
        let base = late.as_ref().apply(Some(now.clone()));
        let v = h.rebuild(20, Some(base), Some(vec!["a".into(), "n".into()]));
        assert_eq!((get(&v, "a"), get(&v, "n")), (Some(13), Some(51)));
        // A late increment is added once; the same one again is a duplicate.
        h.add(partial(25, "c", add(&[("n", 2)])));
        assert_eq!(
            h.judge(25, "c", Some(add(&[("n", 2)]).as_ref()), |_| false),
            Verdict::Drop
        );
        assert_eq!(
            h.judge(25, "d", Some(add(&[("n", 2)]).as_ref()), |_| false),
            Verdict::Apply
        );
        let v = h.rebuild(
            25,
            Some(add(&[("n", 2)]).as_ref().apply(Some(now))),
            Some(vec![]),
        );
        assert_eq!(get(&v, "n"), Some(103), "an older add is not applied again");
    }

    #[test]
    fn the_list_is_bounded_and_says_how_far_back_it_is_complete() {
        let mut h = History::of_full_write(1, Some("a".into()));
        for v in 0..(KEPT_PARTIALS as u64 + 5) {
            h.add(partial(100 + v, "b", add(&[("n", 1)])));
        }
        assert_eq!(h.partials.len(), KEPT_PARTIALS);
        assert_eq!(h.floor, 104);
        // Below the floor: a patch or put is dropped, an increment is added.
        assert_eq!(
            h.judge(50, "c", Some(set(&[("a", 1)]).as_ref()), |_| false),
            Verdict::Drop
        );
        assert_eq!(h.judge(50, "c", None, |_| false), Verdict::Drop);
        assert_eq!(
            h.judge(50, "c", Some(add(&[("n", 1)]).as_ref()), |_| false),
            Verdict::Apply
        );
        // Stored and read back; a full write keeps only the newer partial writes.
        let back = History::decode(&h.encode()).unwrap();
        assert_eq!(back, h);
        h.full_write(120, None);
        // Kept: 121 to 136.
        assert_eq!(h.partials.len(), 16);
        assert!(h.partials.iter().all(|p| p.version > 120));
        // What was kept before partial writes were: a version and a node name.
        let old = [&7u64.to_be_bytes()[..], b"node-b"].concat();
        assert_eq!(
            History::decode(&old),
            Some(History::of_full_write(7, Some("node-b".into())))
        );
        assert_eq!(
            History::decode(&7u64.to_be_bytes()).unwrap().full,
            Some((7, None))
        );
    }
}

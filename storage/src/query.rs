//! Typed queries over one shard: predicates evaluated on stored records, the index range a
//! condition allows, and the shard-side walk that yields matching rows in batches.
//!
//! Values compare through their key encoding ([`crate::key`]), so a predicate, an index walk and a
//! sort all agree on one order: `null < false < true < numbers < dates < strings`, numbers
//! numerically. Ordering comparisons (`>`, `<`, ...) only hold between values of one kind.

use std::cmp::Ordering;
use std::sync::Arc;

use fjall::Slice;

use crate::computed::Expr;
use crate::key;
use crate::record::RecordRef;
use crate::schema::Table;
use crate::shard::{StoreError, View, table_prefix};
use crate::value::{self, Value};

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    StartsWith,
    Contains,
    EndsWith,
    /// Equals one of the values of an array (a join through a relationship).
    In,
}

/// `attribute op value`, with the value already converted to the attribute's type.
#[derive(Debug, Clone)]
pub struct Cmp {
    pub attr: String,
    pub op: CmpOp,
    pub value: Value,
    /// The key encoding of `value` (empty when it has none, e.g. an object).
    key: Vec<u8>,
    /// `In`: the sorted key encodings of the values.
    keys: Vec<Vec<u8>>,
}

impl Cmp {
    pub fn new(attr: String, op: CmpOp, value: Value) -> Cmp {
        let key = key::to_key(&value).unwrap_or_default();
        let mut keys: Vec<Vec<u8>> = match (&value, op) {
            (Value::Array(items), CmpOp::In) => {
                items.iter().filter_map(|v| key::to_key(v).ok()).collect()
            }
            _ => Vec::new(),
        };
        keys.sort_unstable();
        keys.dedup();
        Cmp {
            attr,
            op,
            value,
            key,
            keys,
        }
    }

    /// Whether a record whose attribute is `v` (`None`: missing) satisfies the comparison. An
    /// array satisfies it when one of its elements does (`Ne`: when none equals the value).
    pub fn matches(&self, v: Option<&Value>) -> bool {
        match v {
            Some(Value::Array(items))
                if self.op == CmpOp::In || !matches!(self.value, Value::Array(_)) =>
            {
                if self.op == CmpOp::Ne {
                    !items.iter().any(|x| self.equals(x))
                } else {
                    items.iter().any(|x| self.matches_one(Some(x)))
                }
            }
            _ => self.matches_one(v),
        }
    }

    fn equals(&self, v: &Value) -> bool {
        match key::to_key(v) {
            Ok(k) if !self.key.is_empty() => k == self.key,
            _ => *v == self.value,
        }
    }

    fn matches_one(&self, v: Option<&Value>) -> bool {
        let text = |v| strings(v, &self.value);
        match self.op {
            CmpOp::Eq => v.is_some_and(|v| self.equals(v)),
            CmpOp::In => v
                .and_then(|v| key::to_key(v).ok())
                .is_some_and(|k| self.keys.binary_search(&k).is_ok()),
            CmpOp::Ne => match v {
                None | Some(Value::Null) => self.value != Value::Null,
                Some(v) => !self.equals(v),
            },
            CmpOp::StartsWith => text(v).is_some_and(|(s, p)| s.starts_with(p)),
            CmpOp::Contains => text(v).is_some_and(|(s, p)| s.contains(p)),
            CmpOp::EndsWith => text(v).is_some_and(|(s, p)| s.ends_with(p)),
            CmpOp::Gt | CmpOp::Ge | CmpOp::Lt | CmpOp::Le => {
                let Some(Ok(k)) = v.map(key::to_key) else {
                    return false;
                };
                if self.key.is_empty() || self.value == Value::Null || kind(&k) != kind(&self.key) {
                    return false;
                }
                let ord = k.cmp(&self.key);
                match self.op {
                    CmpOp::Gt => ord == Ordering::Greater,
                    CmpOp::Ge => ord != Ordering::Less,
                    CmpOp::Lt => ord == Ordering::Less,
                    _ => ord != Ordering::Greater,
                }
            }
        }
    }

    /// The keys `[lo, hi)` of an index whose entries start with `index_prefix` that can hold
    /// matches, or `None` when this comparison cannot narrow an index walk.
    pub fn index_range(&self, index_prefix: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
        let with = |tail: &[u8]| [index_prefix, tail].concat();
        if self.op == CmpOp::In {
            // One value: an equality walk. Several: the filter decides (a scan).
            let [one] = self.keys.as_slice() else {
                return None;
            };
            let exact = with(one);
            return Some((exact.clone(), successor(exact)));
        }
        if self.key.is_empty() {
            return None;
        }
        let (lo_tag, hi_tag) = kind_range(self.key[0]);
        let exact = with(&self.key);
        let kind_start = with(&[lo_tag]);
        let kind_end = with(&[hi_tag + 1]);
        Some(match self.op {
            CmpOp::Eq => (exact.clone(), successor(exact)),
            CmpOp::Gt if self.value != Value::Null => (successor(exact), kind_end),
            CmpOp::Ge if self.value != Value::Null => (exact, kind_end),
            CmpOp::Lt if self.value != Value::Null => (kind_start, exact),
            CmpOp::Le if self.value != Value::Null => (kind_start, successor(exact)),
            CmpOp::StartsWith => {
                let Value::String(p) = &self.value else {
                    return None;
                };
                let mut open = index_prefix.to_vec();
                key::encode_str_open(p, &mut open);
                (open.clone(), successor(open))
            }
            _ => return None,
        })
    }
}

/// Both values as strings, when they are.
fn strings<'a>(v: Option<&'a Value>, operand: &'a Value) -> Option<(&'a str, &'a str)> {
    match (v, operand) {
        (Some(Value::String(s)), Value::String(p)) => Some((s, p)),
        _ => None,
    }
}

/// The kind of an encoded key (booleans are one kind).
fn kind(k: &[u8]) -> u8 {
    kind_range(k.first().copied().unwrap_or(0)).0
}

/// The first and last tag of the kind a key tag belongs to.
fn kind_range(tag: u8) -> (u8, u8) {
    match tag {
        2 | 3 => (2, 3),
        t => (t, t),
    }
}

/// The smallest byte string greater than every string that starts with `b`.
pub fn successor(mut b: Vec<u8>) -> Vec<u8> {
    while let Some(last) = b.pop() {
        if last < 0xff {
            b.push(last + 1);
            return b;
        }
    }
    vec![0xff; 16]
}

/// A tree of comparisons.
#[derive(Debug, Clone)]
pub enum Pred {
    Cmp(Cmp),
    And(Vec<Pred>),
    Or(Vec<Pred>),
}

impl Pred {
    /// The attributes the predicate reads, without duplicates.
    pub fn attributes<'a>(&'a self, out: &mut Vec<&'a str>) {
        match self {
            Pred::Cmp(c) => {
                if !out.contains(&c.attr.as_str()) {
                    out.push(&c.attr);
                }
            }
            Pred::And(ps) | Pred::Or(ps) => ps.iter().for_each(|p| p.attributes(out)),
        }
    }

    pub fn eval<'v, F: Fn(&str) -> Option<&'v Value>>(&self, get: &F) -> bool {
        match self {
            Pred::Cmp(c) => c.matches(get(&c.attr)),
            Pred::And(ps) => ps.iter().all(|p| p.eval(get)),
            Pred::Or(ps) => ps.iter().any(|p| p.eval(get)),
        }
    }
}

/// One `sort()` key.
#[derive(Debug, Clone)]
pub struct SortSpec {
    pub attr: String,
    pub descending: bool,
}

/// How a shard finds candidate records.
#[derive(Debug, Clone)]
pub enum Access {
    /// The records with keys in `[lo, hi)`, in primary-key order.
    Scan { lo: Vec<u8>, hi: Vec<u8> },
    /// The index entries in `[lo, hi)`, in index order (value, then primary key), backwards when
    /// `reverse`. `multi`: a record may have several entries in the range (array values).
    Index {
        prefix_len: usize,
        lo: Vec<u8>,
        hi: Vec<u8>,
        reverse: bool,
        multi: bool,
    },
}

/// What every shard runs for one query.
#[derive(Debug, Clone)]
pub struct ShardQuery {
    pub table: Arc<Table>,
    pub access: Access,
    /// Conditions the access path does not already guarantee.
    pub filter: Option<Pred>,
    /// Empty: rows come in walk order. Otherwise the shard sorts its matches.
    pub sort: Vec<SortSpec>,
    /// At most this many rows from each shard (offset + limit of the whole query).
    pub take: Option<usize>,
    /// Records that expired before this instant are skipped.
    pub now_ms: u64,
    /// Index walks only: return rows without reading their records (`stored` is empty). Valid
    /// only when the walk alone decides the result: no filter, no sort, no expiring records.
    pub keys_only: bool,
}

/// One matching record.
#[derive(Debug, Clone)]
pub struct Row {
    /// The walk position: the index key after its prefix, or the record key.
    pub order: Vec<u8>,
    /// The encoded sort values (empty when the query has no sort).
    pub sort: Vec<Vec<u8>>,
    /// The record key (table prefix + primary key).
    pub key: Slice,
    /// The stored record (header + MessagePack); empty for a keys-only query.
    pub stored: Slice,
}

impl ShardQuery {
    /// Orders two rows the way the merged result lists them.
    pub fn compare(&self, a: &Row, b: &Row) -> Ordering {
        for (i, spec) in self.sort.iter().enumerate() {
            let ord = a.sort.get(i).cmp(&b.sort.get(i));
            let ord = if spec.descending { ord.reverse() } else { ord };
            if ord != Ordering::Equal {
                return ord;
            }
        }
        let ord = a.order.cmp(&b.order);
        match &self.access {
            Access::Index { reverse: true, .. } if self.sort.is_empty() => ord.reverse(),
            _ => ord,
        }
    }

    /// Starts the walk over `view`: every read of the walk sees the shard as it was then.
    pub fn start(self: &Arc<Self>, view: View) -> ShardWalk {
        let source: Box<dyn Iterator<Item = Result<(Slice, Slice), StoreError>>> =
            match &self.access {
                Access::Scan { lo, hi } => Box::new(view.scan_range(lo.clone(), hi.clone())),
                Access::Index {
                    lo, hi, reverse, ..
                } => {
                    let it = view.index_range(lo.clone(), hi.clone());
                    let it = it.map(|k| k.map(|k| (k, Slice::from(&[][..]))));
                    if *reverse {
                        Box::new(it.rev())
                    } else {
                        Box::new(it)
                    }
                }
            };
        let mut reads: Vec<&str> = Vec::new();
        if let Some(f) = &self.filter {
            f.attributes(&mut reads);
        }
        for s in &self.sort {
            if !reads.contains(&s.attr.as_str()) {
                reads.push(&s.attr);
            }
        }
        // Computed attributes are evaluated from the properties they read.
        let mut computed = Vec::new();
        let mut names: Vec<String> = Vec::new();
        for name in reads {
            match self.table.attribute(name).and_then(|a| a.expr.clone()) {
                Some(e) => {
                    e.reads(&mut names);
                    computed.push((name.to_owned(), e));
                }
                None if !names.iter().any(|n| n == name) => names.push(name.to_owned()),
                None => {}
            }
        }
        ShardWalk {
            query: self.clone(),
            view,
            source,
            reads: names,
            computed,
            seen: std::collections::HashSet::new(),
            sorted: Vec::new(),
            emitted: 0,
            done: false,
        }
    }
}

/// A shard's walk in progress: call [`ShardWalk::next_batch`] until it returns an empty batch,
/// yielding to other work between batches.
pub struct ShardWalk {
    query: Arc<ShardQuery>,
    view: View,
    source: Box<dyn Iterator<Item = Result<(Slice, Slice), StoreError>>>,
    /// Attributes to decode for the filter and sort.
    reads: Vec<String>,
    /// Computed attributes the filter or sort uses, evaluated per record.
    computed: Vec<(String, Arc<Expr>)>,
    /// Primary keys already returned (multi-valued index walks only).
    seen: std::collections::HashSet<Vec<u8>>,
    /// Matches collected for sorting.
    sorted: Vec<Row>,
    emitted: usize,
    done: bool,
}

impl ShardWalk {
    /// Examines up to `budget` candidates and returns the rows ready to send, in order, and
    /// whether the walk is over. A sorting walk returns its rows only at the end.
    pub fn next_batch(&mut self, budget: usize) -> Result<(Vec<Row>, bool), StoreError> {
        let q = self.query.clone();
        let mut out = Vec::new();
        let take = q.take.unwrap_or(usize::MAX);
        let mut examined = 0;
        while !self.done && examined < budget {
            examined += 1;
            let Some(next) = self.source.next() else {
                self.done = true;
                break;
            };
            let (k, v) = next?;
            let Some(row) = self.candidate(k, v)? else {
                continue;
            };
            if q.sort.is_empty() {
                out.push(row);
                self.emitted += 1;
                self.done = self.emitted >= take;
            } else {
                self.sorted.push(row);
                if take != usize::MAX && self.sorted.len() >= take.saturating_mul(2).max(64) {
                    self.trim(take);
                }
            }
        }
        if self.done && !self.sorted.is_empty() {
            self.trim(take);
            out.append(&mut self.sorted);
        }
        Ok((out, self.done))
    }

    fn trim(&mut self, take: usize) {
        let q = self.query.clone();
        self.sorted.sort_by(|a, b| q.compare(a, b));
        self.sorted.truncate(take);
    }

    /// Turns one source entry into a row if its record is live and matches.
    fn candidate(&mut self, k: Slice, v: Slice) -> Result<Option<Row>, StoreError> {
        let q = &self.query;
        let (order, key, stored) = match &q.access {
            Access::Scan { .. } => (k.to_vec(), k, v),
            Access::Index {
                prefix_len, multi, ..
            } => {
                let entry = k.get(*prefix_len..).unwrap_or_default();
                let Ok((_, used)) = key::decode(entry) else {
                    return Err(StoreError::Corrupt(format!("index entry {k:?}")));
                };
                let pk = entry.get(used..).unwrap_or_default();
                if *multi && !self.seen.insert(pk.to_vec()) {
                    return Ok(None);
                }
                let rkey = [table_prefix(q.table.id).as_slice(), pk].concat();
                if q.keys_only {
                    return Ok(Some(Row {
                        order: entry.to_vec(),
                        sort: Vec::new(),
                        key: Slice::from(rkey),
                        stored: Slice::from(&[][..]),
                    }));
                }
                let Some(stored) = self.view.get(&rkey)? else {
                    return Ok(None);
                };
                (entry.to_vec(), Slice::from(rkey), stored)
            }
        };
        let rec =
            RecordRef::parse(&stored).ok_or_else(|| StoreError::Corrupt(format!("{key:?}")))?;
        if rec.is_expired(q.now_ms) {
            return Ok(None);
        }
        let mut sort = Vec::new();
        if !self.reads.is_empty() {
            let names = &self.reads;
            let values = value::extract_fields(rec.body, names)?;
            let stored = |name: &str| -> Option<&Value> {
                let at = names.iter().position(|n| n == name)?;
                values.get(at)?.as_ref()
            };
            let computed: Vec<(&str, Value)> = self
                .computed
                .iter()
                .map(|(n, e)| (n.as_str(), e.eval(&stored)))
                .collect();
            let get = |name: &str| -> Option<&Value> {
                match computed.iter().find(|(n, _)| *n == name) {
                    Some((_, v)) => Some(v),
                    None => stored(name),
                }
            };
            if let Some(f) = &q.filter
                && !f.eval(&get)
            {
                return Ok(None);
            }
            sort = q.sort.iter().map(|s| sort_key(get(&s.attr))).collect();
        }
        Ok(Some(Row {
            order,
            sort,
            key,
            stored,
        }))
    }
}

/// The sort position of a value: missing sorts with null, first.
pub fn sort_key(v: Option<&Value>) -> Vec<u8> {
    match v {
        None => vec![1],
        Some(Value::Array(items)) => items.first().map_or(vec![1], |x| sort_key(Some(x))),
        Some(v) => key::to_key(v).unwrap_or_else(|_| vec![0xfe]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Catalog;
    use crate::shard::{
        Clock, ShardOptions, ShardStore, WriteKind, WriteOp, index_prefix, record_key,
    };
    use proptest::prelude::*;

    fn table() -> Arc<Table> {
        let mut c = Catalog::default();
        c.load_schema(
            "s",
            "type T @table { id: Int @primaryKey n: Float @indexed tag: [String] @indexed b: Boolean @indexed }",
        )
        .unwrap();
        Arc::new(c.tables.remove(0).numbered(9))
    }

    fn value() -> impl Strategy<Value = Option<Value>> {
        prop_oneof![
            Just(None),
            Just(Some(Value::Null)),
            (-3i64..4).prop_map(|i| Some(Value::Int(i))),
            (-3.0f64..4.0).prop_map(|f| Some(Value::Float((f * 2.0).round() / 2.0))),
        ]
    }

    fn tags() -> impl Strategy<Value = Option<Value>> {
        prop_oneof![
            Just(None),
            Just(Some(Value::Null)),
            proptest::collection::vec("[ab]{0,2}", 0..3)
                .prop_map(|v| Some(Value::Array(v.into_iter().map(Value::String).collect()))),
        ]
    }

    #[derive(Debug, Clone)]
    enum Step {
        Put(i64, Option<Value>, Option<Value>, Option<bool>),
        Patch(i64, Option<Value>),
        Delete(i64),
    }

    fn op() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0i64..12, value(), tags(), proptest::option::of(any::<bool>()))
                .prop_map(|(id, n, t, b)| Step::Put(id, n, t, b)),
            2 => (0i64..12, value()).prop_map(|(id, n)| Step::Patch(id, n)),
            1 => (0i64..12).prop_map(Step::Delete),
        ]
    }

    fn cmp() -> impl Strategy<Value = Cmp> {
        let ops = prop_oneof![
            Just(CmpOp::Eq),
            Just(CmpOp::Gt),
            Just(CmpOp::Ge),
            Just(CmpOp::Lt),
            Just(CmpOp::Le),
        ];
        prop_oneof![
            (ops.clone(), value()).prop_map(|(op, v)| Cmp::new(
                "n".into(),
                op,
                v.unwrap_or(Value::Null)
            )),
            (ops, "[ab]{0,2}").prop_map(|(op, s)| Cmp::new("tag".into(), op, Value::String(s))),
            "[ab]{0,1}".prop_map(|s| Cmp::new("tag".into(), CmpOp::StartsWith, Value::String(s))),
            any::<bool>().prop_map(|b| Cmp::new("b".into(), CmpOp::Eq, Value::Bool(b))),
            Just(Cmp::new("b".into(), CmpOp::Gt, Value::Bool(false))),
        ]
    }

    fn ids(store: &ShardStore, q: ShardQuery) -> Vec<Vec<u8>> {
        let q = Arc::new(q);
        let mut walk = q.start(store.view());
        let mut out = Vec::new();
        loop {
            let (rows, done) = walk.next_batch(3).unwrap();
            out.extend(rows.into_iter().map(|r| r.key.to_vec()));
            if done {
                return out;
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// An index walk finds exactly the records a full scan with the same condition finds.
        #[test]
        fn index_walks_agree_with_scans(ops in proptest::collection::vec(op(), 1..40), cmps in proptest::collection::vec(cmp(), 1..6)) {
            let t = table();
            let dir = tempfile::tempdir().unwrap();
            let store = ShardStore::open(dir.path(), ShardOptions::default()).unwrap();
            let mut clock = Clock::default();
            for o in ops {
                let (id, kind) = match o {
                    Step::Put(id, n, tag, b) => {
                        let mut props = vec![("id".to_owned(), Value::Int(id))];
                        props.extend(n.map(|v| ("n".to_owned(), v)));
                        props.extend(tag.map(|v| ("tag".to_owned(), v)));
                        props.extend(b.map(|v| ("b".to_owned(), Value::Bool(v))));
                        (id, WriteKind::Put(Value::Object(props)))
                    }
                    Step::Patch(id, n) => (id, WriteKind::Patch(Value::Object(n.map(|v| ("n".to_owned(), v)).into_iter().collect()))),
                    Step::Delete(id) => (id, WriteKind::Delete),
                };
                let key = record_key(t.id, &Value::Int(id)).unwrap();
                store.apply(vec![WriteOp { table: t.clone(), key, kind, from: None }], &mut clock, None).unwrap();
            }
            for c in cmps {
                let attr = t.attribute(&c.attr).unwrap();
                let prefix = index_prefix(t.id, attr.id);
                let Some((lo, hi)) = c.index_range(&prefix) else { continue };
                let query = |access, filter| ShardQuery {
                    table: t.clone(), access, filter, sort: vec![], take: None, now_ms: 0, keys_only: false,
                };
                let mut walked = ids(&store, query(Access::Index { prefix_len: 6, lo, hi, reverse: false, multi: true }, None));
                let tp = table_prefix(t.id).to_vec();
                let scan = Access::Scan { lo: tp.clone(), hi: successor(tp) };
                let scanned = ids(&store, query(scan, Some(Pred::Cmp(c.clone()))));
                walked.sort();
                prop_assert_eq!(walked, scanned, "{:?}", c);
            }
        }
    }
}

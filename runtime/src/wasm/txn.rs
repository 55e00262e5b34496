//! A request's transaction: its writes staged in order and read back by its later reads, and
//! the overlay of those writes on a search's stored results (read-your-writes).

use std::collections::{BTreeMap, HashMap};

use tessera_protocol::query::{Limit, Query};
use tessera_storage::query::{Pred, sort_key};
use tessera_storage::shard::{WriteKind, WriteOp, table_prefix};
use tessera_storage::{Table, Value, value};

use super::types;
use crate::data::query;
use crate::data::query::Joins;

/// The request's transaction: writes staged in order, and each written record as this request
/// sees it now (`None`: deleted).
#[derive(Default)]
pub(super) struct Txn {
    pub(super) writes: Vec<WriteOp>,
    pub(super) seen: HashMap<Vec<u8>, Option<Value>>,
    /// Messages to publish once the writes commit.
    pub(super) messages: Vec<WriteOp>,
    /// Keys of caching tables' records this request's reads loaded from their sources.
    pub(super) loaded: std::collections::HashSet<Vec<u8>>,
}

impl Txn {
    /// The writes to commit: one per record. Increments alone stay increments (they must not
    /// lose concurrent ones); plain patches stay patches; anything else becomes the record as
    /// this request last saw it.
    pub(super) fn into_ops(self) -> (Vec<WriteOp>, Vec<WriteOp>) {
        let mut merged: HashMap<Vec<u8>, WriteOp> = HashMap::with_capacity(self.writes.len());
        for op in self.writes {
            let Some(earlier) = merged.get_mut(&op.key) else {
                merged.insert(op.key.clone(), op);
                continue;
            };
            match (&mut earlier.kind, op.kind) {
                (WriteKind::Add(sum), WriteKind::Add(deltas)) => {
                    for (name, d) in deltas {
                        match sum.iter_mut().find(|(n, _)| *n == name) {
                            Some((_, total)) => *total = value::add_numbers(Some(total), &d),
                            None => sum.push((name, d)),
                        }
                    }
                }
                (kind, _) => {
                    *kind = match self.seen.get(&op.key) {
                        Some(Some(rec)) => WriteKind::Put(rec.clone()),
                        _ => WriteKind::Delete,
                    }
                }
            }
        }
        (merged.into_values().collect(), self.messages)
    }
}

/// What a search must change in the stored result so that it sees the request's own writes to
/// the table: written records replace, and deleted ones leave, the stored ones; new ones that
/// match join at the end (primary-key order among them); then the sort and the window apply.
pub(super) struct Overlay {
    /// The request's records of the table as it sees them (`None`: deleted).
    staged: BTreeMap<Vec<u8>, Option<Value>>,
    /// Every condition of the query (the store's plan leaves out what its access path ensures).
    pred: Option<Pred>,
    sort: Vec<(String, bool)>,
    window: Limit,
}

impl Overlay {
    /// `None` when the request wrote nothing to `table`; otherwise the overlay, with `parsed`'s
    /// window widened so the store returns enough rows to fill it after the overlay.
    pub(super) fn new(
        txn: &Txn,
        table: &Table,
        parsed: &mut Query,
    ) -> Result<Option<Self>, types::Error> {
        let prefix = table_prefix(table.id);
        let staged: BTreeMap<Vec<u8>, Option<Value>> = txn
            .seen
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if staged.is_empty() {
            return Ok(None);
        }
        let pred = parsed
            .filter
            .clone()
            .map(|f| query::resolve(table, f, &Joins::default()))
            .transpose()?;
        let sort = parsed
            .sort
            .iter()
            .map(|k| (k.path.join("."), k.descending))
            .collect();
        let window = parsed.limit.take().unwrap_or(Limit {
            start: 0,
            end: usize::MAX,
        });
        if window.end != usize::MAX {
            parsed.limit = Some(Limit {
                start: 0,
                end: window.end.saturating_add(staged.len()),
            });
        }
        Ok(Some(Overlay {
            staged,
            pred,
            sort,
            window,
        }))
    }

    pub(super) fn matches(&self, rec: &Value) -> bool {
        self.pred
            .as_ref()
            .is_none_or(|p| p.eval(&|name| rec.get(name)))
    }

    pub(super) fn apply(mut self, stored: Vec<(Vec<u8>, Value)>) -> Vec<(Vec<u8>, Value)> {
        let mut staged = std::mem::take(&mut self.staged);
        let mut out = Vec::with_capacity(stored.len() + staged.len());
        for (key, rec) in stored {
            match staged.remove(&key) {
                None => out.push((key, rec)),
                Some(Some(now)) if self.matches(&now) => out.push((key, now)),
                Some(_) => {}
            }
        }
        // What is left was not in the store's result: new records, in key order.
        out.extend(
            staged
                .into_iter()
                .filter_map(|(key, now)| now.filter(|now| self.matches(now)).map(|now| (key, now))),
        );
        if !self.sort.is_empty() {
            // Stable: ties keep the store's order, and new records after stored ones.
            let sort_keys = |rec: &Value| -> Vec<Vec<u8>> {
                self.sort
                    .iter()
                    .map(|(attr, _)| sort_key(rec.get(attr)))
                    .collect()
            };
            let mut keyed: Vec<_> = out.into_iter().map(|r| (sort_keys(&r.1), r)).collect();
            keyed.sort_by(|(a, _), (b, _)| {
                a.iter()
                    .zip(b)
                    .zip(&self.sort)
                    .map(
                        |((a, b), (_, descending))| {
                            if *descending { b.cmp(a) } else { a.cmp(b) }
                        },
                    )
                    .find(|ord| ord.is_ne())
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
            out = keyed.into_iter().map(|(_, r)| r).collect();
        }
        out.into_iter()
            .skip(self.window.start)
            .take(self.window.end.saturating_sub(self.window.start))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tessera_storage::shard::record_key;

    use super::*;
    use crate::data::conditions::conditions_query;

    fn dogs() -> Table {
        let mut t = crate::app::table_of(
            "type Dog @table { id: Long @primaryKey name: String age: Int @indexed }",
        );
        t.id = 7;
        t
    }

    fn dog(id: i64, name: &str, age: i64) -> (Vec<u8>, Value) {
        let rec = Value::Object(vec![
            ("id".into(), Value::Int(id)),
            ("name".into(), Value::String(name.into())),
            ("age".into(), Value::Int(age)),
        ]);
        (record_key(7, &Value::Int(id)).unwrap(), rec)
    }

    fn names(rows: &[(Vec<u8>, Value)]) -> Vec<String> {
        rows.iter()
            .map(|(_, r)| match r.get("name") {
                Some(Value::String(s)) => s.clone(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    /// The request's own view: `written` staged (a record, or `None` for a delete).
    fn txn(written: Vec<(Vec<u8>, Option<Value>)>) -> Txn {
        let mut txn = Txn::default();
        txn.seen.extend(written);
        txn
    }

    fn query(json: &str) -> Query {
        let mut bytes = json.as_bytes().to_vec();
        let v = crate::app::body::json(&mut bytes, &mut simd_json::Buffers::default()).unwrap();
        conditions_query(&v, false).unwrap()
    }

    #[test]
    fn a_search_sees_the_requests_own_writes() {
        let table = dogs();
        let (k1, _) = dog(1, "Rex", 3);
        let (k2, ada_now) = dog(2, "Ada", 9);
        let (k3, new) = dog(3, "Bo", 5);
        // Stored: Rex (1) and Ada (2, age 4). The request deleted Rex, made Ada 9, created Bo.
        let t = txn(vec![
            (k1.clone(), None),
            (k2.clone(), Some(ada_now)),
            (k3.clone(), Some(new)),
        ]);
        let stored = vec![dog(1, "Rex", 3), dog(2, "Ada", 4)];
        let mut q = query(r#"{}"#);
        let overlay = Overlay::new(&t, &table, &mut q).unwrap().unwrap();
        let rows = overlay.apply(stored);
        assert_eq!(names(&rows), ["Ada", "Bo"]);
        assert_eq!(rows[0].1.get("age"), Some(&Value::Int(9)));
    }

    #[test]
    fn conditions_sort_and_window_apply_to_the_staged_records_too() {
        let table = dogs();
        let (k3, bo) = dog(3, "Bo", 5);
        let (k2, ada_now) = dog(2, "Ada", 1);
        let t = txn(vec![(k3, Some(bo)), (k2, Some(ada_now))]);
        // age >= 3, oldest first, the first two.
        let mut q = query(
            r#"{"conditions":[{"search_attribute":"age","search_type":"greater_than_equal","search_value":3}],
                "sort":{"attribute":"age","descending":true},"limit":2}"#,
        );
        let overlay = Overlay::new(&t, &table, &mut q).unwrap().unwrap();
        // The store is asked for enough rows to fill the window after the overlay.
        assert_eq!(q.limit.map(|l| l.end), Some(4));
        // What the store found under its conditions: Ada was 4 when stored; now she is 1.
        let stored = vec![dog(1, "Rex", 3), dog(2, "Ada", 4), dog(4, "Zed", 8)];
        let rows = overlay.apply(stored);
        assert_eq!(names(&rows), ["Zed", "Bo"]);
    }

    #[test]
    fn no_overlay_when_the_request_wrote_nothing_to_the_table() {
        let table = dogs();
        let other = record_key(8, &Value::Int(1)).unwrap();
        let t = txn(vec![(other, None)]);
        let mut q = query(r#"{"limit":5}"#);
        assert!(Overlay::new(&t, &table, &mut q).unwrap().is_none());
        assert_eq!(q.limit.map(|l| l.end), Some(5));
    }

    #[test]
    fn staged_writes_merge_into_one_op_per_record() {
        let table = Arc::new(dogs());
        let (k1, rex) = dog(1, "Rex", 3);
        let mut t = Txn::default();
        let add = |n: i64| WriteKind::Add(vec![("age".into(), Value::Int(n))]);
        // Two increments of one record stay one increment (concurrent ones are not lost).
        for n in [1, 2] {
            t.writes.push(WriteOp {
                table: table.clone(),
                key: k1.clone(),
                kind: add(n),
                from: None,
            });
        }
        let (ops, messages) = t.into_ops();
        assert!(messages.is_empty());
        match &ops[..] {
            [
                WriteOp {
                    kind: WriteKind::Add(sum),
                    ..
                },
            ] => assert_eq!(sum, &vec![("age".to_owned(), Value::Int(3))]),
            other => panic!("{} ops", other.len()),
        }
        // A put after an increment is the record as the request last saw it.
        let mut t = Txn::default();
        t.writes.push(WriteOp {
            table: table.clone(),
            key: k1.clone(),
            kind: add(1),
            from: None,
        });
        t.writes.push(WriteOp {
            table: table.clone(),
            key: k1.clone(),
            kind: WriteKind::Put(rex.clone()),
            from: None,
        });
        t.seen.insert(k1.clone(), Some(rex.clone()));
        let (ops, _) = t.into_ops();
        assert!(matches!(&ops[..], [WriteOp { kind: WriteKind::Put(r), .. }] if *r == rex));
    }
}

//! Collection queries (docs/rest.md): planned once on the connection's core, run on every
//! shard in parallel over the mesh, merged here in result order.
//!
//! Planning resolves each condition against the schema (404 for undeclared attributes), converts
//! its value to the attribute's type, and picks the access path: the most selective indexed (or
//! primary-key) condition of the top-level `&` becomes an index walk, the rest a filter; a query
//! with no usable condition scans the table in primary-key order. Each shard returns its rows in
//! result order (sorting them itself when `sort()` asks, keeping at most `offset + limit`), so the
//! merge is a k-way merge that can stream.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use futures::StreamExt;
use futures::channel::mpsc;
use tessera_protocol::query::{self, Filter, Limit, Op, Operand, Query, Select};
use tessera_shards::Router;
use tessera_storage::query::{Access, Cmp, CmpOp, Pred, Row, ShardQuery, SortSpec, successor};
use tessera_storage::schema::{Attribute, FieldType};
use tessera_storage::shard::{StoreError, index_prefix, now_micros, table_prefix};
use tessera_storage::value::parse_date;
use tessera_storage::{Scalar, Table, Value, key};

use crate::app::AppError;

/// The largest limit for which a query merges keys first and reads records afterwards.
const KEYS_FIRST_UP_TO: usize = 1000;

/// A planned collection query.
pub struct Plan {
    pub shard: Arc<ShardQuery>,
    /// Rows to skip before the first one returned.
    pub skip: usize,
    pub select: Option<Select>,
    /// Whether the selection includes related records or computed values (rows are decoded).
    pub related: bool,
    /// Conditions that narrow selected to-many related records (docs/rest.md).
    pub narrowing: HashMap<String, Pred>,
}

/// Parses a query string (400 with the position when it does not parse).
pub fn parse(query: &str) -> Result<Query, AppError> {
    query::parse(query).map_err(|e| AppError::BadRequest(e.to_string()))
}

/// Plans a parsed query over the records of `table` whose primary key starts with `prefix`.
/// `joins` holds the results of its conditions through relationships (`related::joins`).
pub fn plan(
    table: &Arc<Table>,
    prefix: &str,
    parsed: Query,
    joins: Joins,
) -> Result<Plan, AppError> {
    check_select(table, parsed.select.as_ref())?;
    let related = selects_derived(table, parsed.select.as_ref());
    let filter = parsed
        .filter
        .map(|f| resolve(table, f, &joins))
        .transpose()?;
    let mut sort = Vec::with_capacity(parsed.sort.len());
    for key in &parsed.sort {
        let attr = defined(table, &key.path)?;
        sort.push(SortSpec {
            attr: attr.name.clone(),
            descending: key.descending,
        });
    }
    if let (None, Some(first)) = (&filter, sort.first())
        && !is_indexed(table, &first.attr)
    {
        return Err(AppError::NotFound(format!(
            "{} is not indexed and not combined with any other conditions",
            first.attr
        )));
    }
    let (access, filter) = if prefix.is_empty() {
        choose_access(table, filter)
    } else {
        let mut lo = table_prefix(table.id).to_vec();
        key::encode_str_open(prefix, &mut lo);
        let hi = successor(lo.clone());
        (Access::Scan { lo, hi }, filter)
    };
    // An index walk on the single sort attribute is already in sort order.
    let access = match (access, sort.as_slice()) {
        (
            Access::Index {
                prefix_len,
                lo,
                hi,
                multi: false,
                ..
            },
            [only],
        ) if Some(only.attr.as_str()) == walked(table, &lo, prefix_len) => {
            let reverse = only.descending;
            sort.clear();
            Access::Index {
                prefix_len,
                lo,
                hi,
                reverse,
                multi: false,
            }
        }
        (access, _) => access,
    };
    let Limit { start, end } = parsed.limit.unwrap_or(Limit {
        start: 0,
        end: usize::MAX,
    });
    let take = (end != usize::MAX).then_some(end);
    // A short, limited index walk that decides the result alone reads only the index on the
    // shards, and then only the records that survive the merge (half the reads on two shards).
    let keys_only = matches!(access, Access::Index { .. })
        && filter.is_none()
        && sort.is_empty()
        && table.expiration.is_none()
        && take.is_some_and(|t| t <= KEYS_FIRST_UP_TO);
    Ok(Plan {
        shard: Arc::new(ShardQuery {
            table: table.clone(),
            access,
            filter,
            sort,
            take,
            now_ms: now_micros() / 1000,
            keys_only,
        }),
        skip: start,
        select: parsed.select,
        related,
        narrowing: joins.narrowing,
    })
}

/// The `select()` of a query on a single record (its other parts do not apply to one record).
pub fn select(table: &Table, query: &str) -> Result<Option<Select>, AppError> {
    let parsed = parse(query)?;
    check_select(table, parsed.select.as_ref())?;
    Ok(parsed.select)
}

/// Refuses selections nothing can produce (properties computed by code no resource provides).
fn check_select(table: &Table, select: Option<&Select>) -> Result<(), AppError> {
    for f in select.map(Select::fields).unwrap_or_default() {
        if let Some(a) = table.attribute(&f.name).filter(|a| a.lacks_code()) {
            return Err(lacks_code(&a.name));
        }
    }
    Ok(())
}

fn lacks_code(name: &str) -> AppError {
    AppError::NotImplemented(format!(
        "{name} is computed by code, and no resource of the application computes it"
    ))
}

/// The attribute whose index an index range walks.
fn walked<'t>(table: &'t Table, lo: &[u8], prefix_len: usize) -> Option<&'t str> {
    let id = u16::from_be_bytes(lo.get(4..prefix_len)?.try_into().ok()?);
    table
        .indexed()
        .find(|a| a.id == id)
        .map(|a| a.name.as_str())
}

pub(crate) fn is_indexed(table: &Table, name: &str) -> bool {
    table.indexed().any(|a| a.name == name)
}

/// The declared attribute a path names (relationship paths come with relationships).
fn defined<'t>(table: &'t Table, path: &[String]) -> Result<&'t Attribute, AppError> {
    let [name] = path else {
        return Err(AppError::NotImplemented(format!(
            "conditions and sorts through relationships ({}) are not served by this build yet",
            path.join(".")
        )));
    };
    let attr = table
        .attribute(name)
        .ok_or_else(|| AppError::NotFound(format!("{name} is not a defined attribute")))?;
    if attr.relationship.is_some() {
        return Err(AppError::BadRequest(format!(
            "{name} is a relationship: name a property of the related records ({name}.<property>)"
        )));
    }
    if attr.lacks_code() {
        return Err(lacks_code(name));
    }
    Ok(attr)
}

/// The results of the conditions through relationships of one query.
#[derive(Default)]
pub struct Joins {
    /// For each such condition (by its position in the query string): the join values its
    /// matching related records hold; the condition becomes `local In values`.
    pub values: HashMap<usize, (String, Vec<Value>)>,
    /// For to-many relationships used in a condition: that condition on the related records, so
    /// that a selection of them is narrowed to the matching ones.
    pub narrowing: HashMap<String, Pred>,
}

/// Whether a selection needs more than stored properties: related records or computed values.
pub fn selects_derived(table: &Table, select: Option<&Select>) -> bool {
    select.is_some_and(|s| {
        s.fields()
            .iter()
            .any(|f| table.attribute(&f.name).is_some_and(|a| !a.is_stored()))
    })
}

/// Turns parsed conditions into a typed predicate; a condition through a relationship becomes
/// `local In values` from `joins`.
pub fn resolve(table: &Table, filter: Filter, joins: &Joins) -> Result<Pred, AppError> {
    Ok(match filter {
        Filter::And(items) => Pred::And(
            items
                .into_iter()
                .map(|f| resolve(table, f, joins))
                .collect::<Result<_, _>>()?,
        ),
        Filter::Or(items) => Pred::Or(
            items
                .into_iter()
                .map(|f| resolve(table, f, joins))
                .collect::<Result<_, _>>()?,
        ),
        Filter::Cond(c) if c.path.len() > 1 => {
            let Some((local, values)) = joins.values.get(&c.at) else {
                return Err(AppError::NotFound(format!(
                    "{} is not a defined attribute",
                    c.path.join(".")
                )));
            };
            Pred::Cmp(Cmp::new(
                local.clone(),
                CmpOp::In,
                Value::Array(values.clone()),
            ))
        }
        Filter::Cond(c) => {
            // `price=gt=20&lt=100`: `lt` is an operator on the previous attribute unless the
            // table has an attribute of that name.
            let (path, op) = match c.chained {
                Some((prev, op)) if c.path.len() == 1 && table.attribute(&c.path[0]).is_none() => {
                    (prev, op)
                }
                _ => (c.path, c.op),
            };
            let attr = defined(table, &path)?;
            let op = cmp_op(op);
            let value = convert(attr, op, c.value)?;
            Pred::Cmp(Cmp::new(attr.name.clone(), op, value))
        }
    })
}

fn cmp_op(op: Op) -> CmpOp {
    match op {
        Op::Eq => CmpOp::Eq,
        Op::Ne => CmpOp::Ne,
        Op::Gt => CmpOp::Gt,
        Op::Ge => CmpOp::Ge,
        Op::Lt => CmpOp::Lt,
        Op::Le => CmpOp::Le,
        Op::StartsWith => CmpOp::StartsWith,
        Op::Contains => CmpOp::Contains,
        Op::EndsWith => CmpOp::EndsWith,
    }
}

/// The scalar type of an attribute's values (of its elements, for a list).
fn scalar(ty: &FieldType) -> Scalar {
    match ty {
        FieldType::Scalar(s) => *s,
        FieldType::List(inner) => scalar(inner),
        FieldType::Named(_) => Scalar::Any,
    }
}

/// Converts a condition's value to the attribute's type.
fn convert(attr: &Attribute, op: CmpOp, operand: Operand) -> Result<Value, AppError> {
    let bad = |text: &str, what: &str| {
        AppError::BadRequest(format!(
            "Value \"{text}\" in a condition on {} must be {what}",
            attr.name
        ))
    };
    Ok(match operand {
        Operand::Null => Value::Null,
        Operand::Bool(b) => Value::Bool(b),
        Operand::String(s) => Value::String(s),
        Operand::Number(n) => number(n),
        Operand::Date(text) => Value::Date(parse_date(&text).ok_or_else(|| bad(&text, "a date"))?),
        Operand::Text(text) => {
            if matches!(op, CmpOp::StartsWith | CmpOp::Contains | CmpOp::EndsWith) {
                return Ok(Value::String(text));
            }
            match scalar(&attr.ty) {
                Scalar::Int | Scalar::Long | Scalar::Float | Scalar::BigInt => {
                    match text.trim().parse::<f64>() {
                        Ok(n) if n.is_finite() && !text.trim().is_empty() => number(n),
                        _ => return Err(bad(&text, "a number")),
                    }
                }
                Scalar::Boolean => match text.as_str() {
                    "true" => Value::Bool(true),
                    "false" => Value::Bool(false),
                    _ => return Err(bad(&text, "true or false")),
                },
                Scalar::Date => match text.parse::<f64>() {
                    Ok(ms) if ms.is_finite() => Value::Date(ms),
                    _ => Value::Date(parse_date(&text).ok_or_else(|| bad(&text, "a date"))?),
                },
                _ => Value::String(text),
            }
        }
    })
}

fn number(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() <= 9_007_199_254_740_992.0 {
        Value::Int(n as i64)
    } else {
        Value::Float(n)
    }
}

/// A range an access path could walk, and how good it looks.
struct Candidate {
    attr: String,
    lo: Vec<u8>,
    hi: Vec<u8>,
    prefix_len: usize,
    primary: bool,
    multi: bool,
    /// Higher is more selective: equality, then prefix, then closed range, then open range.
    score: u8,
    /// Conditions of the top-level `&` that this range fully enforces.
    covers: Vec<usize>,
}

/// Picks the access path and returns it with the conditions it does not enforce.
pub fn choose_access(table: &Table, filter: Option<Pred>) -> (Access, Option<Pred>) {
    let scan = || {
        let lo = table_prefix(table.id).to_vec();
        let hi = successor(lo.clone());
        Access::Scan { lo, hi }
    };
    let mut items = match filter {
        None => return (scan(), None),
        Some(Pred::And(items)) => items,
        Some(other) => vec![other],
    };
    let mut candidates: Vec<Candidate> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Pred::Cmp(c) = item else { continue };
        let Some(attr) = table.attribute(&c.attr) else {
            continue;
        };
        let (prefix, primary) = if attr.primary_key {
            (table_prefix(table.id).to_vec(), true)
        } else if is_indexed(table, &attr.name) {
            (index_prefix(table.id, attr.id).to_vec(), false)
        } else {
            continue;
        };
        let Some((lo, hi)) = c.index_range(&prefix) else {
            continue;
        };
        let multi =
            !primary && matches!(attr.ty, FieldType::List(_) | FieldType::Scalar(Scalar::Any));
        let score = match c.op {
            CmpOp::Eq => 4,
            CmpOp::StartsWith => 3,
            _ => 1,
        };
        match candidates.iter_mut().find(|k| k.attr == c.attr) {
            // Several conditions on one attribute: walk the intersection of their ranges.
            Some(k) if !multi => {
                k.lo = k.lo.clone().max(lo);
                k.hi = k.hi.clone().min(hi);
                k.score = k.score.max(score).max(2);
                k.covers.push(i);
            }
            Some(_) => {}
            None => candidates.push(Candidate {
                attr: c.attr.clone(),
                lo,
                hi,
                prefix_len: prefix.len(),
                primary,
                multi,
                score,
                covers: vec![i],
            }),
        }
    }
    let Some(best) = candidates.into_iter().max_by_key(|c| (c.score, c.primary)) else {
        let filter = if items.len() == 1 {
            items.pop()
        } else {
            Some(Pred::And(items))
        };
        return (scan(), filter);
    };
    let access = if best.primary {
        Access::Scan {
            lo: best.lo,
            hi: best.hi,
        }
    } else {
        Access::Index {
            prefix_len: best.prefix_len,
            lo: best.lo,
            hi: best.hi,
            reverse: false,
            multi: best.multi,
        }
    };
    let rest: Vec<Pred> = items
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !best.covers.contains(i))
        .map(|(_, p)| p)
        .collect();
    let filter = match rest.len() {
        0 => None,
        1 => rest.into_iter().next(),
        _ => Some(Pred::And(rest)),
    };
    (access, filter)
}

/// Every record `plan` selects, `skip` and limit applied, each read in full (a keys-only walk's
/// winners are fetched from their shards).
pub async fn collect(router: &Router, plan: &Plan) -> Result<Vec<Row>, AppError> {
    let end = plan.shard.take.unwrap_or(usize::MAX);
    let mut rows = Merge::start(router, plan.shard.clone())
        .collect(plan.skip, end)
        .await?;
    if plan.shard.keys_only {
        fill_records(router, &mut rows).await?;
    }
    Ok(rows)
}

/// Reads the records of keys-only rows, on their owner shards, in place. Rows whose record is
/// gone are dropped.
pub async fn fill_records(router: &Router, rows: &mut Vec<Row>) -> Result<(), AppError> {
    let mut by_shard: Vec<Vec<usize>> = vec![Vec::new(); router.shard_count()];
    for (i, row) in rows.iter().enumerate() {
        by_shard[router.shard_of(&row.key)].push(i);
    }
    let reads = by_shard
        .into_iter()
        .enumerate()
        .filter(|(_, at)| !at.is_empty())
        .map(|(shard, at)| {
            let keys: Vec<_> = at.iter().map(|&i| rows[i].key.clone()).collect();
            async move {
                let found = router
                    .on_shard(shard, move |s| {
                        keys.iter().map(|k| s.get(k)).collect::<Result<Vec<_>, _>>()
                    })
                    .await??;
                Ok::<_, AppError>((at, found))
            }
        });
    let mut gone = Vec::new();
    for result in futures::future::join_all(reads).await {
        let (at, found) = result?;
        for (i, stored) in at.into_iter().zip(found) {
            match stored {
                Some(s) => rows[i].stored = s,
                None => gone.push(i),
            }
        }
    }
    if !gone.is_empty() {
        gone.sort_unstable();
        for i in gone.into_iter().rev() {
            rows.remove(i);
        }
    }
    Ok(())
}

/// Every live record of `table` that satisfies `pred` (all of them when `None`), in access-path
/// order, as whole rows.
pub fn matching(router: &Router, table: &Arc<Table>, pred: Option<Pred>) -> Merge {
    let (access, filter) = choose_access(table, pred);
    let q = ShardQuery {
        table: table.clone(),
        access,
        filter,
        sort: Vec::new(),
        take: None,
        now_ms: now_micros() / 1000,
        keys_only: false,
    };
    Merge::start(router, Arc::new(q))
}

/// One shard's rows as they arrive.
struct Source {
    rx: mpsc::Receiver<Result<Vec<Row>, StoreError>>,
    buf: VecDeque<Row>,
    done: bool,
}

/// The k-way merge of every shard's rows, in result order.
pub struct Merge {
    query: Arc<ShardQuery>,
    /// Until the first row is asked for: the router that starts the shard walks.
    router: Option<Router>,
    sources: Vec<Source>,
}

impl Merge {
    /// The query on every shard; the walks start, on a consistent cut of the shards (see
    /// [`Router::views`]), when the first row is asked for.
    pub fn start(router: &Router, query: Arc<ShardQuery>) -> Merge {
        Merge {
            query,
            router: Some(router.clone()),
            sources: Vec::new(),
        }
    }

    /// The rows from position `skip` up to (not including) position `end`, all at once.
    pub async fn collect(mut self, skip: usize, end: usize) -> Result<Vec<Row>, AppError> {
        let mut rows = Vec::with_capacity(end.saturating_sub(skip).min(1024));
        let mut seen = 0;
        while seen < end {
            let Some(row) = self.next().await? else { break };
            seen += 1;
            if seen > skip {
                rows.push(row);
            }
        }
        Ok(rows)
    }

    /// The next row of the result, or `None` at the end.
    pub async fn next(&mut self) -> Result<Option<Row>, AppError> {
        if let Some(router) = self.router.take() {
            let views = router.views().await;
            self.sources = views
                .into_iter()
                .enumerate()
                .map(|(s, view)| Source {
                    rx: router.query(s, self.query.clone(), view),
                    buf: VecDeque::new(),
                    done: false,
                })
                .collect();
        }
        for s in &mut self.sources {
            while s.buf.is_empty() && !s.done {
                match s.rx.next().await {
                    Some(Ok(rows)) => s.buf.extend(rows),
                    Some(Err(e)) => return Err(e.into()),
                    None => s.done = true,
                }
            }
        }
        let q = &self.query;
        let best = self
            .sources
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.buf.front().map(|r| (i, r)))
            .min_by(|a, b| q.compare(a.1, b.1))
            .map(|(i, _)| i);
        Ok(best.and_then(|i| self.sources[i].buf.pop_front()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_storage::Catalog;

    fn plan_str(t: &Arc<Table>, q: &str) -> Result<Plan, AppError> {
        plan(t, "", parse(q)?, Joins::default())
    }

    fn table() -> Arc<Table> {
        let mut c = Catalog::default();
        c.load_schema(
            "s",
            "type P @table @export { id: ID @primaryKey name: String @indexed price: Float @indexed \
             tags: [String] @indexed rating: Int inStock: Boolean }",
        )
        .unwrap();
        Arc::new(c.tables.remove(0).numbered(3))
    }

    #[test]
    fn picks_the_most_selective_condition() {
        let t = table();
        let p = plan_str(&t, "price=gt=20&name=x&rating=5").unwrap();
        let Access::Index { lo, .. } = &p.shard.access else {
            panic!("{:?}", p.shard.access)
        };
        assert_eq!(walked(&t, lo, 6), Some("name"));
        assert!(matches!(&p.shard.filter, Some(Pred::And(v)) if v.len() == 2));
        // A range with a sort on the same attribute walks the index in order.
        let p = plan_str(&t, "price=gt=20&lt=100&sort(-price)&limit(3)").unwrap();
        assert!(matches!(
            p.shard.access,
            Access::Index { reverse: true, .. }
        ));
        assert!(p.shard.sort.is_empty() && p.shard.filter.is_none());
        assert_eq!(p.shard.take, Some(3));
        // OR and non-indexed conditions scan.
        let p = plan_str(&t, "rating=5|name=x").unwrap();
        assert!(matches!(p.shard.access, Access::Scan { .. }));
        let p = plan_str(&t, "id=a").unwrap();
        assert!(matches!(p.shard.access, Access::Scan { .. }) && p.shard.filter.is_none());
    }

    #[test]
    fn errors() {
        let t = table();
        let status = |q: &str| plan_str(&t, q).err().map(|e| e.status());
        assert_eq!(status("nope=1"), Some(404));
        assert_eq!(status("sort(rating)"), Some(404));
        assert_eq!(status("rating=5&sort(rating)"), None);
        assert_eq!(status("price=abc"), Some(400));
        assert_eq!(status("inStock=yes"), Some(400));
        assert_eq!(status("a=1|b=2&c=3"), Some(400));
        assert_eq!(status("price=gt=20&lt=100"), None);
    }
}

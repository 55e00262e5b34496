//! `{"operation":"sql"}` (docs/operations.md): SELECT, INSERT, UPDATE and DELETE, parsed by
//! `sqlparser` and run on the same plans as REST queries. A WHERE clause becomes the query
//! filter, so its conditions walk the same indexes on every shard; ORDER BY and LIMIT go with it
//! when one table is read without aggregates. Joins, GROUP BY, aggregates and sorts the
//! indexes cannot give are done on the matching rows in memory.
//!
//! Tables are `database.table` (a bare name means `data`). Errors are 400 with the position
//! sqlparser reports, 404 for a missing table or column, and the role checks of the data
//! operations apply.

use std::collections::HashMap;
use std::sync::Arc;

use sqlparser::ast::{
    self, BinaryOperator, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr,
    JoinConstraint, JoinOperator, LimitClause, ObjectName, OrderByKind, OrderBySort, SelectItem,
    SetExpr, Statement, TableFactor, TableWithJoins, UnaryOperator,
};
use sqlparser::dialect::MySqlDialect;
use sqlparser::parser::Parser;
use tessera_protocol::query::{Filter, Limit, Op, Operand, Query, SortKey};
use tessera_storage::query::sort_key;
use tessera_storage::{Table, Value};

use super::data::{Write, check_readable};
use super::{Operations, OpsError, bad, fail};
use crate::app::output;
use crate::app::permissions::{Action, TablePermission, User};
use crate::data::conditions::{condition, operand, wildcard};
use crate::data::query;
use crate::data::query::Joins;

/// Most values of an indexed join lookup; with more, the joined table is read whole.
const JOIN_LOOKUP_MAX: usize = 1000;

/// A table a statement reads, with what names it in the statement.
struct Source<'u> {
    table: Arc<Table>,
    alias: String,
    restricted: Option<&'u TablePermission>,
}

/// A column: which source (0, or 1 for the joined table) and which attribute.
#[derive(Clone, Debug, PartialEq)]
struct Col {
    source: usize,
    name: String,
}

/// A WHERE clause with its columns resolved.
enum Where {
    And(Vec<Where>),
    Or(Vec<Where>),
    Cmp(Col, Op, Operand),
}

/// One item of a select list.
enum Item {
    /// `*` or `alias.*`: every attribute of one source (or of all).
    Star(Option<usize>),
    Column(Col, String),
    Aggregate(Aggregate, Option<Col>, String),
}

#[derive(Clone, Copy)]
enum Aggregate {
    Count,
    Min,
    Max,
    Avg,
    Sum,
}

/// One row being assembled: the decoded record of each source (`None`: no match of a LEFT JOIN).
type Row = Vec<Option<Value>>;

fn invalid(sql: &str, e: sqlparser::parser::ParserError) -> OpsError {
    let mut detail = e.to_string();
    // sqlparser reports "... at Line: L, Column: C"; an unexpected end has no position, and
    // is just past the text.
    let (line, column) = position(&detail).unwrap_or_else(|| {
        let (lines, column) = (
            sql.lines().count().max(1),
            sql.lines().last().map_or(0, |l| l.chars().count()) + 1,
        );
        detail.push_str(&format!(" at Line: {lines}, Column: {column}"));
        (lines, column)
    });
    // The text from there.
    let excerpt = sql
        .lines()
        .nth(line.saturating_sub(1))
        .map(|l| {
            let from = l
                .char_indices()
                .nth(column.saturating_sub(1))
                .map_or(l.len(), |(i, _)| i);
            l[from..].chars().take(40).collect::<String>()
        })
        .unwrap_or_else(|| sql.chars().take(40).collect());
    bad(format!(
        "Invalid SQL at: {excerpt}. Please ensure your SQL is valid. Try adding backticks to reserved words and schema table references. ({detail})"
    ))
}

/// The line and column at the end of a sqlparser message.
fn position(message: &str) -> Option<(usize, usize)> {
    let at = message.rfind("Line: ")?;
    let rest = &message[at + 6..];
    let (line, rest) = rest.split_once(", Column: ")?;
    let column: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((line.trim().parse().ok()?, column.parse().ok()?))
}

fn unsupported(what: impl std::fmt::Display) -> OpsError {
    bad(format!("Unsupported SQL: {what}"))
}

/// `database.table` (or `table` in `data`).
fn table_name(name: &ObjectName) -> Result<(String, String), OpsError> {
    let parts: Vec<&str> = name
        .0
        .iter()
        .map(|p| p.as_ident().map(|i| i.value.as_str()))
        .collect::<Option<_>>()
        .ok_or_else(|| unsupported(name))?;
    match parts.as_slice() {
        [t] => Ok((
            crate::app::tables::DEFAULT_DATABASE.to_owned(),
            (*t).to_owned(),
        )),
        [d, t] => Ok(((*d).to_owned(), (*t).to_owned())),
        _ => Err(unsupported(format!("table name {name}"))),
    }
}

/// A literal as a stored value.
fn literal(e: &Expr) -> Result<Value, OpsError> {
    Ok(match e {
        Expr::Value(v) => match &v.value {
            ast::Value::Number(n, _) => match n.parse::<i64>() {
                Ok(i) => Value::Int(i),
                Err(_) => Value::Float(n.parse().map_err(|_| bad(format!("Invalid number {n}")))?),
            },
            ast::Value::SingleQuotedString(s) | ast::Value::DoubleQuotedString(s) => {
                Value::String(s.clone())
            }
            ast::Value::Boolean(b) => Value::Bool(*b),
            ast::Value::Null => Value::Null,
            other => return Err(unsupported(format!("value {other}"))),
        },
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match literal(expr)? {
            Value::Int(i) => Value::Int(-i),
            Value::Float(f) => Value::Float(-f),
            _ => return Err(unsupported(e)),
        },
        Expr::Nested(inner) => literal(inner)?,
        other => return Err(unsupported(format!("expression {other} (only literals)"))),
    })
}

/// The number of a LIMIT or OFFSET.
fn count(e: &Expr) -> Result<usize, OpsError> {
    match literal(e)? {
        Value::Int(i) if i >= 0 => Ok(i as usize),
        _ => Err(bad("LIMIT and OFFSET take non-negative integers")),
    }
}

/// A literal as an operand: as the data operations' values, except that a quoted string stays a
/// string whatever the column's type.
fn operand_of(v: Value) -> Operand {
    match v {
        Value::String(s) => Operand::String(s),
        v => operand(&v),
    }
}

impl Source<'_> {
    fn defines(&self, name: &str) -> bool {
        self.table.attribute(name).is_some()
    }
}

/// Resolves column references against the statement's sources.
struct Scope<'s, 'u> {
    sources: &'s [Source<'u>],
}

impl Scope<'_, '_> {
    fn column(&self, e: &Expr) -> Result<Col, OpsError> {
        let (qualifier, name) = match e {
            Expr::Identifier(i) => (None, i.value.as_str()),
            Expr::CompoundIdentifier(parts) => match parts.as_slice() {
                [q, n] => (Some(q.value.as_str()), n.value.as_str()),
                _ => return Err(unsupported(format!("column {e}"))),
            },
            Expr::Nested(inner) => return self.column(inner),
            other => {
                return Err(unsupported(format!(
                    "expression {other} (expected a column)"
                )));
            }
        };
        let found = match qualifier {
            Some(q) => self
                .sources
                .iter()
                .position(|s| s.alias == q || s.table.name == q)
                .ok_or_else(|| fail(404, format!("unknown table alias {q}")))?,
            None => self
                .sources
                .iter()
                .position(|s| s.defines(name))
                .unwrap_or(0),
        };
        let source = &self.sources[found];
        if !source.defines(name) {
            return Err(fail(404, format!("unknown column {name}")));
        }
        check_readable(&source.table, source.restricted, [&name.to_owned()])?;
        Ok(Col {
            source: found,
            name: name.to_owned(),
        })
    }

    /// The items of a select list.
    fn items(&self, projection: &[SelectItem]) -> Result<Vec<Item>, OpsError> {
        let mut items = Vec::new();
        for item in projection {
            let (expr, alias) = match item {
                SelectItem::Wildcard(_) => {
                    items.push(Item::Star(None));
                    continue;
                }
                SelectItem::QualifiedWildcard(kind, _) => {
                    let name = kind.to_string();
                    let at = self
                        .sources
                        .iter()
                        .position(|s| s.alias == name || s.table.name == name)
                        .ok_or_else(|| fail(404, format!("unknown table alias {name}")))?;
                    items.push(Item::Star(Some(at)));
                    continue;
                }
                SelectItem::UnnamedExpr(e) => (e, None),
                SelectItem::ExprWithAlias { expr, alias } => (expr, Some(alias.value.clone())),
                other => return Err(unsupported(other)),
            };
            let label = alias.unwrap_or_else(|| match expr {
                Expr::CompoundIdentifier(parts) => {
                    parts.last().map(|p| p.value.clone()).unwrap_or_default()
                }
                Expr::Identifier(i) => i.value.clone(),
                e => e.to_string(),
            });
            match expr {
                Expr::Function(f) => {
                    let name = f.name.to_string();
                    let agg =
                        aggregate(&name).ok_or_else(|| unsupported(format!("function {name}")))?;
                    let FunctionArguments::List(list) = &f.args else {
                        return Err(unsupported(format!("{expr}")));
                    };
                    let col = match list.args.as_slice() {
                        [FunctionArg::Unnamed(FunctionArgExpr::Wildcard)] => None,
                        [FunctionArg::Unnamed(FunctionArgExpr::Expr(e))] => Some(self.column(e)?),
                        _ => return Err(unsupported(format!("{expr}"))),
                    };
                    if col.is_none() && !matches!(agg, Aggregate::Count) {
                        return Err(bad(format!("{name}(*) needs a column")));
                    }
                    items.push(Item::Aggregate(agg, col, label));
                }
                e => items.push(Item::Column(self.column(e)?, label)),
            }
        }
        Ok(items)
    }

    /// ORDER BY's keys: each a column, or the label of a select item (always so for an aggregate
    /// or in a grouped query), and whether it is descending.
    fn order_by(
        &self,
        order_by: Option<&ast::OrderBy>,
        items: &[Item],
        aggregated: bool,
    ) -> Result<Vec<(OrderTarget, bool)>, OpsError> {
        let mut order: Vec<(OrderTarget, bool)> = Vec::new();
        if let Some(o) = order_by {
            let OrderByKind::Expressions(exprs) = &o.kind else {
                return Err(unsupported("ORDER BY ALL"));
            };
            for e in exprs {
                let descending = matches!(e.options.sort, Some(OrderBySort::Desc));
                let label = match &e.expr {
                    Expr::Identifier(i) => Some(i.value.as_str()),
                    _ => None,
                };
                let target =
                    match label.and_then(|l| items.iter().position(|i| i.label() == Some(l))) {
                        Some(at) if aggregated || matches!(items[at], Item::Aggregate(..)) => {
                            OrderTarget::Item(at)
                        }
                        _ => OrderTarget::Col(self.column(&e.expr)?),
                    };
                order.push((target, descending));
            }
        }
        Ok(order)
    }

    fn condition(&self, e: &Expr) -> Result<Where, OpsError> {
        let cmp = |left: &Expr, op: Op, right: &Expr| -> Result<Where, OpsError> {
            // `5 < age` reads as `age > 5`.
            if let Ok(v) = literal(left) {
                let flipped = match op {
                    Op::Gt => Op::Lt,
                    Op::Ge => Op::Le,
                    Op::Lt => Op::Gt,
                    Op::Le => Op::Ge,
                    o => o,
                };
                return Ok(Where::Cmp(self.column(right)?, flipped, operand_of(v)));
            }
            Ok(Where::Cmp(
                self.column(left)?,
                op,
                operand_of(literal(right)?),
            ))
        };
        Ok(match e {
            Expr::Nested(inner) => self.condition(inner)?,
            Expr::BinaryOp { left, op, right } => match op {
                BinaryOperator::And => {
                    Where::And(vec![self.condition(left)?, self.condition(right)?])
                }
                BinaryOperator::Or => {
                    Where::Or(vec![self.condition(left)?, self.condition(right)?])
                }
                BinaryOperator::Eq => cmp(left, Op::Eq, right)?,
                BinaryOperator::NotEq => cmp(left, Op::Ne, right)?,
                BinaryOperator::Gt => cmp(left, Op::Gt, right)?,
                BinaryOperator::GtEq => cmp(left, Op::Ge, right)?,
                BinaryOperator::Lt => cmp(left, Op::Lt, right)?,
                BinaryOperator::LtEq => cmp(left, Op::Le, right)?,
                other => return Err(unsupported(format!("operator {other}"))),
            },
            Expr::IsNull(c) => Where::Cmp(self.column(c)?, Op::Eq, Operand::Null),
            Expr::IsNotNull(c) => Where::Cmp(self.column(c)?, Op::Ne, Operand::Null),
            Expr::InList {
                expr,
                list,
                negated,
            } => {
                let c = self.column(expr)?;
                let op = if *negated { Op::Ne } else { Op::Eq };
                let each = list
                    .iter()
                    .map(|v| Ok(Where::Cmp(c.clone(), op, operand_of(literal(v)?))))
                    .collect::<Result<Vec<_>, OpsError>>()?;
                if *negated {
                    Where::And(each)
                } else {
                    Where::Or(each)
                }
            }
            Expr::Between {
                expr,
                negated: false,
                low,
                high,
            } => {
                let c = self.column(expr)?;
                Where::And(vec![
                    Where::Cmp(c.clone(), Op::Ge, operand_of(literal(low)?)),
                    Where::Cmp(c, Op::Le, operand_of(literal(high)?)),
                ])
            }
            Expr::Like {
                negated: false,
                any: false,
                expr,
                pattern,
                escape_char: None,
            }
            | Expr::ILike {
                negated: false,
                any: false,
                expr,
                pattern,
                escape_char: None,
            } => {
                let c = self.column(expr)?;
                let Value::String(p) = literal(pattern)? else {
                    return Err(bad("LIKE needs a string pattern"));
                };
                let (op, inner) = wildcard(&p, '%');
                if inner.contains(['%', '_']) {
                    return Err(unsupported(format!(
                        "LIKE pattern '{p}' (only % at the start and/or end)"
                    )));
                }
                Where::Cmp(c, op, Operand::String(inner.to_owned()))
            }
            other => return Err(unsupported(format!("condition {other}"))),
        })
    }
}

impl Where {
    /// The sources the condition reads.
    fn sources(&self, out: &mut Vec<usize>) {
        match self {
            Where::And(w) | Where::Or(w) => w.iter().for_each(|w| w.sources(out)),
            Where::Cmp(c, _, _) => {
                if !out.contains(&c.source) {
                    out.push(c.source);
                }
            }
        }
    }

    fn into_filter(self) -> Filter {
        match self {
            Where::And(w) => Filter::And(w.into_iter().map(Where::into_filter).collect()),
            Where::Or(w) => Filter::Or(w.into_iter().map(Where::into_filter).collect()),
            Where::Cmp(c, op, value) => condition(&c.name, op, value),
        }
    }

    /// Its top-level AND terms, nested ANDs flattened (`a AND b AND c` parses as `(a AND b) AND c`).
    fn conjuncts(self, out: &mut Vec<Where>) {
        match self {
            Where::And(w) => w.into_iter().for_each(|t| t.conjuncts(out)),
            other => out.push(other),
        }
    }

    /// Splits a clause into one filter per source: its top-level AND terms must each read one
    /// source.
    fn split(self, sources: usize) -> Result<Vec<Option<Filter>>, OpsError> {
        let mut terms = Vec::new();
        self.conjuncts(&mut terms);
        let mut per: Vec<Vec<Filter>> = (0..sources).map(|_| Vec::new()).collect();
        for t in terms {
            let mut read = Vec::new();
            t.sources(&mut read);
            let [s] = read.as_slice() else {
                return Err(unsupported(
                    "a condition across joined tables outside the ON clause",
                ));
            };
            per[*s].push(t.into_filter());
        }
        Ok(per
            .into_iter()
            .map(|mut f| match f.len() {
                0 => None,
                1 => f.pop(),
                _ => Some(Filter::And(f)),
            })
            .collect())
    }
}

/// LIMIT and OFFSET.
fn limit_of(clause: Option<&LimitClause>) -> Result<Option<Limit>, OpsError> {
    Ok(match clause {
        None => None,
        Some(LimitClause::LimitOffset { limit, offset, .. }) => {
            let start = offset
                .as_ref()
                .map(|o| count(&o.value))
                .transpose()?
                .unwrap_or(0);
            let n = limit.as_ref().map(count).transpose()?;
            Some(Limit {
                start,
                end: n.map_or(usize::MAX, |c| start.saturating_add(c)),
            })
        }
        Some(LimitClause::OffsetCommaLimit { offset, limit }) => {
            let start = count(offset)?;
            Some(Limit {
                start,
                end: start.saturating_add(count(limit)?),
            })
        }
    })
}

/// The rows of a grouped (or aggregated) query: one per distinct value of `group_by` (one in all
/// without it), with the value of each select item.
fn group(rows: &[Row], group_by: &[Col], items: &[Item]) -> Vec<(Row, Vec<Value>)> {
    // Groups in the order their first row came, found by their key.
    let mut groups: Vec<Vec<&Row>> = Vec::new();
    let mut at: HashMap<Vec<Vec<u8>>, usize> = HashMap::new();
    for r in rows {
        let key: Vec<Vec<u8>> = group_by.iter().map(|c| sort_key(get(r, c))).collect();
        let i = *at.entry(key).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[i].push(r);
    }
    if groups.is_empty() && group_by.is_empty() {
        groups.push(Vec::new());
    }
    groups
        .into_iter()
        .map(|members| {
            let first = members.first().map(|r| (*r).clone()).unwrap_or_default();
            let values = items
                .iter()
                .map(|i| match i {
                    Item::Aggregate(a, c, _) => a.over(&members, c.as_ref()),
                    Item::Column(c, _) => get(&first, c).cloned().unwrap_or(Value::Null),
                    Item::Star(_) => Value::Null,
                })
                .collect();
            (first, values)
        })
        .collect()
}

/// Sorts result rows by ORDER BY's keys, in memory.
fn sort(out: &mut [(Row, Vec<Value>)], order: &[(OrderTarget, bool)]) {
    if order.is_empty() {
        return;
    }
    out.sort_by_cached_key(|(row, values)| {
        order
            .iter()
            .map(|(t, descending)| {
                let k = match t {
                    OrderTarget::Col(c) => sort_key(get(row, c)),
                    OrderTarget::Item(i) => sort_key(values.get(*i)),
                };
                if *descending {
                    Key::Desc(std::cmp::Reverse(k))
                } else {
                    Key::Asc(k)
                }
            })
            .collect::<Vec<_>>()
    });
}

/// The value of `col` in `row`.
fn get<'r>(row: &'r Row, col: &Col) -> Option<&'r Value> {
    row.get(col.source)?.as_ref()?.get(&col.name)
}

fn aggregate(name: &str) -> Option<Aggregate> {
    Some(match name.to_ascii_lowercase().as_str() {
        "count" => Aggregate::Count,
        "min" => Aggregate::Min,
        "max" => Aggregate::Max,
        "avg" => Aggregate::Avg,
        "sum" => Aggregate::Sum,
        _ => return None,
    })
}

impl Aggregate {
    fn over(self, rows: &[&Row], col: Option<&Col>) -> Value {
        let values = || rows.iter().filter_map(|r| col.and_then(|c| get(r, c)));
        let present = || values().filter(|v| !matches!(v, Value::Null));
        match self {
            Aggregate::Count => Value::Int(match col {
                None => rows.len(),
                Some(_) => present().count(),
            } as i64),
            Aggregate::Min => present()
                .min_by_key(|v| sort_key(Some(v)))
                .cloned()
                .unwrap_or(Value::Null),
            Aggregate::Max => present()
                .max_by_key(|v| sort_key(Some(v)))
                .cloned()
                .unwrap_or(Value::Null),
            Aggregate::Sum | Aggregate::Avg => {
                let numbers: Vec<f64> = present().filter_map(Value::as_f64).collect();
                if numbers.is_empty() {
                    return Value::Null;
                }
                let sum: f64 = numbers.iter().sum();
                let out = match self {
                    Aggregate::Avg => sum / numbers.len() as f64,
                    _ => sum,
                };
                if out.fract() == 0.0 && out.abs() < 9e15 {
                    Value::Int(out as i64)
                } else {
                    Value::Float(out)
                }
            }
        }
    }
}

impl Operations {
    /// Runs one SQL statement.
    pub(super) async fn sql(&self, env: &Value, user: &User) -> Result<Value, OpsError> {
        let Some(Value::String(text)) = env.get("sql") else {
            return Err(bad("The 'sql' parameter is missing from the request body"));
        };
        let mut statements =
            Parser::parse_sql(&MySqlDialect {}, text).map_err(|e| invalid(text, e))?;
        let statement = match (statements.pop(), statements.is_empty()) {
            (Some(s), true) => s,
            (None, _) => return Err(bad("The 'sql' parameter holds no statement")),
            (Some(_), false) => return Err(bad("One SQL statement per operation")),
        };
        match statement {
            Statement::Query(q) => self.select(&q, user).await,
            Statement::Insert(i) => self.insert(&i, user).await,
            Statement::Update(u) => self.update(&u, user).await,
            Statement::Delete(d) => self.delete_where(&d, user).await,
            other => Err(unsupported(format!(
                "statement {} (SELECT, INSERT, UPDATE and DELETE are)",
                other.to_string().split_whitespace().next().unwrap_or("")
            ))),
        }
    }

    fn source<'u>(
        &self,
        factor: &TableFactor,
        user: &'u User,
        actions: &[Action],
    ) -> Result<Source<'u>, OpsError> {
        let TableFactor::Table { name, alias, .. } = factor else {
            return Err(unsupported(format!("FROM {factor}")));
        };
        let (database, table_name) = table_name(name)?;
        let (table, restricted) = self
            .table_for(&database, &table_name, user, actions)
            .map_err(|mut e| {
                if e.status == 400 {
                    e.status = 404;
                }
                e
            })?;
        Ok(Source {
            alias: alias
                .as_ref()
                .map_or_else(|| table.name.clone(), |a| a.name.value.clone()),
            table,
            restricted,
        })
    }

    /// The records of `source` that `filter` selects (sorted and limited when given).
    async fn rows_of(
        &self,
        source: &Source<'_>,
        filter: Option<Filter>,
        sort: Vec<SortKey>,
        limit: Option<Limit>,
    ) -> Result<Vec<Value>, OpsError> {
        let parsed = Query {
            filter,
            select: None,
            limit,
            sort,
        };
        let plan = query::plan(&source.table, "", parsed, Joins::default())?;
        let rows = query::collect(&self.router, &plan).await?;
        rows.iter()
            .map(|r| Ok(output::body_value(output::stored_record(&r.stored)?.body)?))
            .collect()
    }

    async fn select(&self, q: &ast::Query, user: &User) -> Result<Value, OpsError> {
        let SetExpr::Select(s) = q.body.as_ref() else {
            return Err(unsupported(&q.body));
        };
        if q.with.is_some() || s.distinct.is_some() || s.having.is_some() {
            return Err(unsupported("WITH, DISTINCT and HAVING"));
        }
        let [TableWithJoins { relation, joins }] = s.from.as_slice() else {
            return Err(unsupported(
                "SELECT needs FROM with one table (and at most one JOIN)",
            ));
        };
        let mut sources = vec![self.source(relation, user, &[Action::Read])?];
        let mut join: Option<(Col, Col, bool)> = None;
        match joins.as_slice() {
            [] => {}
            [j] => {
                let (constraint, left_join) = match &j.join_operator {
                    JoinOperator::Join(c) | JoinOperator::Inner(c) => (c, false),
                    JoinOperator::Left(c) | JoinOperator::LeftOuter(c) => (c, true),
                    other => return Err(unsupported(format!("join {other:?}"))),
                };
                sources.push(self.source(&j.relation, user, &[Action::Read])?);
                let JoinConstraint::On(Expr::BinaryOp {
                    left,
                    op: BinaryOperator::Eq,
                    right,
                }) = constraint
                else {
                    return Err(unsupported("a JOIN needs ON a.x = b.y"));
                };
                let scope = Scope { sources: &sources };
                let (a, b) = (scope.column(left)?, scope.column(right)?);
                let (outer, inner) = match (a.source, b.source) {
                    (0, 1) => (a, b),
                    (1, 0) => (b, a),
                    _ => return Err(bad("ON must compare a column of each table")),
                };
                join = Some((outer, inner, left_join));
            }
            _ => return Err(unsupported("more than one JOIN")),
        }
        let scope = Scope { sources: &sources };

        let items = scope.items(&s.projection)?;
        let group_by: Vec<Col> = match &s.group_by {
            GroupByExpr::Expressions(exprs, mods) if mods.is_empty() => exprs
                .iter()
                .map(|e| scope.column(e))
                .collect::<Result<_, _>>()?,
            other => return Err(unsupported(other)),
        };
        let aggregated =
            !group_by.is_empty() || items.iter().any(|i| matches!(i, Item::Aggregate(..)));

        let order = scope.order_by(q.order_by.as_ref(), &items, aggregated)?;
        let limit = limit_of(q.limit_clause.as_ref())?;
        let filters = match &s.selection {
            Some(w) => scope.condition(w)?.split(sources.len())?,
            None => vec![None; sources.len()],
        };
        let mut filters = filters.into_iter();
        let first = filters.next().flatten();
        // One table, no aggregates, sorted by its own columns: the query plan sorts and limits.
        let pushed = join.is_none()
            && !aggregated
            && order.iter().all(|(t, _)| matches!(t, OrderTarget::Col(_)))
            && (first.is_some()
                || order.first().is_none_or(|(t, _)| match t {
                    OrderTarget::Col(c) => query::is_indexed(&sources[0].table, &c.name),
                    OrderTarget::Item(_) => false,
                }));
        let rows: Vec<Row> = if pushed {
            let sort = order
                .iter()
                .filter_map(|(t, descending)| match t {
                    OrderTarget::Col(c) => Some(SortKey {
                        path: vec![c.name.clone()],
                        descending: *descending,
                    }),
                    OrderTarget::Item(_) => None,
                })
                .collect();
            self.rows_of(&sources[0], first, sort, limit)
                .await?
                .into_iter()
                .map(|r| vec![Some(r)])
                .collect()
        } else {
            let left = self.rows_of(&sources[0], first, Vec::new(), None).await?;
            match &join {
                None => left.into_iter().map(|r| vec![Some(r)]).collect(),
                Some((outer, inner, left_join)) => {
                    let right_filter = filters.next().flatten();
                    self.join(&sources[1], left, outer, inner, *left_join, right_filter)
                        .await?
                }
            }
        };

        let mut out: Vec<(Row, Vec<Value>)> = if aggregated {
            group(&rows, &group_by, &items)
        } else {
            rows.into_iter().map(|r| (r, Vec::new())).collect()
        };
        if !pushed {
            sort(&mut out, &order);
            if let Some(Limit { start, end }) = limit {
                out = out.into_iter().take(end).skip(start).collect();
            }
        }
        let mut result = Vec::with_capacity(out.len());
        for (row, values) in &out {
            result.push(project_row(&sources, &items, row, values));
        }
        Ok(Value::Array(result))
    }

    /// Joins `left` rows to the records of `right` whose `inner` column equals their `outer`
    /// one. Few distinct values are looked up through `inner`'s index (or the primary key);
    /// many read the filtered table once.
    async fn join(
        &self,
        right: &Source<'_>,
        left: Vec<Value>,
        outer: &Col,
        inner: &Col,
        left_join: bool,
        filter: Option<Filter>,
    ) -> Result<Vec<Row>, OpsError> {
        let mut wanted: Vec<Value> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for r in &left {
            if let Some(v) = r.get(&outer.name)
                && !matches!(v, Value::Null)
                && seen.insert(sort_key(Some(v)))
            {
                wanted.push(v.clone());
            }
        }
        if wanted.is_empty() {
            return Ok(if left_join {
                left.into_iter().map(|l| vec![Some(l), None]).collect()
            } else {
                Vec::new()
            });
        }
        let lookup = (wanted.len() <= JOIN_LOOKUP_MAX).then(|| {
            Filter::Or(
                wanted
                    .into_iter()
                    .map(|v| condition(&inner.name, Op::Eq, operand_of(v)))
                    .collect(),
            )
        });
        let filter = match (lookup, filter) {
            (Some(l), Some(f)) => Some(Filter::And(vec![l, f])),
            (l, f) => l.or(f),
        };
        let matches = self.rows_of(right, filter, Vec::new(), None).await?;
        let mut by_value: HashMap<Vec<u8>, Vec<usize>> = HashMap::new();
        for (i, r) in matches.iter().enumerate() {
            by_value
                .entry(sort_key(r.get(&inner.name)))
                .or_default()
                .push(i);
        }
        let mut rows = Vec::new();
        for l in left {
            let hits = l
                .get(&outer.name)
                .filter(|v| !matches!(v, Value::Null))
                .and_then(|v| by_value.get(&sort_key(Some(v))));
            match hits {
                Some(hits) => {
                    for &i in hits {
                        rows.push(vec![Some(l.clone()), Some(matches[i].clone())]);
                    }
                }
                None if left_join => rows.push(vec![Some(l), None]),
                None => {}
            }
        }
        Ok(rows)
    }

    async fn insert(&self, i: &ast::Insert, user: &User) -> Result<Value, OpsError> {
        let ast::TableObject::TableName(name) = &i.table else {
            return Err(unsupported(&i.table));
        };
        let (database, table_name) = table_name(name)?;
        let (table, restricted) =
            self.table_for(&database, &table_name, user, Write::Insert.actions())?;
        let Some(source) = &i.source else {
            return Err(bad("INSERT needs VALUES"));
        };
        let SetExpr::Values(values) = source.body.as_ref() else {
            return Err(unsupported("INSERT ... SELECT"));
        };
        let columns: Vec<String> = i.columns.iter().map(|c| c.to_string()).collect();
        if columns.is_empty() {
            return Err(bad("INSERT needs a column list"));
        }
        let mut records = Vec::with_capacity(values.rows.len());
        for row in &values.rows {
            if row.content.len() != columns.len() {
                return Err(bad(format!(
                    "INSERT has {} columns but a row of {} values",
                    columns.len(),
                    row.content.len()
                )));
            }
            let props = columns
                .iter()
                .zip(&row.content)
                .map(|(c, e)| Ok((c.clone(), literal(e)?)))
                .collect::<Result<Vec<_>, OpsError>>()?;
            records.push(Value::Object(props));
        }
        self.write_records(table, restricted, records, Write::Insert)
            .await
    }

    /// The primary keys of the records of `table` that `selection` matches.
    async fn keys_where(
        &self,
        source: &Source<'_>,
        selection: Option<&Expr>,
    ) -> Result<Vec<Value>, OpsError> {
        let sources = std::slice::from_ref(source);
        let filter = match selection {
            Some(w) => Scope { sources }.condition(w)?.split(1)?.pop().flatten(),
            None => None,
        };
        let pk = &source.table.primary_key().name;
        Ok(self
            .rows_of(source, filter, Vec::new(), None)
            .await?
            .into_iter()
            .filter_map(|r| r.get(pk).cloned())
            .collect())
    }

    async fn update(&self, u: &ast::Update, user: &User) -> Result<Value, OpsError> {
        if !u.table.joins.is_empty() || u.from.is_some() {
            return Err(unsupported("UPDATE with joins"));
        }
        let source = self.source(&u.table.relation, user, &[Action::Update, Action::Read])?;
        let mut set: Vec<(String, Value)> = Vec::new();
        for a in &u.assignments {
            let ast::AssignmentTarget::ColumnName(c) = &a.target else {
                return Err(unsupported("UPDATE of a tuple"));
            };
            set.push((c.to_string(), literal(&a.value)?));
        }
        let keys = self.keys_where(&source, u.selection.as_ref()).await?;
        let pk = source.table.primary_key().name.clone();
        let records = keys
            .into_iter()
            .map(|k| {
                let mut props = set.clone();
                props.push((pk.clone(), k));
                Value::Object(props)
            })
            .collect();
        self.write_records(
            source.table.clone(),
            source.restricted,
            records,
            Write::Update,
        )
        .await
    }

    async fn delete_where(&self, d: &ast::Delete, user: &User) -> Result<Value, OpsError> {
        let (ast::FromTable::WithFromKeyword(from) | ast::FromTable::WithoutKeyword(from)) =
            &d.from;
        let [TableWithJoins { relation, joins }] = from.as_slice() else {
            return Err(unsupported("DELETE from more than one table"));
        };
        if !joins.is_empty() || d.using.is_some() {
            return Err(unsupported("DELETE with joins"));
        }
        let source = self.source(relation, user, &[Action::Delete, Action::Read])?;
        let keys = self.keys_where(&source, d.selection.as_ref()).await?;
        self.delete_ids(&source.table, keys).await
    }
}

/// One result object: the select items of `row` (aggregates from `values`), by label.
fn project_row(sources: &[Source<'_>], items: &[Item], row: &Row, values: &[Value]) -> Value {
    let mut out: Vec<(String, Value)> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match item {
            Item::Star(which) => {
                for (s, source) in sources.iter().enumerate() {
                    if which.is_some_and(|w| w != s) {
                        continue;
                    }
                    let pk = &source.table.primary_key().name;
                    for a in source.table.attributes.iter().filter(|a| a.is_stored()) {
                        if source
                            .restricted
                            .is_some_and(|p| !p.reads_attribute(&a.name, a.name == *pk))
                        {
                            continue;
                        }
                        let v = get(
                            row,
                            &Col {
                                source: s,
                                name: a.name.clone(),
                            },
                        );
                        set(&mut out, &a.name, v.cloned().unwrap_or(Value::Null));
                    }
                }
            }
            Item::Column(c, label) => {
                set(&mut out, label, get(row, c).cloned().unwrap_or(Value::Null));
            }
            Item::Aggregate(_, _, label) => {
                set(
                    &mut out,
                    label,
                    values.get(i).cloned().unwrap_or(Value::Null),
                );
            }
        }
    }
    Value::Object(out)
}

/// What an ORDER BY key sorts on.
enum OrderTarget {
    Col(Col),
    /// A select item (an aggregate, or any item of a grouped query), by position.
    Item(usize),
}

impl Item {
    fn label(&self) -> Option<&str> {
        match self {
            Item::Column(_, l) | Item::Aggregate(_, _, l) => Some(l),
            Item::Star(_) => None,
        }
    }
}

/// One ORDER BY key of a row (a position of the key list has the same direction in every row).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Asc(Vec<u8>),
    Desc(std::cmp::Reverse<Vec<u8>>),
}

/// Sets `name` in an object being built (a later item of the same name wins).
fn set(out: &mut Vec<(String, Value)>, name: &str, v: Value) {
    match out.iter_mut().find(|(k, _)| k == name) {
        Some((_, old)) => *old = v,
        None => out.push((name.to_owned(), v)),
    }
}

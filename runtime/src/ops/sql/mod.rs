//! `{"operation":"sql"}` (docs/operations.md): SELECT, INSERT, UPDATE and DELETE, parsed by
//! `sqlparser`, compiled to expressions (`expr.rs`, with the functions of `functions.rs`) and
//! run on the same plans as REST queries.
//!
//! The terms of a WHERE clause that compare one table's attribute with a literal become that
//! table's query filter, so they walk the same indexes on every shard; ORDER BY and LIMIT go
//! with them when one table is read without aggregates. Any number of joins (inner, left,
//! comma-separated) are made table by table, each through an equality with the tables before
//! it, looked up through the joined table's index when few values are wanted. What remains
//! (expressions, functions, conditions across tables, GROUP BY, HAVING, DISTINCT, sorts the
//! indexes cannot give) is evaluated on the joined rows in memory.
//!
//! Tables are `database.table` (a bare name means `data`); names may be quoted with backticks
//! or brackets. Errors are 400 with the position sqlparser reports, 404 for a missing table or
//! column, and the role checks of the data operations apply.

mod expr;
mod functions;
mod geo;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use sqlparser::ast::{
    self, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, JoinConstraint,
    JoinOperator, LimitClause, ObjectName, OrderByKind, OrderBySort, SelectItem, SetExpr,
    Statement, TableFactor, UnaryOperator,
};
use sqlparser::dialect::MySqlDialect;
use sqlparser::parser::Parser;
use tessera_protocol::query::{Filter, Limit, Op, Operand, Query, SortKey};
use tessera_storage::query::sort_key;
use tessera_storage::schema::{FieldType, Scalar};
use tessera_storage::{Table, Value};

use super::csv::auto_cast;
use super::data::Write;
use super::{Operations, OpsError, bad, fail, forbidden};
use crate::app::output;
use crate::app::permissions::{Action, TablePermission, User};
use crate::data::conditions::{condition, operand, wildcard};
use crate::data::query;
use crate::data::query::Joins;
use expr::{Aggregate, AggregateCall, BinOp, Col, Context, Ex, Row, compare, get, literal, number};
use functions::Func;

/// Most values of an indexed join lookup; with more, the joined table is read whole.
const JOIN_LOOKUP_MAX: usize = 1000;

/// A table a statement reads, with what names it in the statement.
struct Source<'u> {
    table: Arc<Table>,
    alias: String,
    restricted: Option<&'u TablePermission>,
    /// In a SELECT, a table the role lacks the permission on (or does not know): Harper's
    /// refusal of it (`unauthorized_access` and `invalid_schema_items`), reported with
    /// whatever else the statement may not read.
    refused: Option<serde_json::Value>,
}

impl Source<'_> {
    fn defines(&self, name: &str) -> bool {
        self.table.attribute(name).is_some()
    }
}

/// One item of a select list.
enum Item {
    /// `*` or `alias.*`: every attribute of one source (or of all).
    Star(Option<usize>),
    Expr(Ex, String),
}

/// How a table joins the ones before it.
#[derive(Clone, Copy, PartialEq)]
enum JoinKind {
    Inner,
    Left,
}

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

/// `[name]` quoting (outside string literals) as the backticks sqlparser reads.
fn brackets_as_backticks(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quote: Option<char> = None;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if matches!(c, '\'' | '"' | '`') => quote = Some(c),
            None if c == '[' => {
                let rest: String = chars.clone().take_while(|c| *c != ']').collect();
                let closed = chars.clone().nth(rest.chars().count()) == Some(']');
                if closed && !rest.is_empty() && !rest.contains(['\'', '"', '`', ',', '[']) {
                    out.push('`');
                    out.push_str(&rest);
                    out.push('`');
                    for _ in 0..=rest.chars().count() {
                        chars.next();
                    }
                    continue;
                }
            }
            None => {}
        }
        out.push(c);
    }
    out
}

/// Words Harper's SQL (alasql's grammar) reserves that sqlparser would take as a table or
/// database name; written unquoted there they are refused, as on Harper, and in backticks they
/// name what they say.
const RESERVED: &[&str] = &[
    "all",
    "alter",
    "and",
    "any",
    "as",
    "asc",
    "begin",
    "between",
    "by",
    "call",
    "case",
    "cast",
    "check",
    "commit",
    "create",
    "cross",
    "declare",
    "default",
    "delete",
    "desc",
    "distinct",
    "drop",
    "else",
    "end",
    "except",
    "exec",
    "execute",
    "exists",
    "explain",
    "false",
    "fetch",
    "for",
    "foreign",
    "from",
    "group",
    "having",
    "if",
    "in",
    "index",
    "inner",
    "insert",
    "intersect",
    "into",
    "is",
    "join",
    "key",
    "left",
    "like",
    "limit",
    "merge",
    "natural",
    "not",
    "null",
    "offset",
    "on",
    "or",
    "order",
    "outer",
    "primary",
    "references",
    "return",
    "right",
    "rollback",
    "select",
    "set",
    "show",
    "table",
    "then",
    "to",
    "top",
    "true",
    "truncate",
    "union",
    "unique",
    "update",
    "use",
    "using",
    "values",
    "when",
    "where",
    "while",
    "with",
];

/// `database.table` (or `table` in `data`), and whether the database was named.
fn table_name(name: &ObjectName) -> Result<(String, String, bool), OpsError> {
    let idents: Vec<&ast::Ident> = name
        .0
        .iter()
        .map(|p| p.as_ident())
        .collect::<Option<_>>()
        .ok_or_else(|| unsupported(name))?;
    if let Some(word) = idents.iter().find(|i| {
        i.quote_style.is_none() && RESERVED.contains(&i.value.to_ascii_lowercase().as_str())
    }) {
        return Err(bad(format!(
            "Invalid SQL at: {name}. Please ensure your SQL is valid. Try adding backticks to reserved words and schema table references. ('{}' is a reserved word)",
            word.value
        )));
    }
    let parts: Vec<&str> = idents.iter().map(|i| i.value.as_str()).collect();
    match parts.as_slice() {
        [t] => Ok((
            crate::app::tables::DEFAULT_DATABASE.to_owned(),
            (*t).to_owned(),
            false,
        )),
        [d, t] => Ok(((*d).to_owned(), (*t).to_owned(), true)),
        _ => Err(unsupported(format!("table name {name}"))),
    }
}

/// The number of a LIMIT or OFFSET.
fn count(e: &Expr) -> Result<usize, OpsError> {
    match literal(e) {
        Some(Value::Int(i)) if i >= 0 => Ok(i as usize),
        _ => Err(bad("LIMIT and OFFSET take non-negative integers")),
    }
}

/// A literal compared with an attribute, as the query planner takes it: text converts to the
/// attribute's declared type, and to what it reads as (a number, a boolean) where the attribute
/// has none.
fn operand_for(table: &Table, name: &str, v: &Value) -> Operand {
    let Value::String(s) = v else {
        return operand(v);
    };
    let declared = table.attribute(name).and_then(|a| match &a.ty {
        FieldType::Scalar(s) => Some(*s),
        _ => None,
    });
    match declared {
        Some(Scalar::String | Scalar::Id) => Operand::String(s.clone()),
        Some(Scalar::Any) | None => match auto_cast(s) {
            v @ (Value::Int(_) | Value::Float(_) | Value::Bool(_)) => operand(&v),
            _ => Operand::String(s.clone()),
        },
        Some(_) => Operand::Text(s.clone()),
    }
}

/// A condition on one source that its query filter can take: the source and the filter.
fn pushed(ex: &Ex, sources: &[Source<'_>]) -> Option<(usize, Filter)> {
    let lit = |e: &Ex| match e {
        Ex::Lit(v) if !matches!(v, Value::Null) => Some(v.clone()),
        _ => None,
    };
    let on = |c: &Col, op: Op, v: &Value| {
        condition(
            &c.name,
            op,
            operand_for(&sources[c.source].table, &c.name, v),
        )
    };
    match ex {
        Ex::Bin(op, a, b) if op.is_comparison() => {
            let (c, v, op) = match (a.as_ref(), b.as_ref()) {
                (Ex::Col(c), other) => (c, lit(other)?, *op),
                (other, Ex::Col(c)) => (c, lit(other)?, op.flipped()),
                _ => return None,
            };
            let f = match op {
                BinOp::Eq => on(c, Op::Eq, &v),
                // A missing value is not unequal to anything in SQL.
                BinOp::Ne => Filter::And(vec![
                    on(c, Op::Ne, &v),
                    condition(&c.name, Op::Ne, Operand::Null),
                ]),
                BinOp::Lt => on(c, Op::Lt, &v),
                BinOp::Le => on(c, Op::Le, &v),
                BinOp::Gt => on(c, Op::Gt, &v),
                _ => on(c, Op::Ge, &v),
            };
            Some((c.source, f))
        }
        Ex::IsNull(e, negated) => match e.as_ref() {
            Ex::Col(c) => {
                let op = if *negated { Op::Ne } else { Op::Eq };
                Some((c.source, condition(&c.name, op, Operand::Null)))
            }
            _ => None,
        },
        Ex::In {
            ex,
            list,
            negated: false,
        } => {
            let Ex::Col(c) = ex.as_ref() else { return None };
            let each = list
                .iter()
                .map(|e| Some(on(c, Op::Eq, &lit(e)?)))
                .collect::<Option<Vec<_>>>()?;
            Some((c.source, Filter::Or(each)))
        }
        Ex::Between {
            ex,
            low,
            high,
            negated: false,
        } => {
            let Ex::Col(c) = ex.as_ref() else { return None };
            Some((
                c.source,
                Filter::And(vec![on(c, Op::Ge, &lit(low)?), on(c, Op::Le, &lit(high)?)]),
            ))
        }
        Ex::Like {
            ex,
            pattern,
            negated: false,
            ci: false,
        } => {
            let (Ex::Col(c), Some(Value::String(p))) = (ex.as_ref(), lit(pattern)) else {
                return None;
            };
            let (op, inner) = wildcard(&p, '%');
            if inner.contains(['%', '_']) {
                return None;
            }
            Some((
                c.source,
                condition(&c.name, op, Operand::String(inner.to_owned())),
            ))
        }
        Ex::Bin(op @ (BinOp::And | BinOp::Or), a, b) => {
            let ((sa, fa), (sb, fb)) = (pushed(a, sources)?, pushed(b, sources)?);
            if sa != sb {
                return None;
            }
            Some((
                sa,
                if *op == BinOp::And {
                    Filter::And(vec![fa, fb])
                } else {
                    Filter::Or(vec![fa, fb])
                },
            ))
        }
        _ => None,
    }
}

/// A string literal as Harper's SQL engine labels it: in a query without FROM as written,
/// else double-quoted unless it holds a double quote.
fn quoted(s: &str, from: bool) -> String {
    if s.contains('"') || !from {
        format!("'{s}'")
    } else {
        format!("\"{s}\"")
    }
}

/// The label Harper gives an unaliased select item: a column's name, else the expression as
/// its SQL engine prints it (aggregates upper-cased, arguments joined by commas alone).
fn label(e: &Expr, from: bool) -> String {
    match e {
        Expr::Identifier(i) => i.value.clone(),
        Expr::CompoundIdentifier(parts) => {
            parts.last().map(|p| p.value.clone()).unwrap_or_default()
        }
        Expr::Nested(inner) => format!("({})", inner_label(inner, from)),
        Expr::Value(v) => match &v.value {
            ast::Value::SingleQuotedString(s) | ast::Value::DoubleQuotedString(s) => {
                quoted(s, from)
            }
            other => other.to_string(),
        },
        Expr::BinaryOp { left, op, right } => {
            format!(
                "{} {op} {}",
                inner_label(left, from),
                inner_label(right, from)
            )
        }
        Expr::Function(f) => {
            let name = f.name.to_string();
            let args = match &f.args {
                FunctionArguments::List(list) => list
                    .args
                    .iter()
                    .map(|a| match a {
                        FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => inner_label(e, from),
                        FunctionArg::Unnamed(FunctionArgExpr::Wildcard) => "*".to_owned(),
                        other => other.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(","),
                _ => return name,
            };
            let name = if Aggregate::named(&name).is_some() {
                name.to_ascii_uppercase()
            } else {
                name
            };
            format!("{name}({args})")
        }
        other => other.to_string(),
    }
}

/// The label of an expression inside another: a qualified column keeps its qualifier
/// (`AVG(r.rating)`).
fn inner_label(e: &Expr, from: bool) -> String {
    match e {
        Expr::CompoundIdentifier(parts) => parts
            .iter()
            .map(|p| p.value.as_str())
            .collect::<Vec<_>>()
            .join("."),
        e => label(e, from),
    }
}

/// Resolves names and compiles expressions against a statement's sources, collecting the
/// aggregates of its select list, HAVING and ORDER BY.
struct Scope<'s, 'u> {
    sources: &'s [Source<'u>],
    aggregates: RefCell<Vec<AggregateCall>>,
    /// Whether aggregates may appear where compiling now.
    aggregating: Cell<bool>,
    /// The attributes named that the role may not read: unknown to it (Harper's
    /// `invalid_schema_items`), or known but not readable (by source). All are reported at once.
    hidden: RefCell<Vec<String>>,
    unreadable: RefCell<Vec<(usize, String)>>,
}

impl<'s, 'u> Scope<'s, 'u> {
    fn new(sources: &'s [Source<'u>]) -> Self {
        Scope {
            sources,
            aggregates: RefCell::new(Vec::new()),
            aggregating: Cell::new(false),
            hidden: RefCell::new(Vec::new()),
            unreadable: RefCell::new(Vec::new()),
        }
    }

    /// The role's refusal of what the statement reads, once it is compiled: every attribute
    /// it may not read, as Harper lists them.
    fn refusal(&self) -> Result<(), OpsError> {
        let hidden = self.hidden.borrow();
        let unreadable = self.unreadable.borrow();
        let list = |body: &serde_json::Value, key: &str| -> Vec<serde_json::Value> {
            body[key].as_array().cloned().unwrap_or_default()
        };
        let refused: Vec<serde_json::Value> = self
            .sources
            .iter()
            .filter_map(|s| s.refused.as_ref())
            .flat_map(|b| list(b, "unauthorized_access"))
            .collect();
        let missing: Vec<serde_json::Value> = self
            .sources
            .iter()
            .filter_map(|s| s.refused.as_ref())
            .flat_map(|b| list(b, "invalid_schema_items"))
            .chain(hidden.iter().map(|h| serde_json::json!(h)))
            .collect();
        if missing.is_empty() && unreadable.is_empty() && refused.is_empty() {
            return Ok(());
        }
        let mut by_source: Vec<(usize, Vec<serde_json::Value>)> = Vec::new();
        for (s, name) in unreadable.iter() {
            let entry =
                serde_json::json!({"attribute_name": name, "required_permissions": ["read"]});
            match by_source.iter_mut().find(|(x, _)| x == s) {
                Some((_, list)) => list.push(entry),
                None => by_source.push((*s, vec![entry])),
            }
        }
        let unauthorized: Vec<serde_json::Value> = refused
            .into_iter()
            .chain(by_source.into_iter().map(|(s, attrs)| {
                let t = &self.sources[s].table;
                serde_json::json!({"schema": t.database, "table": t.name,
                    "required_table_permissions": [], "required_attribute_permissions": attrs})
            }))
            .collect();
        Err(forbidden(
            serde_json::json!(unauthorized),
            serde_json::json!(missing),
        ))
    }

    fn source_named(&self, q: &str) -> Result<usize, OpsError> {
        self.sources
            .iter()
            .position(|s| s.alias == q || s.table.name == q)
            .ok_or_else(|| fail(404, format!("unknown table alias {q}")))
    }

    fn column(&self, qualifier: Option<&str>, name: &str) -> Result<Col, OpsError> {
        let found = match qualifier {
            Some(q) => self.source_named(q)?,
            None => self
                .sources
                .iter()
                .position(|s| s.defines(name))
                .unwrap_or(0),
        };
        let Some(source) = self.sources.get(found) else {
            return Err(fail(404, format!("unknown column {name}")));
        };
        if !source.defines(name) {
            return Err(fail(404, format!("unknown column {name}")));
        }
        if source.refused.is_none()
            && let Some(p) = source.restricted
        {
            let a = p
                .attribute(name, name == source.table.primary_key().name)
                .unwrap_or_default();
            if !a.visible() {
                let item = format!(
                    "Attribute '{name}' does not exist on '{}'",
                    source.table.full_name()
                );
                let mut hidden = self.hidden.borrow_mut();
                if !hidden.contains(&item) {
                    hidden.push(item);
                }
            } else if !a.read {
                let mut unreadable = self.unreadable.borrow_mut();
                if !unreadable.iter().any(|(s, n)| *s == found && n == name) {
                    unreadable.push((found, name.to_owned()));
                }
            }
        }
        Ok(Col {
            source: found,
            name: name.to_owned(),
        })
    }

    fn expr(&self, e: &Expr) -> Result<Ex, OpsError> {
        let boxed = |e: &Expr| self.expr(e).map(Box::new);
        if let Some(v) = literal(e) {
            return Ok(Ex::Lit(v));
        }
        Ok(match e {
            // JavaScript's `undefined`, which Harper's SQL takes as a value: no value.
            Expr::Identifier(i)
                if i.quote_style.is_none()
                    && i.value == "undefined"
                    && !self.sources.iter().any(|s| s.defines("undefined")) =>
            {
                Ex::Lit(Value::Null)
            }
            Expr::Identifier(i) => Ex::Col(self.column(None, &i.value)?),
            Expr::CompoundIdentifier(parts) => match parts.as_slice() {
                [q, n] => Ex::Col(self.column(Some(&q.value), &n.value)?),
                [_, q, n] => Ex::Col(self.column(Some(&q.value), &n.value)?),
                _ => return Err(unsupported(format!("column {e}"))),
            },
            Expr::Nested(inner) => self.expr(inner)?,
            Expr::UnaryOp { op, expr } => match op {
                UnaryOperator::Not => Ex::Not(boxed(expr)?),
                UnaryOperator::Minus => Ex::Neg(boxed(expr)?),
                UnaryOperator::Plus => self.expr(expr)?,
                other => return Err(unsupported(format!("operator {other}"))),
            },
            Expr::BinaryOp { left, op, right } => {
                let op = BinOp::of(op).ok_or_else(|| unsupported(format!("operator {op}")))?;
                Ex::Bin(op, boxed(left)?, boxed(right)?)
            }
            Expr::IsNull(e) => Ex::IsNull(boxed(e)?, false),
            Expr::IsNotNull(e) => Ex::IsNull(boxed(e)?, true),
            Expr::IsTrue(e) => Ex::Bin(BinOp::Eq, boxed(e)?, Box::new(Ex::Lit(Value::Bool(true)))),
            Expr::IsFalse(e) => {
                Ex::Bin(BinOp::Eq, boxed(e)?, Box::new(Ex::Lit(Value::Bool(false))))
            }
            Expr::InList {
                expr,
                list,
                negated,
            } => Ex::In {
                ex: boxed(expr)?,
                list: list
                    .iter()
                    .map(|e| self.expr(e))
                    .collect::<Result<_, _>>()?,
                negated: *negated,
            },
            Expr::Between {
                expr,
                negated,
                low,
                high,
            } => Ex::Between {
                ex: boxed(expr)?,
                low: boxed(low)?,
                high: boxed(high)?,
                negated: *negated,
            },
            Expr::Like {
                negated,
                expr,
                pattern,
                escape_char: None,
                ..
            }
            | Expr::ILike {
                negated,
                expr,
                pattern,
                escape_char: None,
                ..
            } => Ex::Like {
                ex: boxed(expr)?,
                pattern: boxed(pattern)?,
                negated: *negated,
                ci: matches!(e, Expr::ILike { .. }),
            },
            Expr::RLike {
                negated,
                expr,
                pattern,
                ..
            } => {
                let Some(Value::String(p)) = literal(pattern) else {
                    return Err(bad("REGEXP needs a string pattern"));
                };
                let pattern = regex::RegexBuilder::new(&p)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| bad(format!("Invalid REGEXP pattern '{p}': {e}")))?;
                Ex::Regexp {
                    ex: boxed(expr)?,
                    pattern,
                    negated: *negated,
                }
            }
            Expr::Case {
                operand,
                conditions,
                else_result,
                ..
            } => Ex::Case {
                operand: operand.as_deref().map(boxed).transpose()?,
                whens: conditions
                    .iter()
                    .map(|w| Ok((self.expr(&w.condition)?, self.expr(&w.result)?)))
                    .collect::<Result<_, OpsError>>()?,
                otherwise: else_result.as_deref().map(boxed).transpose()?,
            },
            Expr::Function(f) => self.call(f)?,
            // The forms sqlparser reads apart from other calls.
            Expr::Floor { expr, .. } => Ex::Call(Func::Floor, vec![self.expr(expr)?]),
            Expr::Ceil { expr, .. } => Ex::Call(Func::Ceil, vec![self.expr(expr)?]),
            Expr::Substring {
                expr,
                substring_from,
                substring_for,
                ..
            } => {
                let mut args = vec![self.expr(expr)?];
                args.push(match substring_from {
                    Some(f) => self.expr(f)?,
                    None => Ex::Lit(Value::Int(1)),
                });
                if let Some(n) = substring_for {
                    args.push(self.expr(n)?);
                }
                Ex::Call(Func::Substring, args)
            }
            Expr::Trim {
                expr,
                trim_where: None,
                trim_what: None,
                trim_characters: None,
            } => Ex::Call(Func::Trim, vec![self.expr(expr)?]),
            other => return Err(unsupported(format!("expression {other}"))),
        })
    }

    fn call(&self, f: &ast::Function) -> Result<Ex, OpsError> {
        let name = f.name.to_string();
        let (args, distinct) = match &f.args {
            FunctionArguments::None => (Vec::new(), false),
            FunctionArguments::List(list) => (
                list.args.iter().collect::<Vec<_>>(),
                matches!(
                    list.duplicate_treatment,
                    Some(ast::DuplicateTreatment::Distinct)
                ),
            ),
            FunctionArguments::Subquery(_) => return Err(unsupported("subqueries")),
        };
        if let Some(function) = Aggregate::named(&name) {
            if !self.aggregating.get() {
                return Err(bad(format!("{name}() is not allowed here")));
            }
            let arg = match args.as_slice() {
                [FunctionArg::Unnamed(FunctionArgExpr::Wildcard)] => None,
                [FunctionArg::Unnamed(FunctionArgExpr::Expr(e))] => {
                    // No aggregate inside an aggregate.
                    self.aggregating.set(false);
                    let arg = self.expr(e);
                    self.aggregating.set(true);
                    Some(arg?)
                }
                _ => return Err(bad(format!("{name}() takes one argument"))),
            };
            if arg.is_none() && function != Aggregate::Count {
                return Err(bad(format!("{name}(*) needs a column")));
            }
            let mut aggregates = self.aggregates.borrow_mut();
            aggregates.push(AggregateCall {
                function,
                arg,
                distinct,
            });
            return Ok(Ex::Aggregate(aggregates.len() - 1));
        }
        let (func, arity) =
            Func::named(&name).ok_or_else(|| unsupported(format!("function {name}")))?;
        if !arity.contains(&args.len()) {
            return Err(bad(format!(
                "{name}() takes {} arguments, not {}",
                if arity.start() == arity.end() {
                    arity.start().to_string()
                } else {
                    format!("{} or more", arity.start())
                },
                args.len()
            )));
        }
        let args = args
            .iter()
            .map(|a| match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => self.expr(e),
                other => Err(unsupported(format!("argument {other}"))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Ex::Call(func, args))
    }

    /// The items of a select list.
    fn items(&self, projection: &[SelectItem]) -> Result<Vec<Item>, OpsError> {
        let mut items = Vec::new();
        self.aggregating.set(true);
        for item in projection {
            items.push(match item {
                SelectItem::Wildcard(_) => Item::Star(None),
                SelectItem::QualifiedWildcard(kind, _) => {
                    let name = match kind {
                        ast::SelectItemQualifiedWildcardKind::ObjectName(n) => {
                            n.0.last()
                                .and_then(|p| p.as_ident())
                                .map_or_else(|| n.to_string(), |i| i.value.clone())
                        }
                        other => return Err(unsupported(other)),
                    };
                    Item::Star(Some(self.source_named(&name)?))
                }
                SelectItem::UnnamedExpr(e) => {
                    Item::Expr(self.expr(e)?, label(e, !self.sources.is_empty()))
                }
                SelectItem::ExprWithAlias { expr, alias } => {
                    Item::Expr(self.expr(expr)?, alias.value.clone())
                }
                other => return Err(unsupported(other)),
            });
        }
        self.aggregating.set(false);
        Ok(items)
    }

    /// A clause that may hold aggregates (HAVING, ORDER BY).
    fn aggregating_expr(&self, e: &Expr) -> Result<Ex, OpsError> {
        self.aggregating.set(true);
        let out = self.expr(e);
        self.aggregating.set(false);
        out
    }
}

/// One step of the FROM clause after the first table: the source it joins, how, and ON.
struct Step<'q> {
    kind: JoinKind,
    on: Option<&'q Expr>,
}

/// What an ORDER BY key sorts on.
enum OrderKey {
    /// A select item's value, by position.
    Item(usize),
    Expr(Ex),
}

/// One result row on its way out: its (first) joined row, its group's aggregates, its select
/// items' values and its sort keys.
struct Out {
    row: Row,
    aggregates: Vec<Value>,
    values: Vec<Value>,
}

/// One ORDER BY key of a row (a position of the key list has the same direction in every row).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Asc(Vec<u8>),
    Desc(std::cmp::Reverse<Vec<u8>>),
}

/// The value of an aggregate over a group's rows.
fn aggregate(call: &AggregateCall, rows: &[&Row], cx: &Context<'_>) -> Value {
    let mut values: Vec<Value> = match &call.arg {
        None => return Value::Int(rows.len() as i64),
        Some(arg) => rows
            .iter()
            .map(|r| arg.eval(r, cx))
            .filter(|v| !matches!(v, Value::Null))
            .collect(),
    };
    if call.distinct {
        let mut seen = HashSet::new();
        values.retain(|v| seen.insert(sort_key(Some(v))));
    }
    match call.function {
        Aggregate::Count => Value::Int(values.len() as i64),
        Aggregate::Min => values
            .into_iter()
            .min_by(|a, b| compare(a, b).unwrap_or(std::cmp::Ordering::Equal))
            .unwrap_or(Value::Null),
        Aggregate::Max => values
            .into_iter()
            .max_by(|a, b| compare(a, b).unwrap_or(std::cmp::Ordering::Equal))
            .unwrap_or(Value::Null),
        Aggregate::Sum | Aggregate::Avg => {
            let numbers: Vec<f64> = values.iter().filter_map(expr::as_number).collect();
            if numbers.is_empty() {
                return Value::Null;
            }
            let sum: f64 = numbers.iter().sum();
            number(match call.function {
                Aggregate::Avg => sum / numbers.len() as f64,
                _ => sum,
            })
        }
    }
}

/// Adds `name` to an object being built; a name already there gets the first free number
/// after it (`id`, `id1`, `id2`), as Harper's SQL engine names the columns of a join.
fn set(out: &mut Vec<(String, Value)>, name: &str, v: Value) {
    let taken = |n: &str| out.iter().any(|(k, _)| k == n);
    if !taken(name) {
        out.push((name.to_owned(), v));
        return;
    }
    let mut i = 1;
    while taken(&format!("{name}{i}")) {
        i += 1;
    }
    out.push((format!("{name}{i}"), v));
}

/// One result object: the select items of `row` (their values in `values`), by label.
fn project(sources: &[Source<'_>], items: &[Item], row: &Row, values: &[Value]) -> Value {
    let mut out: Vec<(String, Value)> = Vec::new();
    for (item, value) in items.iter().zip(values) {
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
                        let col = Col {
                            source: s,
                            name: a.name.clone(),
                        };
                        // A column the statement also selects under another name appears
                        // under that name only (`SELECT *, dog_name AS dname`).
                        let renamed = items.iter().any(
                            |i| matches!(i, Item::Expr(Ex::Col(c), l) if *c == col && *l != c.name),
                        );
                        if renamed {
                            continue;
                        }
                        set(
                            &mut out,
                            &a.name,
                            get(row, &col).cloned().unwrap_or(Value::Null),
                        );
                    }
                }
            }
            // No value at all (a geo function's NaN) leaves the label out, as Harper's SQL does.
            Item::Expr(_, _) if matches!(value, Value::Float(f) if f.is_nan()) => {}
            Item::Expr(_, label) => set(&mut out, label, value.clone()),
        }
    }
    Value::Object(out)
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

/// GROUP BY's expressions (a select item's label groups by that item's column).
fn group_by(
    scope: &Scope<'_, '_>,
    clause: &GroupByExpr,
    items: &[Item],
) -> Result<Vec<Ex>, OpsError> {
    match clause {
        GroupByExpr::Expressions(exprs, mods) if mods.is_empty() => exprs
            .iter()
            .map(|e| match e {
                Expr::Identifier(i) => items
                    .iter()
                    .find_map(|it| match it {
                        Item::Expr(Ex::Col(c), l) if *l == i.value => Some(Ex::Col(c.clone())),
                        _ => None,
                    })
                    .map_or_else(|| scope.expr(e), Ok),
                e => scope.expr(e),
            })
            .collect(),
        other => Err(unsupported(other)),
    }
}

/// Where each term of WHERE (and of each ON) is tested.
struct Placed {
    /// Per source, the terms its query filter takes.
    filters: Vec<Option<Filter>>,
    /// Per join, the terms tested as its rows are joined.
    on: Vec<Vec<Ex>>,
    /// The terms tested on the joined rows.
    residual: Vec<Ex>,
}

/// Places each term of WHERE: on one table's filter where it compares that table's attribute
/// with literals (never on the right of a LEFT JOIN, where it would keep the rows WHERE
/// drops), else on the inner join that brings the last table it reads, else on the joined rows.
/// ON terms on the joined table alone narrow its read.
fn place_conditions(
    scope: &Scope<'_, '_>,
    steps: &[Step<'_>],
    selection: Option<&Expr>,
) -> Result<Placed, OpsError> {
    let sources = scope.sources;
    let mut filters: Vec<Vec<Filter>> = (0..sources.len()).map(|_| Vec::new()).collect();
    let mut at_join: Vec<Vec<Ex>> = (0..steps.len()).map(|_| Vec::new()).collect();
    let mut residual: Vec<Ex> = Vec::new();
    let right_of_left_join = |k: usize| k > 0 && steps[k - 1].kind == JoinKind::Left;
    if let Some(w) = selection {
        let mut terms = Vec::new();
        scope.expr(w)?.conjuncts(&mut terms);
        for t in terms {
            let mut read = Vec::new();
            t.sources(&mut read);
            let last = read.iter().copied().max();
            match (pushed(&t, sources), last) {
                (Some((k, f)), _) if !right_of_left_join(k) => filters[k].push(f),
                (_, Some(k)) if k > 0 && !read.iter().any(|s| right_of_left_join(*s)) => {
                    at_join[k - 1].push(t)
                }
                _ => residual.push(t),
            }
        }
    }
    let mut on: Vec<Vec<Ex>> = Vec::with_capacity(steps.len());
    for (i, step) in steps.iter().enumerate() {
        let mut terms = std::mem::take(&mut at_join[i]);
        if let Some(e) = step.on {
            scope.expr(e)?.conjuncts(&mut terms);
        }
        let mut rest = Vec::new();
        for t in terms {
            match pushed(&t, sources) {
                Some((k, f)) if k == i + 1 => filters[k].push(f),
                _ => rest.push(t),
            }
        }
        on.push(rest);
    }
    let filters = filters
        .into_iter()
        .map(|mut f| match f.len() {
            0 => None,
            1 => f.pop(),
            _ => Some(Filter::And(f)),
        })
        .collect();
    Ok(Placed {
        filters,
        on,
        residual,
    })
}

/// The result rows before they are shaped: one per joined row, or with `grouping` (GROUP BY's
/// expressions and the aggregates) one per group with its aggregates; each with its select
/// items' values, HAVING applied.
fn evaluate(
    rows: Vec<Row>,
    grouping: Option<(&[Ex], &[AggregateCall])>,
    items: &[Item],
    having: Option<&Ex>,
    now: f64,
) -> Vec<Out> {
    let plain = Context {
        now,
        aggregates: &[],
    };
    let mut out: Vec<Out> = match grouping {
        None => rows
            .into_iter()
            .map(|row| Out {
                row,
                aggregates: Vec::new(),
                values: Vec::new(),
            })
            .collect(),
        Some((group_by, aggregates)) => {
            let mut groups: Vec<Vec<Row>> = Vec::new();
            let mut at: HashMap<Vec<Vec<u8>>, usize> = HashMap::new();
            for r in rows {
                let key: Vec<Vec<u8>> = group_by
                    .iter()
                    .map(|g| sort_key(Some(&g.eval(&r, &plain))))
                    .collect();
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
                    let refs: Vec<&Row> = members.iter().collect();
                    let values = aggregates
                        .iter()
                        .map(|a| aggregate(a, &refs, &plain))
                        .collect();
                    Out {
                        row: members.into_iter().next().unwrap_or_default(),
                        aggregates: values,
                        values: Vec::new(),
                    }
                })
                .collect()
        }
    };
    for o in &mut out {
        let cx = Context {
            now,
            aggregates: &o.aggregates,
        };
        o.values = items
            .iter()
            .map(|i| match i {
                Item::Expr(e, _) => e.eval(&o.row, &cx),
                Item::Star(_) => Value::Null,
            })
            .collect();
    }
    if let Some(h) = having {
        out.retain(|o| {
            h.holds(
                &o.row,
                &Context {
                    now,
                    aggregates: &o.aggregates,
                },
            )
        });
    }
    out
}

/// How a SELECT's result rows are shaped: projected, sorted, made distinct and limited.
struct Shape<'a, 'u> {
    sources: &'a [Source<'u>],
    items: &'a [Item],
    order: &'a [(OrderKey, bool)],
    distinct: bool,
    limit: Option<Limit>,
}

impl Shape<'_, '_> {
    fn finish(&self, out: Vec<Out>, now: f64) -> Value {
        let mut result: Vec<(Value, Vec<Key>)> = out
            .iter()
            .map(|o| {
                let cx = Context {
                    now,
                    aggregates: &o.aggregates,
                };
                let keys = self
                    .order
                    .iter()
                    .map(|(k, descending)| {
                        let v = match k {
                            OrderKey::Item(i) => o.values[*i].clone(),
                            OrderKey::Expr(e) => e.eval(&o.row, &cx),
                        };
                        // NaN sorts with the missing values, first.
                        let v = match v {
                            Value::Float(f) if f.is_nan() => Value::Null,
                            v => v,
                        };
                        let k = sort_key(Some(&v));
                        if *descending {
                            Key::Desc(std::cmp::Reverse(k))
                        } else {
                            Key::Asc(k)
                        }
                    })
                    .collect();
                (project(self.sources, self.items, &o.row, &o.values), keys)
            })
            .collect();
        // A `SELECT *` of a table the role may read no attribute of finds nothing.
        if self.items.iter().all(|i| matches!(i, Item::Star(_))) {
            result.retain(|(v, _)| !matches!(v, Value::Object(o) if o.is_empty()));
        }
        if self.distinct {
            let mut seen = HashSet::new();
            result.retain(|(v, _)| seen.insert(v.to_json()));
        }
        if !self.order.is_empty() {
            result.sort_by(|a, b| a.1.cmp(&b.1));
        }
        if let Some(Limit { start, end }) = self.limit {
            result = result.into_iter().take(end).skip(start).collect();
        }
        Value::Array(result.into_iter().map(|(v, _)| v).collect())
    }
}

/// The statement's time, in whole milliseconds.
fn now_ms() -> f64 {
    (tessera_storage::shard::now_micros() / 1000) as f64
}

impl Operations {
    /// Runs one SQL statement.
    pub(super) async fn sql(&self, env: &Value, user: &User) -> Result<Value, OpsError> {
        let Some(Value::String(text)) = env.get("sql") else {
            return Err(bad("The 'sql' parameter is missing from the request body"));
        };
        let text = brackets_as_backticks(text);
        let mut statements =
            Parser::parse_sql(&MySqlDialect {}, &text).map_err(|e| invalid(&text, e))?;
        let statement = match (statements.pop(), statements.is_empty()) {
            (Some(s), true) => s,
            (None, _) => return Err(bad("The 'sql' parameter holds no statement")),
            (Some(_), false) => return Err(bad("One SQL statement per operation")),
        };
        let now = now_ms();
        // The system database is changed only through its operations.
        let target = match &statement {
            Statement::Update(u) => Some(&u.table.relation),
            Statement::Delete(d) => match &d.from {
                ast::FromTable::WithFromKeyword(f) | ast::FromTable::WithoutKeyword(f) => {
                    f.first().map(|t| &t.relation)
                }
            },
            _ => None,
        };
        if let Some(TableFactor::Table { name, .. }) = target
            && table_name(name).is_ok_and(|(db, _, _)| db == super::system_tables::SYSTEM)
        {
            return Err(fail(403, super::system_tables::UNTOUCHABLE));
        }
        match statement {
            Statement::Query(q) => self.select(&q, user, now).await,
            Statement::Insert(i) => self.insert(&i, user, now).await,
            Statement::Update(u) => self.update(&u, user, now).await,
            Statement::Delete(d) => self.delete_where(&d, user, now).await,
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
        let (database, table_name, qualified) = table_name(name)?;
        let (table, restricted) = self
            .table_for(&database, &table_name, user, actions)
            .map_err(|mut e| {
                if !qualified && e.status != 403 {
                    e = fail(404, format!("schema not defined for table {table_name}"));
                } else if e.status == 400 {
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
            refused: None,
        })
    }

    /// A table of a SELECT: as [`Self::source`], except that a table the role lacks the
    /// permission on is kept, refused, so that the statement's other refusals are reported
    /// with it.
    fn read_source<'u>(
        &self,
        factor: &TableFactor,
        user: &'u User,
    ) -> Result<Source<'u>, OpsError> {
        match self.source(factor, user, &[Action::Read]) {
            Err(e) if e.status == 403 => {
                let TableFactor::Table { name, alias, .. } = factor else {
                    return Err(e);
                };
                let (database, table_name, _) = table_name(name)?;
                let Some(table) = self.app.tables.table(&database, &table_name) else {
                    return Err(e);
                };
                Ok(Source {
                    alias: alias
                        .as_ref()
                        .map_or_else(|| table.name.clone(), |a| a.name.value.clone()),
                    table,
                    restricted: None,
                    refused: Some(e.body),
                })
            }
            other => other,
        }
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
            .map(|r| {
                let mut rec = output::body_value(output::stored_record(&r.stored)?.body)?;
                output::with_computed(&source.table, &mut rec);
                Ok(rec)
            })
            .collect()
    }

    async fn select(&self, q: &ast::Query, user: &User, now: f64) -> Result<Value, OpsError> {
        let SetExpr::Select(s) = q.body.as_ref() else {
            return Err(unsupported(&q.body));
        };
        if q.with.is_some() {
            return Err(unsupported("WITH"));
        }
        let (sources, steps) = self.tables_of_from(&s.from, user)?;
        let scope = Scope::new(&sources);
        let items = scope.items(&s.projection)?;
        let group_by = group_by(&scope, &s.group_by, &items)?;
        let having = s
            .having
            .as_ref()
            .map(|h| scope.aggregating_expr(h))
            .transpose()?;
        let order = self.order_keys(&scope, q.order_by.as_ref(), &items)?;
        let aggregated = !group_by.is_empty()
            || items
                .iter()
                .any(|i| matches!(i, Item::Expr(e, _) if e.has_aggregate()))
            || having.is_some();
        let limit = limit_of(q.limit_clause.as_ref())?;
        let placed = place_conditions(&scope, &steps, s.selection.as_ref())?;
        scope.refusal()?;
        let cx = Context {
            now,
            aggregates: &[],
        };
        let mut filters = placed.filters.into_iter();
        let first = filters.next().flatten();

        // One table sorted by its own columns, nothing else to evaluate: the query plan sorts
        // and limits.
        let plain_sort: Option<Vec<SortKey>> = order
            .iter()
            .map(|(k, descending)| match k {
                OrderKey::Expr(Ex::Col(c)) => Some(SortKey {
                    path: vec![c.name.clone()],
                    descending: *descending,
                }),
                _ => None,
            })
            .collect();
        let pushed_down = match &plain_sort {
            Some(sort) if sources.len() == 1 && !aggregated && placed.residual.is_empty() => {
                s.distinct.is_none()
                    && (first.is_some()
                        || sort
                            .first()
                            .is_none_or(|k| query::is_indexed(&sources[0].table, &k.path[0])))
            }
            _ => false,
        };
        let mut rows: Vec<Row> = if sources.is_empty() {
            vec![Vec::new()]
        } else {
            let (sort, limit) = match plain_sort {
                Some(sort) if pushed_down => (sort, limit),
                _ => (Vec::new(), None),
            };
            self.rows_of(&sources[0], first, sort, limit)
                .await?
                .into_iter()
                .map(|r| vec![Some(r)])
                .collect()
        };
        for (i, (step, on)) in steps.iter().zip(placed.on).enumerate() {
            let filter = filters.next().flatten();
            rows = self
                .join(&sources[i + 1], i + 1, rows, step.kind, on, filter, &cx)
                .await?;
        }
        if let Some(r) = Ex::all(placed.residual) {
            rows.retain(|row| r.holds(row, &cx));
        }
        let aggregates = scope.aggregates.into_inner();
        let grouping = aggregated.then_some((group_by.as_slice(), aggregates.as_slice()));
        let out = evaluate(rows, grouping, &items, having.as_ref(), now);
        let shape = Shape {
            sources: &sources,
            items: &items,
            order: if pushed_down { &[] } else { &order },
            distinct: s.distinct.is_some(),
            limit: if pushed_down { None } else { limit },
        };
        Ok(shape.finish(out, now))
    }

    /// The tables of a FROM clause: the first, then each joined one with how it joins (a table
    /// after a comma is an inner join whose conditions are in WHERE).
    fn tables_of_from<'q, 'u>(
        &self,
        from: &'q [ast::TableWithJoins],
        user: &'u User,
    ) -> Result<(Vec<Source<'u>>, Vec<Step<'q>>), OpsError> {
        let mut sources = Vec::new();
        let mut steps: Vec<Step<'_>> = Vec::new();
        for (n, from) in from.iter().enumerate() {
            if n > 0 {
                steps.push(Step {
                    kind: JoinKind::Inner,
                    on: None,
                });
            }
            sources.push(self.read_source(&from.relation, user)?);
            for j in &from.joins {
                let (constraint, kind) = match &j.join_operator {
                    JoinOperator::Join(c) | JoinOperator::Inner(c) => (Some(c), JoinKind::Inner),
                    JoinOperator::Left(c) | JoinOperator::LeftOuter(c) => (Some(c), JoinKind::Left),
                    JoinOperator::CrossJoin(_) => (None, JoinKind::Inner),
                    other => return Err(unsupported(format!("join {other:?}"))),
                };
                let on = match constraint {
                    None | Some(JoinConstraint::None) => None,
                    Some(JoinConstraint::On(e)) => Some(e),
                    Some(other) => return Err(unsupported(format!("join {other:?}"))),
                };
                sources.push(self.read_source(&j.relation, user)?);
                steps.push(Step { kind, on });
            }
        }
        Ok((sources, steps))
    }

    /// ORDER BY's keys: a select item's label or position, or an expression.
    fn order_keys(
        &self,
        scope: &Scope<'_, '_>,
        order_by: Option<&ast::OrderBy>,
        items: &[Item],
    ) -> Result<Vec<(OrderKey, bool)>, OpsError> {
        let Some(o) = order_by else {
            return Ok(Vec::new());
        };
        let OrderByKind::Expressions(exprs) = &o.kind else {
            return Err(unsupported("ORDER BY ALL"));
        };
        let mut keys = Vec::new();
        for e in exprs {
            let descending = matches!(e.options.sort, Some(OrderBySort::Desc));
            let by_label = match &e.expr {
                Expr::Identifier(i) => items
                    .iter()
                    .position(|it| matches!(it, Item::Expr(_, l) if *l == i.value)),
                _ => None,
            };
            let by_position = match literal(&e.expr) {
                Some(Value::Int(n)) if n >= 1 && (n as usize) <= items.len() => {
                    Some(n as usize - 1)
                }
                _ => None,
            };
            let key = match by_label.or(by_position) {
                // A plain column keeps its column, so that the plan may sort by it.
                Some(i) => match &items[i] {
                    Item::Expr(Ex::Col(c), _) => OrderKey::Expr(Ex::Col(c.clone())),
                    _ => OrderKey::Item(i),
                },
                None => OrderKey::Expr(scope.aggregating_expr(&e.expr)?),
            };
            keys.push((key, descending));
        }
        Ok(keys)
    }

    /// Joins `rows` (of the sources before `at`) to the records of `right`, as `kind` says,
    /// where every term of `on` holds. An equality with a table before it is looked up through
    /// the joined table's index (or the primary key) when it wants few values; otherwise the
    /// table is read once, narrowed by `filter`.
    #[allow(clippy::too_many_arguments)]
    async fn join(
        &self,
        right: &Source<'_>,
        at: usize,
        rows: Vec<Row>,
        kind: JoinKind,
        on: Vec<Ex>,
        filter: Option<Filter>,
        cx: &Context<'_>,
    ) -> Result<Vec<Row>, OpsError> {
        // The first equality of a column of this table with one of the tables before.
        let key = on.iter().position(|t| match t {
            Ex::Bin(BinOp::Eq, a, b) => matches!(
                (a.as_ref(), b.as_ref()),
                (Ex::Col(x), Ex::Col(y)) if (x.source == at) != (y.source == at)
                    && x.source <= at && y.source <= at
            ),
            _ => false,
        });
        let mut on = on;
        let key = key.map(|i| match on.remove(i) {
            Ex::Bin(_, a, b) => match (*a, *b) {
                (Ex::Col(x), Ex::Col(y)) if x.source == at => (y, x),
                (Ex::Col(x), Ex::Col(y)) => (x, y),
                _ => unreachable!("an equality of two columns"),
            },
            _ => unreachable!("an equality"),
        });
        let rest = Ex::all(on);
        let mut wanted: Vec<Value> = Vec::new();
        if let Some((outer, _)) = &key {
            let mut seen = HashSet::new();
            for r in &rows {
                if let Some(v) = get(r, outer)
                    && !matches!(v, Value::Null)
                    && seen.insert(sort_key(Some(v)))
                {
                    wanted.push(v.clone());
                }
            }
        }
        let lookup = match &key {
            Some((_, inner)) if wanted.len() <= JOIN_LOOKUP_MAX && !wanted.is_empty() => {
                Some(Filter::Or(
                    wanted
                        .iter()
                        .map(|v| condition(&inner.name, Op::Eq, operand(v)))
                        .collect(),
                ))
            }
            _ => None,
        };
        let matches = if key.is_some() && wanted.is_empty() {
            Vec::new()
        } else {
            let filter = match (lookup, filter) {
                (Some(l), Some(f)) => Some(Filter::And(vec![l, f])),
                (l, f) => l.or(f),
            };
            self.rows_of(right, filter, Vec::new(), None).await?
        };
        let mut by_value: HashMap<Vec<u8>, Vec<usize>> = HashMap::new();
        if let Some((_, inner)) = &key {
            for (i, r) in matches.iter().enumerate() {
                by_value
                    .entry(sort_key(r.get(&inner.name)))
                    .or_default()
                    .push(i);
            }
        }
        let all: Vec<usize> = (0..matches.len()).collect();
        let mut out = Vec::new();
        for r in rows {
            let candidates: &[usize] = match &key {
                Some((outer, _)) => get(&r, outer)
                    .filter(|v| !matches!(v, Value::Null))
                    .and_then(|v| by_value.get(&sort_key(Some(v))))
                    .map_or(&[], |v| v.as_slice()),
                None => &all,
            };
            let mut matched = false;
            for &i in candidates {
                let mut joined = r.clone();
                joined.push(Some(matches[i].clone()));
                if rest.as_ref().is_none_or(|t| t.holds(&joined, cx)) {
                    matched = true;
                    out.push(joined);
                }
            }
            if !matched && kind == JoinKind::Left {
                let mut joined = r;
                joined.push(None);
                out.push(joined);
            }
        }
        Ok(out)
    }

    async fn insert(&self, i: &ast::Insert, user: &User, now: f64) -> Result<Value, OpsError> {
        let ast::TableObject::TableName(name) = &i.table else {
            return Err(unsupported(&i.table));
        };
        let (database, table_name, _) = table_name(name)?;
        let (table, restricted) =
            self.table_for(&database, &table_name, user, Write::Insert.actions())?;
        let Some(source) = &i.source else {
            return Err(bad("INSERT needs VALUES"));
        };
        let SetExpr::Values(values) = source.body.as_ref() else {
            return Err(unsupported("INSERT ... SELECT"));
        };
        let columns: Vec<String> = i
            .columns
            .iter()
            .map(|c| {
                c.0.last()
                    .and_then(|p| p.as_ident())
                    .map_or_else(|| c.to_string(), |i| i.value.clone())
            })
            .collect();
        if columns.is_empty() {
            return Err(bad("INSERT needs a column list"));
        }
        let scope = Scope::new(&[]);
        let cx = Context {
            now,
            aggregates: &[],
        };
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
                .map(|(c, e)| Ok((c.clone(), scope.expr(e)?.eval(&Vec::new(), &cx))))
                .collect::<Result<Vec<_>, OpsError>>()?;
            records.push(Value::Object(props));
        }
        self.write_records(table, restricted, records, Write::Insert, &user.username)
            .await
    }

    /// The records of `source` that `selection` matches.
    async fn rows_where(
        &self,
        source: &Source<'_>,
        selection: Option<&Expr>,
        cx: &Context<'_>,
    ) -> Result<Vec<Value>, OpsError> {
        let sources = std::slice::from_ref(source);
        let (mut filters, mut rest) = (Vec::new(), Vec::new());
        if let Some(w) = selection {
            let mut terms = Vec::new();
            let scope = Scope::new(sources);
            scope.expr(w)?.conjuncts(&mut terms);
            scope.refusal()?;
            for t in terms {
                match pushed(&t, sources) {
                    Some((_, f)) => filters.push(f),
                    None => rest.push(t),
                }
            }
        }
        let filter = match filters.len() {
            0 => None,
            1 => filters.pop(),
            _ => Some(Filter::And(filters)),
        };
        let mut rows = self.rows_of(source, filter, Vec::new(), None).await?;
        if let Some(r) = Ex::all(rest) {
            rows = rows
                .into_iter()
                .map(|v| vec![Some(v)])
                .filter(|row| r.holds(row, cx))
                .filter_map(|mut row| row.pop().flatten())
                .collect();
        }
        Ok(rows)
    }

    async fn update(&self, u: &ast::Update, user: &User, now: f64) -> Result<Value, OpsError> {
        if !u.table.joins.is_empty() || u.from.is_some() {
            return Err(unsupported("UPDATE with joins"));
        }
        let source = self.source(&u.table.relation, user, &[Action::Update, Action::Read])?;
        let sources = std::slice::from_ref(&source);
        let scope = Scope::new(sources);
        let mut set: Vec<(String, Ex)> = Vec::new();
        for a in &u.assignments {
            let ast::AssignmentTarget::ColumnName(c) = &a.target else {
                return Err(unsupported("UPDATE of a tuple"));
            };
            let name =
                c.0.last()
                    .and_then(|p| p.as_ident())
                    .map_or_else(|| c.to_string(), |i| i.value.clone());
            set.push((name, scope.expr(&a.value)?));
        }
        // What it would write is checked first, as Harper checks an UPDATE.
        let targets: Vec<String> = set.iter().map(|(n, _)| n.clone()).collect();
        super::data::check_attributes(
            &source.table,
            source.restricted,
            &targets,
            &[Action::Update],
        )?;
        scope.refusal()?;
        let cx = Context {
            now,
            aggregates: &[],
        };
        let found = self.rows_where(&source, u.selection.as_ref(), &cx).await?;
        let pk = source.table.primary_key().name.clone();
        let records = found
            .into_iter()
            .map(|record| {
                let key = record.get(&pk).cloned().unwrap_or(Value::Null);
                let row = vec![Some(record)];
                let mut props: Vec<(String, Value)> = set
                    .iter()
                    .map(|(name, e)| (name.clone(), e.eval(&row, &cx)))
                    .collect();
                props.push((pk.clone(), key));
                Value::Object(props)
            })
            .collect();
        self.write_records(
            source.table.clone(),
            source.restricted,
            records,
            Write::Update,
            &user.username,
        )
        .await
    }

    async fn delete_where(
        &self,
        d: &ast::Delete,
        user: &User,
        now: f64,
    ) -> Result<Value, OpsError> {
        let (ast::FromTable::WithFromKeyword(from) | ast::FromTable::WithoutKeyword(from)) =
            &d.from;
        let [from] = from.as_slice() else {
            return Err(unsupported("DELETE from more than one table"));
        };
        if !from.joins.is_empty() || d.using.is_some() {
            return Err(unsupported("DELETE with joins"));
        }
        let source = self.source(&from.relation, user, &[Action::Delete, Action::Read])?;
        let cx = Context {
            now,
            aggregates: &[],
        };
        let pk = &source.table.primary_key().name;
        let keys = self
            .rows_where(&source, d.selection.as_ref(), &cx)
            .await?
            .into_iter()
            .filter_map(|r| r.get(pk).cloned())
            .collect();
        self.delete_ids(&source.table, keys, &user.username).await
    }
}

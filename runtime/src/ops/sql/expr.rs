//! SQL expressions: compiled from sqlparser's AST against a statement's tables, evaluated on a
//! joined row with the loose comparisons Harper's SQL has (a number equals its text, text
//! compares as text, anything compared with NULL is not true).

use std::cmp::Ordering;

use sqlparser::ast::{BinaryOperator, Expr, UnaryOperator};
use tessera_storage::Value;

use super::functions::{self, Func};

/// A column: which source of the statement (its position in FROM and the JOINs), which attribute.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Col {
    pub source: usize,
    pub name: String,
}

/// One row being assembled: the record of each source (`None`: no match of a LEFT JOIN).
pub(super) type Row = Vec<Option<Value>>;

/// The aggregate functions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Aggregate {
    Count,
    Min,
    Max,
    Avg,
    Sum,
}

impl Aggregate {
    pub(super) fn named(name: &str) -> Option<Aggregate> {
        Some(match name.to_ascii_lowercase().as_str() {
            "count" => Aggregate::Count,
            "min" => Aggregate::Min,
            "max" => Aggregate::Max,
            "avg" => Aggregate::Avg,
            "sum" => Aggregate::Sum,
            _ => return None,
        })
    }
}

/// An aggregate of a statement: its function, its argument (`None`: `COUNT(*)`), DISTINCT.
#[derive(Debug)]
pub(super) struct AggregateCall {
    pub function: Aggregate,
    pub arg: Option<Ex>,
    pub distinct: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Concat,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
}

impl BinOp {
    pub(super) fn of(op: &BinaryOperator) -> Option<BinOp> {
        Some(match op {
            BinaryOperator::Plus => BinOp::Add,
            BinaryOperator::Minus => BinOp::Sub,
            BinaryOperator::Multiply => BinOp::Mul,
            BinaryOperator::Divide => BinOp::Div,
            BinaryOperator::Modulo => BinOp::Mod,
            BinaryOperator::StringConcat => BinOp::Concat,
            BinaryOperator::Eq => BinOp::Eq,
            BinaryOperator::NotEq => BinOp::Ne,
            BinaryOperator::Lt => BinOp::Lt,
            BinaryOperator::LtEq => BinOp::Le,
            BinaryOperator::Gt => BinOp::Gt,
            BinaryOperator::GtEq => BinOp::Ge,
            BinaryOperator::And => BinOp::And,
            BinaryOperator::Or => BinOp::Or,
            _ => return None,
        })
    }

    /// The comparison with its sides swapped (`5 < age` is `age > 5`).
    pub(super) fn flipped(self) -> BinOp {
        match self {
            BinOp::Lt => BinOp::Gt,
            BinOp::Le => BinOp::Ge,
            BinOp::Gt => BinOp::Lt,
            BinOp::Ge => BinOp::Le,
            other => other,
        }
    }

    pub(super) fn is_comparison(self) -> bool {
        matches!(
            self,
            BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge
        )
    }
}

/// A compiled expression.
#[derive(Debug)]
pub(super) enum Ex {
    Lit(Value),
    Col(Col),
    Not(Box<Ex>),
    Neg(Box<Ex>),
    Bin(BinOp, Box<Ex>, Box<Ex>),
    /// LIKE (and ILIKE, `ci`) with `%` and `_`.
    Like {
        ex: Box<Ex>,
        pattern: Box<Ex>,
        negated: bool,
        ci: bool,
    },
    Regexp {
        ex: Box<Ex>,
        pattern: regex::Regex,
        negated: bool,
    },
    In {
        ex: Box<Ex>,
        list: Vec<Ex>,
        negated: bool,
    },
    Between {
        ex: Box<Ex>,
        low: Box<Ex>,
        high: Box<Ex>,
        negated: bool,
    },
    IsNull(Box<Ex>, bool),
    Call(Func, Vec<Ex>),
    /// The value of the statement's aggregate at this position, for the row's group.
    Aggregate(usize),
    Case {
        operand: Option<Box<Ex>>,
        whens: Vec<(Ex, Ex)>,
        otherwise: Option<Box<Ex>>,
    },
}

/// What evaluation needs besides the row: the statement's time, and its group's aggregates.
pub(super) struct Context<'a> {
    pub now: f64,
    pub aggregates: &'a [Value],
}

/// A value's truth in a condition.
pub(super) fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Int(i) => *i != 0,
        Value::Float(f) => *f != 0.0 && !f.is_nan(),
        Value::String(s) => !s.is_empty(),
        _ => true,
    }
}

/// A number as the tidiest value: an integer when it is one.
pub(super) fn number(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() <= 9_007_199_254_740_992.0 {
        Value::Int(n as i64)
    } else {
        Value::Float(n)
    }
}

/// A value as a number, as JavaScript converts one (text that is a number is one).
pub(super) fn as_number(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) => Some(*f),
        Value::Date(ms) => Some(*ms),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        Value::String(s) if !s.trim().is_empty() => s.trim().parse().ok(),
        _ => None,
    }
}

/// Compares two values loosely: numbers with numbers (and numeric text), text with text,
/// booleans with booleans (and `'true'`/`'false'`). `None` when either is NULL or they cannot
/// be compared.
pub(super) fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    use Value::*;
    match (a, b) {
        (Null, _) | (_, Null) => None,
        (String(x), String(y)) => Some(x.cmp(y)),
        (Bool(x), Bool(y)) => Some(x.cmp(y)),
        (Bool(x), String(s)) | (String(s), Bool(x)) => {
            let y = match s.as_str() {
                "true" => true,
                "false" => false,
                _ => return None,
            };
            let o = x.cmp(&y);
            Some(if matches!(a, String(_)) {
                o.reverse()
            } else {
                o
            })
        }
        (Array(x), Array(y)) => (x == y).then_some(Ordering::Equal),
        (Object(x), Object(y)) => (x == y).then_some(Ordering::Equal),
        _ => as_number(a)?.partial_cmp(&as_number(b)?),
    }
}

/// A value as text, as JavaScript's `String()` gives it.
pub(super) fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => {
            let mut b = ryu::Buffer::new();
            let s = b.format(*f);
            s.strip_suffix(".0").unwrap_or(s).to_owned()
        }
        Value::Date(ms) => tessera_storage::value::format_date(*ms),
        other => other.to_json(),
    }
}

fn arithmetic(op: BinOp, a: &Value, b: &Value) -> Value {
    if matches!(a, Value::Null) || matches!(b, Value::Null) {
        return Value::Null;
    }
    if op == BinOp::Concat
        || (op == BinOp::Add && (matches!(a, Value::String(_)) || matches!(b, Value::String(_))))
    {
        return Value::String(text(a) + &text(b));
    }
    if let (Value::Int(x), Value::Int(y)) = (a, b) {
        let exact = match op {
            BinOp::Add => x.checked_add(*y),
            BinOp::Sub => x.checked_sub(*y),
            BinOp::Mul => x.checked_mul(*y),
            _ => None,
        };
        if let Some(v) = exact {
            return Value::Int(v);
        }
    }
    let (Some(x), Some(y)) = (as_number(a), as_number(b)) else {
        return Value::Null;
    };
    let n = match op {
        BinOp::Add => x + y,
        BinOp::Sub => x - y,
        BinOp::Mul => x * y,
        BinOp::Div => x / y,
        _ => x % y,
    };
    if n.is_finite() {
        number(n)
    } else {
        Value::Null
    }
}

/// Whether `text` matches a LIKE `pattern` (`%` any run, `_` one character).
pub(super) fn like(text: &str, pattern: &str, ci: bool) -> bool {
    let (t, p): (Vec<char>, Vec<char>) = if ci {
        (
            text.to_lowercase().chars().collect(),
            pattern.to_lowercase().chars().collect(),
        )
    } else {
        (text.chars().collect(), pattern.chars().collect())
    };
    // Iterative wildcard match with backtracking to the last `%`.
    let (mut ti, mut pi) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '_' || (p[pi] != '%' && p[pi] == t[ti])) {
            ti += 1;
            pi += 1;
        } else if pi < p.len() && p[pi] == '%' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '%')
}

impl Ex {
    /// Evaluates the expression on `row`.
    pub(super) fn eval(&self, row: &Row, cx: &Context<'_>) -> Value {
        match self {
            Ex::Lit(v) => v.clone(),
            Ex::Col(c) => get(row, c).cloned().unwrap_or(Value::Null),
            Ex::Not(e) => match e.eval(row, cx) {
                Value::Null => Value::Null,
                v => Value::Bool(!truthy(&v)),
            },
            Ex::Neg(e) => match e.eval(row, cx) {
                Value::Int(i) => Value::Int(-i),
                v => as_number(&v).map_or(Value::Null, |n| number(-n)),
            },
            Ex::Bin(BinOp::And, a, b) => {
                let a = a.eval(row, cx);
                if !matches!(a, Value::Null) && !truthy(&a) {
                    return Value::Bool(false);
                }
                let b = b.eval(row, cx);
                match (a, b) {
                    (_, b) if !matches!(b, Value::Null) && !truthy(&b) => Value::Bool(false),
                    (Value::Null, _) | (_, Value::Null) => Value::Null,
                    _ => Value::Bool(true),
                }
            }
            Ex::Bin(BinOp::Or, a, b) => {
                let a = a.eval(row, cx);
                if truthy(&a) {
                    return Value::Bool(true);
                }
                let b = b.eval(row, cx);
                match (a, b) {
                    (_, b) if truthy(&b) => Value::Bool(true),
                    (Value::Null, _) | (_, Value::Null) => Value::Null,
                    _ => Value::Bool(false),
                }
            }
            Ex::Bin(op, a, b) if op.is_comparison() => {
                let (a, b) = (a.eval(row, cx), b.eval(row, cx));
                match compare(&a, &b) {
                    None if matches!(a, Value::Null) || matches!(b, Value::Null) => Value::Null,
                    None => Value::Bool(*op == BinOp::Ne),
                    Some(o) => Value::Bool(match op {
                        BinOp::Eq => o == Ordering::Equal,
                        BinOp::Ne => o != Ordering::Equal,
                        BinOp::Lt => o == Ordering::Less,
                        BinOp::Le => o != Ordering::Greater,
                        BinOp::Gt => o == Ordering::Greater,
                        _ => o != Ordering::Less,
                    }),
                }
            }
            Ex::Bin(op, a, b) => arithmetic(*op, &a.eval(row, cx), &b.eval(row, cx)),
            Ex::Like {
                ex,
                pattern,
                negated,
                ci,
            } => match (ex.eval(row, cx), pattern.eval(row, cx)) {
                (Value::Null, _) | (_, Value::Null) => Value::Null,
                (v, p) => Value::Bool(like(&text(&v), &text(&p), *ci) != *negated),
            },
            Ex::Regexp {
                ex,
                pattern,
                negated,
            } => match ex.eval(row, cx) {
                Value::Null => Value::Null,
                v => Value::Bool(pattern.is_match(&text(&v)) != *negated),
            },
            Ex::In { ex, list, negated } => {
                let v = ex.eval(row, cx);
                if matches!(v, Value::Null) {
                    return Value::Null;
                }
                let found = list
                    .iter()
                    .any(|e| compare(&v, &e.eval(row, cx)) == Some(Ordering::Equal));
                Value::Bool(found != *negated)
            }
            Ex::Between {
                ex,
                low,
                high,
                negated,
            } => {
                let v = ex.eval(row, cx);
                let (lo, hi) = (low.eval(row, cx), high.eval(row, cx));
                match (compare(&v, &lo), compare(&v, &hi)) {
                    (Some(a), Some(b)) => {
                        Value::Bool((a != Ordering::Less && b != Ordering::Greater) != *negated)
                    }
                    _ => Value::Null,
                }
            }
            Ex::IsNull(e, negated) => {
                Value::Bool(matches!(e.eval(row, cx), Value::Null) != *negated)
            }
            Ex::Call(f, args) => {
                let args: Vec<Value> = args.iter().map(|a| a.eval(row, cx)).collect();
                functions::call(*f, &args, cx.now)
            }
            Ex::Aggregate(i) => cx.aggregates.get(*i).cloned().unwrap_or(Value::Null),
            Ex::Case {
                operand,
                whens,
                otherwise,
            } => {
                let subject = operand.as_ref().map(|o| o.eval(row, cx));
                for (when, then) in whens {
                    let w = when.eval(row, cx);
                    let hit = match &subject {
                        Some(s) => compare(s, &w) == Some(Ordering::Equal),
                        None => truthy(&w),
                    };
                    if hit {
                        return then.eval(row, cx);
                    }
                }
                otherwise.as_ref().map_or(Value::Null, |o| o.eval(row, cx))
            }
        }
    }

    /// Whether the row passes the expression as a condition.
    pub(super) fn holds(&self, row: &Row, cx: &Context<'_>) -> bool {
        truthy(&self.eval(row, cx))
    }

    /// The sources the expression reads (each once).
    pub(super) fn sources(&self, out: &mut Vec<usize>) {
        self.visit(&mut |e| {
            if let Ex::Col(c) = e
                && !out.contains(&c.source)
            {
                out.push(c.source);
            }
        });
    }

    /// Whether the expression holds an aggregate.
    pub(super) fn has_aggregate(&self) -> bool {
        let mut found = false;
        self.visit(&mut |e| found |= matches!(e, Ex::Aggregate(_)));
        found
    }

    fn visit(&self, f: &mut impl FnMut(&Ex)) {
        f(self);
        match self {
            Ex::Lit(_) | Ex::Col(_) | Ex::Aggregate(_) => {}
            Ex::Not(e) | Ex::Neg(e) | Ex::IsNull(e, _) | Ex::Regexp { ex: e, .. } => e.visit(f),
            Ex::Bin(_, a, b)
            | Ex::Like {
                ex: a, pattern: b, ..
            } => {
                a.visit(f);
                b.visit(f);
            }
            Ex::In { ex, list, .. } => {
                ex.visit(f);
                list.iter().for_each(|e| e.visit(f));
            }
            Ex::Between { ex, low, high, .. } => {
                ex.visit(f);
                low.visit(f);
                high.visit(f);
            }
            Ex::Call(_, args) => args.iter().for_each(|e| e.visit(f)),
            Ex::Case {
                operand,
                whens,
                otherwise,
            } => {
                operand.iter().for_each(|e| e.visit(f));
                for (w, t) in whens {
                    w.visit(f);
                    t.visit(f);
                }
                otherwise.iter().for_each(|e| e.visit(f));
            }
        }
    }

    /// Its top-level AND terms (`a AND b AND c` parses as `(a AND b) AND c`).
    pub(super) fn conjuncts(self, out: &mut Vec<Ex>) {
        match self {
            Ex::Bin(BinOp::And, a, b) => {
                a.conjuncts(out);
                b.conjuncts(out);
            }
            other => out.push(other),
        }
    }

    /// The AND of `terms` (`None` for none).
    pub(super) fn all(terms: Vec<Ex>) -> Option<Ex> {
        terms
            .into_iter()
            .reduce(|a, b| Ex::Bin(BinOp::And, Box::new(a), Box::new(b)))
    }
}

/// The value of `col` in `row`.
pub(super) fn get<'r>(row: &'r Row, col: &Col) -> Option<&'r Value> {
    row.get(col.source)?.as_ref()?.get(&col.name)
}

/// The literal a parsed expression is, if it is one.
pub(super) fn literal(e: &Expr) -> Option<Value> {
    Some(match e {
        Expr::Value(v) => match &v.value {
            sqlparser::ast::Value::Number(n, _) => match n.parse::<i64>() {
                Ok(i) => Value::Int(i),
                Err(_) => Value::Float(n.parse().ok()?),
            },
            sqlparser::ast::Value::SingleQuotedString(s)
            | sqlparser::ast::Value::DoubleQuotedString(s) => Value::String(s.clone()),
            sqlparser::ast::Value::Boolean(b) => Value::Bool(*b),
            sqlparser::ast::Value::Null => Value::Null,
            _ => return None,
        },
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match literal(expr)? {
            Value::Int(i) => Value::Int(-i),
            Value::Float(f) => Value::Float(-f),
            _ => return None,
        },
        Expr::Nested(inner) => literal(inner)?,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx() -> Context<'static> {
        Context {
            now: 0.0,
            aggregates: &[],
        }
    }

    fn lit(v: Value) -> Box<Ex> {
        Box::new(Ex::Lit(v))
    }

    #[test]
    fn comparisons_are_loose_and_null_is_never_true() {
        let eq = |a, b| Ex::Bin(BinOp::Eq, lit(a), lit(b)).eval(&vec![], &cx());
        assert_eq!(
            eq(Value::Int(1), Value::String("1".into())),
            Value::Bool(true)
        );
        assert_eq!(
            eq(Value::Bool(false), Value::String("false".into())),
            Value::Bool(true)
        );
        assert_eq!(eq(Value::Int(1), Value::Null), Value::Null);
        let ne = Ex::Bin(BinOp::Ne, lit(Value::Null), lit(Value::Int(2)));
        assert!(!ne.holds(&vec![], &cx()));
        let and = Ex::Bin(BinOp::And, lit(Value::Null), lit(Value::Bool(false)));
        assert_eq!(and.eval(&vec![], &cx()), Value::Bool(false));
    }

    #[test]
    fn arithmetic_is_exact_on_integers_and_concatenates_text() {
        let op = |o, a, b| Ex::Bin(o, lit(a), lit(b)).eval(&vec![], &cx());
        assert_eq!(op(BinOp::Add, Value::Int(2), Value::Int(2)), Value::Int(4));
        assert_eq!(
            op(BinOp::Div, Value::Int(7), Value::Int(2)),
            Value::Float(3.5)
        );
        assert_eq!(
            op(BinOp::Mul, Value::Float(1.5), Value::Int(2)),
            Value::Int(3)
        );
        assert_eq!(op(BinOp::Div, Value::Int(1), Value::Int(0)), Value::Null);
        assert_eq!(
            op(BinOp::Add, Value::String("a".into()), Value::Int(1)),
            Value::String("a1".into())
        );
    }

    #[test]
    fn like_patterns() {
        assert!(like("Harper", "H%r", false));
        assert!(like("Harper", "%arp%", false));
        assert!(like("Harper", "H_rper", false));
        assert!(!like("Harper", "h%", false));
        assert!(like("Harper", "h%", true));
        assert!(like("", "%", false));
        assert!(!like("abc", "ab", false));
    }
}

//! `@computed(from: "expression")`: a small, safe expression language over a record's
//! properties. Nothing in it can loop, allocate without bound or reach outside the record.
//!
//! ```text
//! expr    = or ("?" expr ":" expr)?
//! or      = and ("||" and)*            and = compare ("&&" compare)*
//! compare = sum (("==" | "!=" | "===" | "!==" | "<" | "<=" | ">" | ">=") sum)?
//! sum     = product (("+" | "-") product)*      product = unary (("*" | "/" | "%") unary)*
//! unary   = ("-" | "!") unary | postfix        postfix = primary ("." name | "[" expr "]")*
//! primary = number | 'string' | "string" | true | false | null | name | name "(" args ")"
//!         | "(" expr ")"
//! ```
//!
//! Names are the record's properties. `+` concatenates when either side is a string (numbers
//! printed as JavaScript prints them); other arithmetic on non-numbers, and division by zero, give
//! `null`. Functions: `round(x[, digits])`, `floor`, `ceil`, `abs`, `sqrt`, `pow(x, y)`,
//! `min(...)`, `max(...)`, `lower(s)`, `upper(s)`, `trim(s)`, `length(s or array)`,
//! `concat(...)`, `coalesce(...)` (first non-null), `substring(s, start[, end])`.

use std::fmt;
use std::sync::{Arc, OnceLock};

use crate::value::Value;

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Lit(Value),
    Prop(String),
    Member(Box<Expr>, Box<Expr>),
    Unary(char, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    Cond(Box<Expr>, Box<Expr>, Box<Expr>),
    Call(Func, Vec<Expr>),
    /// `@computed` with no `from:`: the application's code computes it ([`Code`]).
    Code(Arc<Code>),
}

/// A function computing an attribute from a record.
pub type ComputeFn = Box<dyn Fn(&Value) -> Value + Send + Sync>;

/// An attribute computed by application code (Harper's `setComputedAttribute`; a wasm
/// resource's `COMPUTES` in Tessera). The code is installed once, when it loads; until then, and
/// for good if no code claims the attribute, it is null.
pub struct Code {
    /// The properties of the record the code is given: the table's stored attributes.
    inputs: Vec<String>,
    func: OnceLock<ComputeFn>,
}

impl Code {
    pub fn new(inputs: Vec<String>) -> Code {
        Code {
            inputs,
            func: OnceLock::new(),
        }
    }

    /// Installs the code; fails if some code was installed already.
    pub fn install(&self, f: ComputeFn) -> Result<(), &'static str> {
        self.func
            .set(f)
            .map_err(|_| "is computed by other code already")
    }

    /// Whether code was installed.
    pub fn installed(&self) -> bool {
        self.func.get().is_some()
    }
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Code")
            .field("inputs", &self.inputs)
            .field("installed", &self.installed())
            .finish()
    }
}

/// Two attributes' code is the same only if it is the same slot.
impl PartialEq for Code {
    fn eq(&self, other: &Code) -> bool {
        std::ptr::eq(self, other)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    Round,
    Floor,
    Ceil,
    Abs,
    Sqrt,
    Pow,
    Min,
    Max,
    Lower,
    Upper,
    Trim,
    Length,
    Concat,
    Coalesce,
    Substring,
}

impl Func {
    fn from_name(name: &str) -> Option<Func> {
        Some(match name {
            "round" => Func::Round,
            "floor" => Func::Floor,
            "ceil" => Func::Ceil,
            "abs" => Func::Abs,
            "sqrt" => Func::Sqrt,
            "pow" => Func::Pow,
            "min" => Func::Min,
            "max" => Func::Max,
            "lower" => Func::Lower,
            "upper" => Func::Upper,
            "trim" => Func::Trim,
            "length" => Func::Length,
            "concat" => Func::Concat,
            "coalesce" => Func::Coalesce,
            "substring" => Func::Substring,
            _ => return None,
        })
    }
}

/// An expression that does not parse, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    pub at: usize,
    pub message: String,
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at character {}", self.message, self.at)
    }
}

impl std::error::Error for ExprError {}

/// Deepest nesting of an expression.
const MAX_DEPTH: usize = 64;

/// Parses an expression.
pub fn parse(src: &str) -> Result<Expr, ExprError> {
    let mut p = Parser {
        s: src.as_bytes(),
        at: 0,
        depth: 0,
    };
    let e = p.expr()?;
    p.skip_ws();
    if p.at < p.s.len() {
        return p.err("unexpected text");
    }
    Ok(e)
}

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
    depth: usize,
}

impl Parser<'_> {
    fn err<T>(&self, message: &str) -> Result<T, ExprError> {
        Err(ExprError {
            at: self.at,
            message: message.to_owned(),
        })
    }

    fn skip_ws(&mut self) {
        while self.s.get(self.at).is_some_and(u8::is_ascii_whitespace) {
            self.at += 1;
        }
    }

    fn eat(&mut self, tok: &str) -> bool {
        self.skip_ws();
        if self.s[self.at..].starts_with(tok.as_bytes()) {
            self.at += tok.len();
            true
        } else {
            false
        }
    }

    fn nested<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, ExprError>,
    ) -> Result<T, ExprError> {
        if self.depth >= MAX_DEPTH {
            return self.err("expression nested too deeply");
        }
        self.depth += 1;
        let r = f(self);
        self.depth -= 1;
        r
    }

    fn expr(&mut self) -> Result<Expr, ExprError> {
        self.nested(|p| {
            let c = p.binary(0)?;
            if p.eat("?") {
                let a = p.expr()?;
                if !p.eat(":") {
                    return p.err("expected ':'");
                }
                let b = p.expr()?;
                return Ok(Expr::Cond(Box::new(c), Box::new(a), Box::new(b)));
            }
            Ok(c)
        })
    }

    /// Binary operators by precedence level (0: `||` ... 4: `* / %`).
    fn binary(&mut self, level: usize) -> Result<Expr, ExprError> {
        const LEVELS: [&[(&str, BinOp)]; 5] = [
            &[("||", BinOp::Or)],
            &[("&&", BinOp::And)],
            &[
                ("===", BinOp::Eq),
                ("!==", BinOp::Ne),
                ("==", BinOp::Eq),
                ("!=", BinOp::Ne),
                ("<=", BinOp::Le),
                (">=", BinOp::Ge),
                ("<", BinOp::Lt),
                (">", BinOp::Gt),
            ],
            &[("+", BinOp::Add), ("-", BinOp::Sub)],
            &[("*", BinOp::Mul), ("/", BinOp::Div), ("%", BinOp::Rem)],
        ];
        let Some(ops) = LEVELS.get(level) else {
            return self.unary();
        };
        let mut left = self.binary(level + 1)?;
        'more: loop {
            for (tok, op) in *ops {
                if self.eat(tok) {
                    let right = self.binary(level + 1)?;
                    left = Expr::Binary(*op, Box::new(left), Box::new(right));
                    // Comparisons do not chain.
                    if level == 2 {
                        break 'more;
                    }
                    continue 'more;
                }
            }
            break;
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, ExprError> {
        self.nested(|p| {
            for op in ['-', '!'] {
                if p.eat(&op.to_string()) {
                    return Ok(Expr::Unary(op, Box::new(p.unary()?)));
                }
            }
            p.postfix()
        })
    }

    fn postfix(&mut self) -> Result<Expr, ExprError> {
        let mut e = self.primary()?;
        loop {
            if self.eat(".") {
                let name = self.name().ok_or(ExprError {
                    at: self.at,
                    message: "expected a property name".into(),
                })?;
                e = Expr::Member(Box::new(e), Box::new(Expr::Lit(Value::String(name))));
            } else if self.eat("[") {
                let i = self.expr()?;
                if !self.eat("]") {
                    return self.err("expected ']'");
                }
                e = Expr::Member(Box::new(e), Box::new(i));
            } else {
                return Ok(e);
            }
        }
    }

    fn name(&mut self) -> Option<String> {
        self.skip_ws();
        let start = self.at;
        while self
            .s
            .get(self.at)
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'$')
        {
            self.at += 1;
        }
        let name = std::str::from_utf8(&self.s[start..self.at]).ok()?;
        (!name.is_empty() && !name.as_bytes()[0].is_ascii_digit()).then(|| name.to_owned())
    }

    fn primary(&mut self) -> Result<Expr, ExprError> {
        self.skip_ws();
        let Some(&c) = self.s.get(self.at) else {
            return self.err("unexpected end of the expression");
        };
        if c == b'(' {
            self.at += 1;
            let e = self.expr()?;
            if !self.eat(")") {
                return self.err("expected ')'");
            }
            return Ok(e);
        }
        if c == b'\'' || c == b'"' {
            return self.string(c);
        }
        if c.is_ascii_digit() || c == b'.' {
            let start = self.at;
            while self
                .s
                .get(self.at)
                .is_some_and(|c| c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E'))
            {
                self.at += 1;
            }
            let text = std::str::from_utf8(&self.s[start..self.at]).unwrap_or_default();
            return match text.parse::<f64>() {
                Ok(n) if n.fract() == 0.0 && n.abs() < 9e15 => Ok(Expr::Lit(Value::Int(n as i64))),
                Ok(n) => Ok(Expr::Lit(Value::Float(n))),
                Err(_) => self.err("bad number"),
            };
        }
        let at = self.at;
        let Some(name) = self.name() else {
            return self.err("unexpected character");
        };
        match name.as_str() {
            "true" => return Ok(Expr::Lit(Value::Bool(true))),
            "false" => return Ok(Expr::Lit(Value::Bool(false))),
            "null" | "undefined" => return Ok(Expr::Lit(Value::Null)),
            _ => {}
        }
        if self.eat("(") {
            let Some(f) = Func::from_name(&name) else {
                self.at = at;
                return self.err(&format!("unknown function {name}()"));
            };
            let mut args = Vec::new();
            if !self.eat(")") {
                loop {
                    args.push(self.expr()?);
                    if self.eat(")") {
                        break;
                    }
                    if !self.eat(",") {
                        return self.err("expected ',' or ')'");
                    }
                }
            }
            return Ok(Expr::Call(f, args));
        }
        Ok(Expr::Prop(name))
    }

    fn string(&mut self, quote: u8) -> Result<Expr, ExprError> {
        self.at += 1;
        let mut out = Vec::new();
        loop {
            match self.s.get(self.at) {
                None => return self.err("unterminated string"),
                Some(&c) if c == quote => {
                    self.at += 1;
                    break;
                }
                Some(b'\\') => {
                    let Some(&e) = self.s.get(self.at + 1) else {
                        return self.err("unterminated string");
                    };
                    out.push(match e {
                        b'n' => b'\n',
                        b't' => b'\t',
                        other => other,
                    });
                    self.at += 2;
                }
                Some(&c) => {
                    out.push(c);
                    self.at += 1;
                }
            }
        }
        match String::from_utf8(out) {
            Ok(s) => Ok(Expr::Lit(Value::String(s))),
            Err(_) => self.err("invalid UTF-8 in a string"),
        }
    }
}

impl Expr {
    /// The properties of the record the expression reads.
    pub fn reads(&self, out: &mut Vec<String>) {
        match self {
            Expr::Lit(_) => {}
            Expr::Prop(p) => {
                if !out.contains(p) {
                    out.push(p.clone());
                }
            }
            Expr::Member(a, b) | Expr::Binary(_, a, b) => {
                a.reads(out);
                b.reads(out);
            }
            Expr::Unary(_, a) => a.reads(out),
            Expr::Cond(a, b, c) => {
                a.reads(out);
                b.reads(out);
                c.reads(out);
            }
            Expr::Call(_, args) => args.iter().for_each(|a| a.reads(out)),
            Expr::Code(c) => {
                for p in &c.inputs {
                    if !out.contains(p) {
                        out.push(p.clone());
                    }
                }
            }
        }
    }

    /// Evaluates the expression over a record's properties.
    pub fn eval<'v>(&self, get: &dyn Fn(&str) -> Option<&'v Value>) -> Value {
        match self {
            Expr::Lit(v) => v.clone(),
            Expr::Prop(p) => get(p).cloned().unwrap_or(Value::Null),
            Expr::Code(c) => match c.func.get() {
                None => Value::Null,
                Some(f) => f(&Value::Object(
                    c.inputs
                        .iter()
                        .filter_map(|n| Some((n.clone(), get(n)?.clone())))
                        .collect(),
                )),
            },
            Expr::Member(obj, key) => {
                let (obj, key) = (obj.eval(get), key.eval(get));
                match (&obj, &key) {
                    (Value::Object(_), Value::String(k)) => {
                        obj.get(k).cloned().unwrap_or(Value::Null)
                    }
                    (Value::Array(items), k) => k
                        .as_f64()
                        .filter(|i| *i >= 0.0 && i.fract() == 0.0)
                        .and_then(|i| items.get(i as usize).cloned())
                        .unwrap_or(Value::Null),
                    (Value::String(s), Value::String(k)) if k == "length" => {
                        Value::Int(s.chars().count() as i64)
                    }
                    _ => Value::Null,
                }
            }
            Expr::Unary('-', a) => match a.eval(get) {
                Value::Int(i) => Value::Int(-i),
                Value::Float(f) => Value::Float(-f),
                _ => Value::Null,
            },
            Expr::Unary(_, a) => Value::Bool(!truthy(&a.eval(get))),
            Expr::Cond(c, a, b) => {
                if truthy(&c.eval(get)) {
                    a.eval(get)
                } else {
                    b.eval(get)
                }
            }
            Expr::Binary(BinOp::And, a, b) => {
                let l = a.eval(get);
                if truthy(&l) { b.eval(get) } else { l }
            }
            Expr::Binary(BinOp::Or, a, b) => {
                let l = a.eval(get);
                if truthy(&l) { l } else { b.eval(get) }
            }
            Expr::Binary(op, a, b) => binary(*op, a.eval(get), b.eval(get)),
            Expr::Call(f, args) => {
                let args: Vec<Value> = args.iter().map(|a| a.eval(get)).collect();
                call(*f, &args)
            }
        }
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Int(i) => *i != 0,
        Value::Float(f) => *f != 0.0 && !f.is_nan(),
        Value::String(s) => !s.is_empty(),
        _ => true,
    }
}

fn number(f: f64) -> Value {
    if !f.is_finite() {
        Value::Null
    } else if f.fract() == 0.0 && f.abs() < 9e15 {
        Value::Int(f as i64)
    } else {
        Value::Float(f)
    }
}

/// A value as text, the way JavaScript's `String()` shows it.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "null".into(),
        other => {
            let mut out = Vec::new();
            other.write_json(&mut out);
            String::from_utf8(out).unwrap_or_default()
        }
    }
}

fn binary(op: BinOp, l: Value, r: Value) -> Value {
    use std::cmp::Ordering;
    if op == BinOp::Add && (matches!(l, Value::String(_)) || matches!(r, Value::String(_))) {
        return Value::String(text(&l) + &text(&r));
    }
    let order = match (&l, &r) {
        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
        _ => match (l.as_f64(), r.as_f64()) {
            (Some(a), Some(b)) => a.partial_cmp(&b),
            _ => None,
        },
    };
    match op {
        BinOp::Eq => return Value::Bool(order == Some(Ordering::Equal) || (l == r)),
        BinOp::Ne => return Value::Bool(!(order == Some(Ordering::Equal) || (l == r))),
        BinOp::Lt => return Value::Bool(order == Some(Ordering::Less)),
        BinOp::Le => return Value::Bool(matches!(order, Some(Ordering::Less | Ordering::Equal))),
        BinOp::Gt => return Value::Bool(order == Some(Ordering::Greater)),
        BinOp::Ge => {
            return Value::Bool(matches!(order, Some(Ordering::Greater | Ordering::Equal)));
        }
        _ => {}
    }
    let (Some(a), Some(b)) = (l.as_f64(), r.as_f64()) else {
        return Value::Null;
    };
    number(match op {
        BinOp::Add => a + b,
        BinOp::Sub => a - b,
        BinOp::Mul => a * b,
        BinOp::Div => a / b,
        _ => a % b,
    })
}

fn call(f: Func, args: &[Value]) -> Value {
    let num = |i: usize| args.get(i).and_then(Value::as_f64);
    let string = |i: usize| match args.get(i) {
        Some(Value::String(s)) => Some(s.as_str()),
        _ => None,
    };
    match f {
        Func::Round => match (num(0), num(1)) {
            (Some(x), None) => number(x.round()),
            (Some(x), Some(d)) => {
                let m = 10f64.powi(d.clamp(0.0, 15.0) as i32);
                number((x * m).round() / m)
            }
            _ => Value::Null,
        },
        Func::Floor => num(0).map_or(Value::Null, |x| number(x.floor())),
        Func::Ceil => num(0).map_or(Value::Null, |x| number(x.ceil())),
        Func::Abs => num(0).map_or(Value::Null, |x| number(x.abs())),
        Func::Sqrt => num(0).map_or(Value::Null, |x| number(x.sqrt())),
        Func::Pow => match (num(0), num(1)) {
            (Some(x), Some(y)) => number(x.powf(y)),
            _ => Value::Null,
        },
        Func::Min | Func::Max => {
            let nums: Option<Vec<f64>> = args.iter().map(Value::as_f64).collect();
            let pick = |a: f64, b: f64| if f == Func::Min { a.min(b) } else { a.max(b) };
            nums.and_then(|n| n.into_iter().reduce(pick))
                .map_or(Value::Null, number)
        }
        Func::Lower => string(0).map_or(Value::Null, |s| Value::String(s.to_lowercase())),
        Func::Upper => string(0).map_or(Value::Null, |s| Value::String(s.to_uppercase())),
        Func::Trim => string(0).map_or(Value::Null, |s| Value::String(s.trim().to_owned())),
        Func::Length => match args.first() {
            Some(Value::String(s)) => Value::Int(s.chars().count() as i64),
            Some(Value::Array(a)) => Value::Int(a.len() as i64),
            _ => Value::Null,
        },
        Func::Concat => Value::String(args.iter().map(text).collect()),
        Func::Coalesce => args
            .iter()
            .find(|v| !matches!(v, Value::Null))
            .cloned()
            .unwrap_or(Value::Null),
        Func::Substring => {
            let Some(s) = string(0) else {
                return Value::Null;
            };
            let chars: Vec<char> = s.chars().collect();
            let clamp = |x: Option<f64>, d: usize| {
                x.map_or(d, |x| x.max(0.0).min(chars.len() as f64) as usize)
            };
            let (a, b) = (clamp(num(1), 0), clamp(num(2), chars.len()));
            let (a, b) = (a.min(b), a.max(b));
            Value::String(chars[a..b].iter().collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(src: &str, rec: &Value) -> Value {
        parse(src)
            .unwrap_or_else(|e| panic!("{src}: {e}"))
            .eval(&|n| rec.get(n))
    }

    #[test]
    fn evaluates() {
        let rec = Value::Object(vec![
            ("unitPrice".into(), Value::Float(2.5)),
            ("quantity".into(), Value::Int(4)),
            ("first".into(), Value::String("Ada".into())),
            ("last".into(), Value::String("Lovelace".into())),
            (
                "dims".into(),
                Value::Object(vec![("w".into(), Value::Int(3))]),
            ),
            ("tags".into(), Value::Array(vec![Value::String("a".into())])),
        ]);
        for (src, want) in [
            ("unitPrice * quantity", Value::Int(10)),
            ("unitPrice * quantity + 1.25", Value::Float(11.25)),
            ("(1 + 2) * 3 - 4 / 2", Value::Int(7)),
            ("first + ' ' + last", Value::String("Ada Lovelace".into())),
            ("'n' + quantity", Value::String("n4".into())),
            ("quantity > 3 && unitPrice < 3", Value::Bool(true)),
            (
                "quantity >= 5 ? 'big' : 'small'",
                Value::String("small".into()),
            ),
            ("dims.w * 2", Value::Int(6)),
            ("tags[0]", Value::String("a".into())),
            ("missing * 2", Value::Null),
            ("1 / 0", Value::Null),
            ("round(unitPrice / 3, 2)", Value::Float(0.83)),
            ("max(quantity, 7, 2)", Value::Int(7)),
            ("upper(first)", Value::String("ADA".into())),
            ("length(last)", Value::Int(8)),
            ("coalesce(missing, first)", Value::String("Ada".into())),
            ("substring(last, 0, 4)", Value::String("Love".into())),
            ("-quantity % 3", Value::Int(-1)),
            ("!missing", Value::Bool(true)),
        ] {
            assert_eq!(eval(src, &rec), want, "{src}");
        }
    }

    #[test]
    fn refuses_bad_expressions() {
        for src in ["", "1 +", "(1", "foo(1)", "a ? b", "'open", "1 2", "a..b"] {
            assert!(parse(src).is_err(), "{src}");
        }
        assert!(parse(&"(".repeat(1000)).is_err());
        assert!(parse(&"-".repeat(1000)).is_err());
    }
}

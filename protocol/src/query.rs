//! Harper's REST query grammar (docs/rest.md), sans-I/O.
//!
//! The query string is parsed before percent-decoding, so that `& | ( ) [ ]` sent percent-encoded
//! stay literal characters of a name or value. Names and values are percent-decoded afterwards.
//! The result is an untyped [`Query`]: values are converted to an attribute's type by the
//! planner, which knows the schema. Every error carries the byte offset in the query string where
//! the problem is.
//!
//! ```text
//! query     = entry (("&" | "|") entry)*        one separator kind per level
//! entry     = "(" group ")" | "[" group "]" | function | condition | ""
//! function  = ("select" | "limit" | "sort") "(" args ")"      top level only
//! condition = path op value
//! op        = "===" | "!==" | "==" | "=" name "=" | "=" | "!=" | ">=" | ">" | "<=" | "<"
//! ```

use std::fmt;

use percent_encoding::percent_decode;

/// A parsed query string.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Query {
    /// The conditions; `None` when there are none.
    pub filter: Option<Filter>,
    pub select: Option<Select>,
    pub limit: Option<Limit>,
    pub sort: Vec<SortKey>,
}

/// A tree of conditions.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Cond(Condition),
}

/// One `attribute op value` condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// The attribute, split at dots (`brand.name` → `["brand", "name"]`), percent-decoded.
    pub path: Vec<String>,
    pub op: Op,
    pub value: Operand,
    /// Byte offset of the condition in the query string.
    pub at: usize,
    /// For `price=gt=20&lt=100`: when this condition's "attribute" is an operator name (`lt`)
    /// written as `lt=100`, the previous condition's path and that operator. The planner uses
    /// it when no attribute of that name exists.
    pub chained: Option<(Vec<String>, Op)>,
}

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    StartsWith,
    Contains,
    EndsWith,
}

impl Op {
    /// The FIQL spelling (`=gt=` → `gt`).
    fn from_fiql(name: &str) -> Option<Op> {
        Some(match name {
            "eq" => Op::Eq,
            "ne" => Op::Ne,
            "gt" => Op::Gt,
            "ge" => Op::Ge,
            "lt" => Op::Lt,
            "le" => Op::Le,
            "sw" => Op::StartsWith,
            "ct" => Op::Contains,
            "ew" => Op::EndsWith,
            _ => return None,
        })
    }
}

/// A condition's value before it meets the schema.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    /// Text to convert to the attribute's type (`rating=5` → 5 for a numeric attribute).
    Text(String),
    Null,
    /// `number:5`
    Number(f64),
    /// `boolean:true`
    Bool(bool),
    /// `string:x`: a string whatever the attribute's type.
    String(String),
    /// `date:2024-01-05T20:07:27.955Z`: the text of a date.
    Date(String),
}

/// `select(...)`: the shape of each returned row.
#[derive(Debug, Clone, PartialEq)]
pub enum Select {
    /// `select(a)`: the bare value of one property.
    Value(Field),
    /// `select(a,b)` or `select(a,)`: objects with exactly these properties.
    Object(Vec<Field>),
    /// `select([a,b])`: arrays of values.
    Array(Vec<Field>),
}

impl Select {
    /// The selected top-level properties, in order.
    pub fn fields(&self) -> &[Field] {
        match self {
            Select::Value(f) => std::slice::from_ref(f),
            Select::Object(fs) | Select::Array(fs) => fs,
        }
    }
}

/// One selected property, with a nested selection for a related record (`brand{name}`).
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: String,
    pub nested: Option<Vec<Field>>,
}

/// `limit(n)` = `Limit { start: 0, end: n }`; `limit(start, end)` skips `start` and stops before
/// row `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub start: usize,
    pub end: usize,
}

/// One `sort()` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    pub path: Vec<String>,
    pub descending: bool,
}

/// A query string that does not parse, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryError {
    /// Byte offset in the query string.
    pub at: usize,
    pub message: String,
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at position {} of the query)", self.message, self.at)
    }
}

impl std::error::Error for QueryError {}

/// Most nested groups in one query.
pub const MAX_DEPTH: usize = 32;

/// Parses a query string (without the `?`).
pub fn parse(query: &str) -> Result<Query, QueryError> {
    let mut p = Parser {
        s: query.as_bytes(),
        at: 0,
        depth: 0,
        query: Query::default(),
    };
    let filter = p.group(None)?;
    let mut q = p.query;
    q.filter = filter;
    Ok(q)
}

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
    depth: usize,
    query: Query,
}

/// Characters that end a name.
fn ends_name(c: u8) -> bool {
    matches!(
        c,
        b'=' | b'<' | b'>' | b'!' | b'(' | b')' | b'[' | b']' | b'&' | b'|'
    )
}

/// Characters that end a value.
fn ends_value(c: u8) -> bool {
    matches!(c, b'&' | b'|' | b')' | b']')
}

impl<'a> Parser<'a> {
    fn err<T>(&self, at: usize, message: impl Into<String>) -> Result<T, QueryError> {
        Err(QueryError {
            at,
            message: message.into(),
        })
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }

    fn eat(&mut self, token: &[u8]) -> bool {
        if self.s[self.at..].starts_with(token) {
            self.at += token.len();
            true
        } else {
            false
        }
    }

    fn decode(&self, start: usize, end: usize) -> Result<String, QueryError> {
        match percent_decode(&self.s[start..end]).decode_utf8() {
            Ok(s) => Ok(s.into_owned()),
            Err(_) => self.err(start, "invalid UTF-8 after percent-decoding"),
        }
    }

    /// Parses entries up to `close` (or the end at the top level) and returns their filter.
    fn group(&mut self, close: Option<u8>) -> Result<Option<Filter>, QueryError> {
        let top = close.is_none();
        let mut items: Vec<Filter> = Vec::new();
        let mut sep: Option<u8> = None;
        loop {
            // What separates the next entry from this one, when this one is a function (which
            // is not a condition, so it does not decide how conditions join).
            let function = self.entry(top, sep, &mut items)?;
            match self.peek() {
                None if top => break,
                None => {
                    let c = close.unwrap_or(b')') as char;
                    return self.err(self.at, format!("missing '{c}'"));
                }
                Some(c) if Some(c) == close => {
                    self.at += 1;
                    break;
                }
                Some(c @ (b'&' | b'|')) => {
                    // `select()`, `limit()` and `sort()` are joined with '&' whatever joins the
                    // conditions: `a=1|a=2&select(id)` is one '|' group and a select.
                    if top && c == b'&' && (function || self.function_follows()) {
                        self.at += 1;
                        continue;
                    }
                    if sep.is_some_and(|s| s != c) {
                        return self.err(
                            self.at,
                            "'&' and '|' mixed at one level: group them with ( ) or [ ]",
                        );
                    }
                    sep = Some(c);
                    self.at += 1;
                }
                Some(c) => return self.err(self.at, format!("unexpected '{}'", c as char)),
            }
        }
        Ok(match items.len() {
            0 => None,
            1 => items.pop(),
            _ if sep == Some(b'|') => Some(Filter::Or(items)),
            _ => Some(Filter::And(items)),
        })
    }

    /// Whether `&` at the cursor is followed by a function (`select(`, `limit(`, `sort(`).
    fn function_follows(&self) -> bool {
        let rest = &self.s[self.at + 1..];
        let name_len = rest.iter().take_while(|c| !ends_name(**c)).count();
        rest.get(name_len) == Some(&b'(')
            && matches!(&rest[..name_len], b"select" | b"limit" | b"sort")
    }

    /// Parses one entry, adding a condition or group to `items` (functions go to the query);
    /// returns whether it was a function.
    fn entry(
        &mut self,
        top: bool,
        sep: Option<u8>,
        items: &mut Vec<Filter>,
    ) -> Result<bool, QueryError> {
        let start = self.at;
        match self.peek() {
            None | Some(b'&' | b'|' | b')' | b']') => return Ok(false),
            Some(open @ (b'(' | b'[')) => {
                if self.depth >= MAX_DEPTH {
                    return self.err(start, "groups nested too deeply");
                }
                self.at += 1;
                self.depth += 1;
                let close = if open == b'(' { b')' } else { b']' };
                let inner = self.group(Some(close))?;
                self.depth -= 1;
                items.extend(inner);
                return Ok(false);
            }
            Some(_) => {}
        }
        while self.peek().is_some_and(|c| !ends_name(c)) {
            self.at += 1;
        }
        let name_end = self.at;
        if self.peek() == Some(b'(') {
            let name = self.decode(start, name_end)?;
            // Joined to what comes before with '&' (or first).
            let after_bar = start > 0 && self.s[start - 1] == b'|';
            if !top || after_bar {
                return self.err(
                    start,
                    format!("{name}() must be a top-level entry joined with '&'"),
                );
            }
            return self.function(&name, start).map(|()| true);
        }
        if name_end == start {
            return self.err(start, "expected an attribute name");
        }
        let name = self.decode(start, name_end)?;
        let op_at = self.at;
        let (op, typed) = self.operator()?;
        let value_start = self.at;
        while self.peek().is_some_and(|c| !ends_value(c)) {
            self.at += 1;
        }
        let text = self.decode(value_start, self.at)?;
        let (op, value) = operand(op, typed, text, op_at)?;
        let path: Vec<String> = name.split('.').map(str::to_owned).collect();
        if path.iter().any(String::is_empty) {
            return self.err(start, format!("invalid attribute name '{name}'"));
        }
        let chained = match (Op::from_fiql(&name), items.last(), sep) {
            (Some(chained_op), Some(Filter::Cond(prev)), None | Some(b'&'))
                if op == Op::Eq && typed == Typing::Plain =>
            {
                Some((prev.path.clone(), chained_op))
            }
            _ => None,
        };
        items.push(Filter::Cond(Condition {
            path,
            op,
            value,
            at: start,
            chained,
        }));
        Ok(false)
    }

    /// Reads the operator after an attribute name.
    fn operator(&mut self) -> Result<(Op, Typing), QueryError> {
        let at = self.at;
        let found = if self.eat(b"===") {
            (Op::Eq, Typing::Strict)
        } else if self.eat(b"!==") {
            (Op::Ne, Typing::Strict)
        } else if self.eat(b"==") {
            (Op::Eq, Typing::Converted)
        } else if self.eat(b"!=") {
            (Op::Ne, Typing::Converted)
        } else if self.eat(b">=") {
            (Op::Ge, Typing::Converted)
        } else if self.eat(b">") {
            (Op::Gt, Typing::Converted)
        } else if self.eat(b"<=") {
            (Op::Le, Typing::Converted)
        } else if self.eat(b"<") {
            (Op::Lt, Typing::Converted)
        } else if self.eat(b"=") {
            let rest = &self.s[self.at..];
            let word = rest.iter().take_while(|c| c.is_ascii_alphabetic()).count();
            if word > 0 && rest.get(word) == Some(&b'=') {
                let name = std::str::from_utf8(&rest[..word]).unwrap_or_default();
                let Some(op) = Op::from_fiql(name) else {
                    return self.err(at, format!("unknown operator '={name}='"));
                };
                self.at += word + 1;
                (op, Typing::Converted)
            } else {
                (Op::Eq, Typing::Plain)
            }
        } else {
            return self.err(
                at,
                "expected an operator such as '=' after the attribute name",
            );
        };
        Ok(found)
    }

    fn function(&mut self, name: &str, start: usize) -> Result<(), QueryError> {
        self.at += 1; // '('
        match name {
            "select" => {
                if self.query.select.is_some() {
                    return self.err(start, "select() given twice");
                }
                let select = if self.eat(b"[") {
                    let fields = self.fields(b']')?;
                    Select::Array(fields)
                } else {
                    let before = self.at;
                    let fields = self.fields(b')')?;
                    let trailing_comma = self.s.get(self.at.wrapping_sub(2)) == Some(&b',');
                    match <[Field; 1]>::try_from(fields) {
                        Ok([f]) if !trailing_comma => Select::Value(f),
                        Ok(f) => Select::Object(f.into()),
                        Err(fields) if fields.is_empty() => {
                            return self.err(before, "select() needs at least one property");
                        }
                        Err(fields) => Select::Object(fields),
                    }
                };
                if matches!(select, Select::Array(_)) && !self.eat(b")") {
                    return self.err(self.at, "expected ')' after the ']' of select([...])");
                }
                self.query.select = Some(select);
            }
            "limit" => {
                if self.query.limit.is_some() {
                    return self.err(start, "limit() given twice");
                }
                let args = self.numbers()?;
                let limit = match args.as_slice() {
                    [n] => Limit { start: 0, end: *n },
                    [s, e] => Limit {
                        start: *s,
                        end: (*e).max(*s),
                    },
                    _ => return self.err(start, "limit() takes one or two numbers"),
                };
                self.query.limit = Some(limit);
            }
            "sort" => {
                if !self.query.sort.is_empty() {
                    return self.err(start, "sort() given twice");
                }
                loop {
                    let key_at = self.at;
                    let descending = if self.eat(b"-") {
                        true
                    } else {
                        self.eat(b"+");
                        false
                    };
                    while self.peek().is_some_and(|c| !matches!(c, b',' | b')')) {
                        self.at += 1;
                    }
                    let name = self.decode(key_at, self.at)?;
                    let name = name.trim_start_matches(['+', '-']);
                    if name.is_empty() || name.split('.').any(str::is_empty) {
                        return self.err(key_at, "sort() needs attribute names");
                    }
                    self.query.sort.push(SortKey {
                        path: name.split('.').map(str::to_owned).collect(),
                        descending,
                    });
                    if self.eat(b")") {
                        break;
                    }
                    if !self.eat(b",") {
                        return self.err(self.at, "missing ')' after sort(");
                    }
                }
            }
            other => return self.err(start, format!("unknown function {other}()")),
        }
        Ok(())
    }

    /// Comma-separated unsigned integers up to `)`.
    fn numbers(&mut self) -> Result<Vec<usize>, QueryError> {
        let mut out = Vec::new();
        loop {
            let at = self.at;
            while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.at += 1;
            }
            let digits = std::str::from_utf8(&self.s[at..self.at]).unwrap_or_default();
            match digits.parse::<usize>() {
                Ok(n) => out.push(n),
                Err(_) => return self.err(at, "expected a non-negative integer"),
            }
            if self.eat(b")") {
                return Ok(out);
            }
            if !self.eat(b",") {
                return self.err(self.at, "expected ',' or ')'");
            }
        }
    }

    /// Property names (with `name{...}` nesting) separated by commas, up to and including
    /// `close`. A trailing comma is allowed (`select(a,)`).
    fn fields(&mut self, close: u8) -> Result<Vec<Field>, QueryError> {
        if self.depth >= MAX_DEPTH {
            return self.err(self.at, "selections nested too deeply");
        }
        self.depth += 1;
        let mut out = Vec::new();
        loop {
            if self.eat(&[close]) {
                break;
            }
            let at = self.at;
            while self
                .peek()
                .is_some_and(|c| !matches!(c, b',' | b'{' | b'}' | b'(' | b')' | b'[' | b']'))
            {
                self.at += 1;
            }
            let name = self.decode(at, self.at)?;
            if name.is_empty() {
                return self.err(at, "expected a property name");
            }
            let nested = if self.eat(b"{") {
                Some(self.fields(b'}')?)
            } else {
                None
            };
            out.push(Field { name, nested });
            if self.eat(&[close]) {
                break;
            }
            if !self.eat(b",") {
                return self.err(self.at, format!("expected ',' or '{}'", close as char));
            }
        }
        self.depth -= 1;
        Ok(out)
    }
}

/// How a condition's value text is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Typing {
    /// `=`: the attribute's type; `null` is null (the documented behaviour).
    Plain,
    /// `==`, `=gt=`, `<`, ...: `null` and `type:` prefixes, then the attribute's type; `==v*`
    /// is starts-with.
    Converted,
    /// `===`, `!==`: the attribute's type only.
    Strict,
}

fn operand(op: Op, typing: Typing, text: String, at: usize) -> Result<(Op, Operand), QueryError> {
    if typing == Typing::Strict {
        return Ok((op, Operand::Text(text)));
    }
    if text == "null" {
        return Ok((op, Operand::Null));
    }
    if typing == Typing::Plain {
        return Ok((op, Operand::Text(text)));
    }
    if op == Op::Eq
        && let Some(prefix) = text.strip_suffix('*')
    {
        return Ok((Op::StartsWith, Operand::Text(prefix.to_owned())));
    }
    let Some((kind, rest)) = text.split_once(':') else {
        return Ok((op, Operand::Text(text)));
    };
    let value = match kind {
        "number" => match rest.parse::<f64>() {
            Ok(n) if n.is_finite() => Operand::Number(n),
            _ => {
                return Err(QueryError {
                    at,
                    message: format!("'{rest}' is not a number"),
                });
            }
        },
        "boolean" => match rest {
            "true" => Operand::Bool(true),
            "false" => Operand::Bool(false),
            _ => {
                return Err(QueryError {
                    at,
                    message: format!("'{rest}' is not a boolean"),
                });
            }
        },
        "string" => Operand::String(rest.to_owned()),
        "date" => Operand::Date(rest.to_owned()),
        _ => Operand::Text(text),
    };
    Ok((op, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(q: &Query) -> &Condition {
        match &q.filter {
            Some(Filter::Cond(c)) => c,
            other => panic!("not one condition: {other:?}"),
        }
    }

    #[test]
    fn operators() {
        for (q, op, v) in [
            ("a=5", Op::Eq, Operand::Text("5".into())),
            ("a==null", Op::Eq, Operand::Null),
            ("a=null", Op::Eq, Operand::Null),
            ("a===null", Op::Eq, Operand::Text("null".into())),
            ("a!==x", Op::Ne, Operand::Text("x".into())),
            ("a==number:5", Op::Eq, Operand::Number(5.0)),
            ("a==boolean:true", Op::Eq, Operand::Bool(true)),
            ("a==string:5", Op::Eq, Operand::String("5".into())),
            (
                "a==date:2024-01-05T20%3A07%3A27.955Z",
                Op::Eq,
                Operand::Date("2024-01-05T20:07:27.955Z".into()),
            ),
            ("a==ab*", Op::StartsWith, Operand::Text("ab".into())),
            ("a=gt=20", Op::Gt, Operand::Text("20".into())),
            ("a=ne=null", Op::Ne, Operand::Null),
            ("a>=2", Op::Ge, Operand::Text("2".into())),
            ("a<2", Op::Lt, Operand::Text("2".into())),
            ("a!=2", Op::Ne, Operand::Text("2".into())),
            ("a=sw=lic", Op::StartsWith, Operand::Text("lic".into())),
            ("a=ct=x%7Cy", Op::Contains, Operand::Text("x|y".into())),
            ("a=ew=z", Op::EndsWith, Operand::Text("z".into())),
            ("a=", Op::Eq, Operand::Text(String::new())),
        ] {
            let parsed = parse(q).unwrap_or_else(|e| panic!("{q}: {e}"));
            let c = cond(&parsed);
            assert_eq!(
                (c.path.as_slice(), c.op, &c.value),
                (&["a".to_owned()][..], op, &v),
                "{q}"
            );
        }
    }

    #[test]
    fn functions_are_joined_with_ampersand_whatever_joins_the_conditions() {
        for q in [
            "category=a|category=b&select(id,brand{name})",
            "select(id)&category=a|category=b",
            "category=a|category=b&limit(1)&sort(-id)",
        ] {
            let parsed = parse(q).unwrap_or_else(|e| panic!("{q}: {e}"));
            assert!(
                matches!(&parsed.filter, Some(Filter::Or(v)) if v.len() == 2),
                "{q}: {parsed:?}"
            );
        }
        // A function is not joined with '|', and conditions still do not mix at one level.
        assert!(parse("a=1|select(x)").is_err());
        assert!(parse("a=1&b=2|c=3").is_err());
        assert!(parse("a=1|b=2&c=3").is_err());
    }

    #[test]
    fn groups_and_functions() {
        let q = parse("rating=5|(price=gt=100&price=lt=200)").unwrap();
        let Some(Filter::Or(items)) = &q.filter else {
            panic!("{q:?}")
        };
        assert!(matches!(&items[1], Filter::And(v) if v.len() == 2));
        let q = parse("price=lt=10|[rating=5&[tags=usb|tags=dev]]").unwrap();
        assert!(matches!(&q.filter, Some(Filter::Or(v)) if v.len() == 2));
        let q =
            parse("brand.name=Acme&select(id,brand{name})&limit(2,5)&sort(-price,+id)").unwrap();
        assert_eq!(cond(&q).path, vec!["brand", "name"]);
        assert_eq!(q.limit, Some(Limit { start: 2, end: 5 }));
        assert_eq!(q.sort.len(), 2);
        assert!(q.sort[0].descending && !q.sort[1].descending);
        let Some(Select::Object(fields)) = &q.select else {
            panic!()
        };
        assert_eq!(fields[1].nested.as_ref().unwrap()[0].name, "name");
        assert!(matches!(
            parse("select(a)").unwrap().select,
            Some(Select::Value(_))
        ));
        assert!(
            matches!(parse("select(a,)").unwrap().select, Some(Select::Object(f)) if f.len() == 1)
        );
        assert!(
            matches!(parse("select([a,b])").unwrap().select, Some(Select::Array(f)) if f.len() == 2)
        );
        assert_eq!(
            parse("limit(3)").unwrap().limit,
            Some(Limit { start: 0, end: 3 })
        );
        let q = parse("price=gt=20&lt=100").unwrap();
        let Some(Filter::And(items)) = &q.filter else {
            panic!()
        };
        let Filter::Cond(c) = &items[1] else { panic!() };
        assert_eq!(c.chained, Some((vec!["price".to_owned()], Op::Lt)));
        assert_eq!(parse("").unwrap(), Query::default());
        assert!(parse("a=1&").unwrap().filter.is_some());
    }

    #[test]
    fn errors_have_positions() {
        for (q, at) in [
            ("a=1&b=2|c=3", 7),
            ("foo(1)", 0),
            ("limit(1,2,3)", 0),
            ("limit(x)", 6),
            ("price=xx=3", 5),
            ("(a=1", 4),
            ("a=1)", 3),
            ("=1", 0),
            ("a=1|limit(2)", 4),
            ("(limit(2))", 1),
            ("select()", 7),
            ("a==number:x", 1),
        ] {
            let e = parse(q).expect_err(q);
            assert_eq!(e.at, at, "{q}: {e}");
        }
        let deep = "(".repeat(100) + "a=1" + &")".repeat(100);
        assert!(parse(&deep).is_err());
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "[a-z=<>!()\\[\\]&|,{}*:.%0-9+-]{0,40}") {
            let _ = parse(&s);
        }
    }
}

//! The scalar functions of Tessera's SQL: Harper's date functions (times are epoch milliseconds,
//! formatted dates are UTC), arithmetic, text and NULL handling.

use chrono::{DateTime, Datelike, Months, NaiveDate, TimeZone, Timelike, Utc};
use tessera_storage::Value;
use tessera_storage::value::parse_date;

use super::expr::{as_number, number, text};
use super::geo::{self, Geo};

/// Harper's format of a full date and time.
const HARPER_TIME: &str = "YYYY-MM-DDTHH:mm:ss.SSSZZ";

#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Func {
    Now,
    CurrentDate,
    CurrentTime,
    Date,
    DateFormat,
    DateAdd,
    DateSub,
    DateDiff,
    Extract,
    OffsetUtc,
    ServerTime,
    Abs,
    Ceil,
    Floor,
    Round,
    Sqrt,
    Power,
    Random,
    Upper,
    Lower,
    Length,
    Concat,
    Substring,
    Trim,
    LTrim,
    RTrim,
    Replace,
    Coalesce,
    NullIf,
    Geo(Geo),
}

impl Func {
    /// The function called `name` (any case), and whether it takes `args` arguments.
    pub(super) fn named(name: &str) -> Option<(Func, std::ops::RangeInclusive<usize>)> {
        use Func::*;
        Some(match name.to_ascii_lowercase().as_str() {
            "now" | "getdate" | "current_timestamp" => (Now, 0..=0),
            "current_date" => (CurrentDate, 0..=0),
            "current_time" => (CurrentTime, 0..=0),
            "date" => (Date, 0..=1),
            "date_format" => (DateFormat, 2..=2),
            "date_add" => (DateAdd, 3..=3),
            "date_sub" => (DateSub, 3..=3),
            "date_diff" | "datediff" => (DateDiff, 2..=3),
            "extract" => (Extract, 2..=2),
            "offset_utc" => (OffsetUtc, 2..=2),
            "get_server_time" => (ServerTime, 0..=0),
            "abs" => (Abs, 1..=1),
            "ceil" | "ceiling" => (Ceil, 1..=1),
            "floor" => (Floor, 1..=1),
            "round" => (Round, 1..=2),
            "sqrt" => (Sqrt, 1..=1),
            "power" | "pow" => (Power, 2..=2),
            "random" | "rand" => (Random, 0..=0),
            "upper" | "ucase" => (Upper, 1..=1),
            "lower" | "lcase" => (Lower, 1..=1),
            "length" | "len" | "char_length" => (Length, 1..=1),
            "concat" => (Concat, 1..=usize::MAX),
            "substring" | "substr" | "mid" => (Substring, 2..=3),
            "trim" => (Trim, 1..=1),
            "ltrim" => (LTrim, 1..=1),
            "rtrim" => (RTrim, 1..=1),
            "replace" => (Replace, 3..=3),
            "coalesce" | "ifnull" => (Coalesce, 1..=usize::MAX),
            "nullif" => (NullIf, 2..=2),
            _ => return geo::named(name).map(|(g, arity)| (Geo(g), arity)),
        })
    }
}

/// A value as a point in time (epoch ms): a number is one, text is parsed (ISO dates, and
/// `Y-M-D` with one-digit parts); `None` for what is not a time. No value means now.
fn time(v: Option<&Value>, now: f64) -> Option<f64> {
    match v {
        None => Some(now),
        Some(Value::Date(ms)) => Some(*ms),
        Some(Value::Int(i)) => Some(*i as f64),
        Some(Value::Float(f)) => Some(*f),
        Some(Value::String(s)) => parse_date(s)
            .or_else(|| {
                // Harper's own format: an offset without a colon (`+0000`).
                DateTime::parse_from_str(s.trim(), "%Y-%m-%dT%H:%M:%S%.f%z")
                    .ok()
                    .map(|t| t.timestamp_millis() as f64)
            })
            .or_else(|| {
                let mut parts = s.trim().splitn(3, '-').map(|p| p.parse::<u32>().ok());
                let (y, m, d) = (parts.next()??, parts.next()??, parts.next()??);
                let date = NaiveDate::from_ymd_opt(y as i32, m, d)?;
                Some(date.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis() as f64)
            }),
        _ => None,
    }
}

fn utc(ms: f64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms.floor() as i64).single()
}

/// Formats a time with moment.js's tokens (the ones Harper's SQL uses), at `offset_minutes`.
fn format(ms: f64, pattern: &str, offset_minutes: i32) -> String {
    let Some(t) = utc(ms + f64::from(offset_minutes) * 60_000.0) else {
        return "Invalid date".to_owned();
    };
    let zone = |colon: bool| {
        let (sign, m) = if offset_minutes < 0 {
            ('-', -offset_minutes)
        } else {
            ('+', offset_minutes)
        };
        if colon {
            format!("{sign}{:02}:{:02}", m / 60, m % 60)
        } else {
            format!("{sign}{:02}{:02}", m / 60, m % 60)
        }
    };
    const TOKENS: [&str; 19] = [
        "YYYY", "SSS", "MM", "DD", "HH", "hh", "mm", "ss", "ZZ", "YY", "M", "D", "H", "h", "m",
        "s", "Z", "x", "X",
    ];
    let mut out = String::new();
    let mut rest = pattern;
    while !rest.is_empty() {
        if let Some(lit) = rest.strip_prefix('[') {
            let end = lit.find(']').unwrap_or(lit.len());
            out.push_str(&lit[..end]);
            rest = lit.get(end + 1..).unwrap_or("");
            continue;
        }
        let Some(token) = TOKENS.iter().find(|t| rest.starts_with(**t)) else {
            let c = rest.chars().next().unwrap_or(' ');
            out.push(c);
            rest = &rest[c.len_utf8()..];
            continue;
        };
        let hour12 = (t.hour() + 11) % 12 + 1;
        out.push_str(&match *token {
            "YYYY" => format!("{:04}", t.year()),
            "YY" => format!("{:02}", t.year() % 100),
            "MM" => format!("{:02}", t.month()),
            "M" => t.month().to_string(),
            "DD" => format!("{:02}", t.day()),
            "D" => t.day().to_string(),
            "HH" => format!("{:02}", t.hour()),
            "H" => t.hour().to_string(),
            "hh" => format!("{hour12:02}"),
            "h" => hour12.to_string(),
            "mm" => format!("{:02}", t.minute()),
            "m" => t.minute().to_string(),
            "ss" => format!("{:02}", t.second()),
            "s" => t.second().to_string(),
            "SSS" => format!("{:03}", t.timestamp_subsec_millis()),
            "ZZ" => zone(false),
            "Z" => zone(true),
            "x" => format!("{}", ms.floor() as i64),
            _ => format!("{}", (ms / 1000.0).floor() as i64),
        });
        rest = &rest[token.len()..];
    }
    out
}

/// A length of time in moment.js's units: fixed milliseconds, or calendar months.
enum Unit {
    Fixed(f64),
    Months(f64),
}

/// Moment's unit names: `ms`, `s`, `m`, `h`, `d`, `w`, `M`, `Q`, `y`, and the words (`days`).
fn unit(name: &str) -> Option<Unit> {
    let word = name.to_ascii_lowercase();
    let word = word
        .strip_suffix('s')
        .filter(|w| w.len() > 1)
        .unwrap_or(&word);
    Some(match (name, word) {
        ("ms", _) | (_, "millisecond") => Unit::Fixed(1.0),
        ("s", _) | (_, "second") => Unit::Fixed(1_000.0),
        ("m", _) | (_, "minute") => Unit::Fixed(60_000.0),
        ("h", _) | (_, "hour") => Unit::Fixed(3_600_000.0),
        ("d", _) | (_, "day") => Unit::Fixed(86_400_000.0),
        ("w", _) | (_, "week") => Unit::Fixed(7.0 * 86_400_000.0),
        ("M", _) | (_, "month") => Unit::Months(1.0),
        ("Q", _) | (_, "quarter") => Unit::Months(3.0),
        ("y", _) | (_, "year") => Unit::Months(12.0),
        _ => return None,
    })
}

/// Adds `amount` of unit `name` to a time (months past the end of a month land on its last day).
fn add(ms: f64, amount: f64, name: &str) -> Option<f64> {
    match unit(name)? {
        Unit::Fixed(per) => Some(ms + amount * per),
        Unit::Months(per) => add_months(ms, (amount * per).trunc() as i32),
    }
}

fn add_months(ms: f64, months: i32) -> Option<f64> {
    let t = utc(ms)?;
    let moved = if months >= 0 {
        t.checked_add_months(Months::new(months as u32))?
    } else {
        t.checked_sub_months(Months::new(months.unsigned_abs()))?
    };
    Some(moved.timestamp_millis() as f64 + (ms - ms.floor()))
}

/// `a - b` in unit `name` (milliseconds without one), with the fraction, as moment's
/// `diff(b, unit, true)`.
fn diff(a: f64, b: f64, name: Option<&str>) -> Option<f64> {
    match name.map(unit) {
        None => Some(a - b),
        Some(None) => None,
        Some(Some(Unit::Fixed(per))) => Some((a - b) / per),
        Some(Some(Unit::Months(per))) => Some(month_diff(a, b)? / per),
    }
}

/// Months from `b` to `a`, with the fraction of the month they end in (moment's `monthDiff`).
fn month_diff(a: f64, b: f64) -> Option<f64> {
    let (ta, tb) = (utc(a)?, utc(b)?);
    let whole = (tb.year() - ta.year()) * 12 + tb.month() as i32 - ta.month() as i32;
    let anchor = add_months(a, whole)?;
    let adjust = if b - anchor < 0.0 {
        let before = add_months(a, whole - 1)?;
        (b - anchor) / (anchor - before)
    } else {
        let after = add_months(a, whole + 1)?;
        (b - anchor) / (after - anchor)
    };
    Some(-(f64::from(whole) + adjust))
}

fn num(v: Option<&Value>) -> Option<f64> {
    v.and_then(as_number)
}

/// Calls `f` on `args` (already checked to be as many as it takes) at time `now`.
pub(super) fn call(f: Func, args: &[Value], now: f64) -> Value {
    use Func::*;
    let a = args.first();
    let s = |i: usize| args.get(i).map(text);
    let ms = |v: Option<f64>| v.map_or(Value::Null, |m| Value::Int(m.floor() as i64));
    let math = |g: fn(f64) -> f64| match a {
        Some(Value::Null) | None => Value::Null,
        Some(v) => as_number(v).map_or(Value::Null, |n| number(g(n))),
    };
    if let Geo(g) = f {
        return geo::call(g, args);
    }
    if !matches!(f, Coalesce | Concat | NullIf | Now | Date | Random)
        && args.iter().any(|v| matches!(v, Value::Null))
    {
        return Value::Null;
    }
    match f {
        Now => Value::Int(now as i64),
        CurrentDate => Value::String(format(now, "YYYY-MM-DD", 0)),
        CurrentTime => Value::String(format(now, "HH:mm:ss.SSS", 0)),
        ServerTime => Value::String(format(now, HARPER_TIME, 0)),
        Date => time(a, now).map_or(Value::Null, |t| Value::String(format(t, HARPER_TIME, 0))),
        DateFormat => match (time(a, now), s(1)) {
            (Some(t), Some(p)) => Value::String(format(t, &p, 0)),
            _ => Value::Null,
        },
        DateAdd | DateSub => {
            let sign = if f == DateSub { -1.0 } else { 1.0 };
            match (time(a, now), num(args.get(1)), s(2)) {
                (Some(t), Some(n), Some(u)) => ms(add(t, sign * n, &u)),
                _ => Value::Null,
            }
        }
        DateDiff => match (time(a, now), time(args.get(1), now)) {
            (Some(x), Some(y)) => diff(x, y, s(2).as_deref()).map_or(Value::Null, number),
            _ => Value::Null,
        },
        Extract => {
            let Some(t) = time(a, now) else {
                return Value::Null;
            };
            let pattern = match s(1).unwrap_or_default().to_ascii_lowercase().as_str() {
                "year" => "YYYY",
                "month" => "MM",
                "day" => "DD",
                "hour" => "HH",
                "minute" => "mm",
                "second" => "ss",
                "millisecond" => "SSS",
                _ => return Value::Null,
            };
            Value::String(format(t, pattern, 0))
        }
        OffsetUtc => match (time(a, now), num(args.get(1))) {
            (Some(t), Some(o)) => {
                // moment: an offset under 16 is in hours, else in minutes.
                let minutes = if o.abs() < 16.0 { o * 60.0 } else { o };
                Value::String(format(t, HARPER_TIME, minutes as i32))
            }
            _ => Value::Null,
        },
        Abs => math(f64::abs),
        Ceil => math(f64::ceil),
        Floor => math(f64::floor),
        Sqrt => math(f64::sqrt),
        Round => {
            let places = num(args.get(1)).unwrap_or(0.0).trunc() as i32;
            match num(a) {
                Some(n) => {
                    let scale = 10f64.powi(places);
                    // Half away from zero... as JavaScript's Math.round, half up.
                    number((n * scale + 0.5).floor() / scale)
                }
                None => Value::Null,
            }
        }
        Power => match (num(a), num(args.get(1))) {
            (Some(x), Some(y)) => number(x.powf(y)),
            _ => Value::Null,
        },
        Random => Value::Float(rand::random::<f64>()),
        Upper => Value::String(s(0).unwrap_or_default().to_uppercase()),
        Lower => Value::String(s(0).unwrap_or_default().to_lowercase()),
        Length => Value::Int(s(0).unwrap_or_default().chars().count() as i64),
        Concat => Value::String(
            args.iter()
                .filter(|v| !matches!(v, Value::Null))
                .map(text)
                .collect(),
        ),
        Substring => {
            let whole: Vec<char> = s(0).unwrap_or_default().chars().collect();
            let start = (num(args.get(1)).unwrap_or(1.0).trunc() as i64 - 1).max(0) as usize;
            let len = num(args.get(2)).map_or(whole.len(), |n| n.max(0.0) as usize);
            Value::String(whole.iter().skip(start).take(len).collect())
        }
        Trim => Value::String(s(0).unwrap_or_default().trim().to_owned()),
        LTrim => Value::String(s(0).unwrap_or_default().trim_start().to_owned()),
        RTrim => Value::String(s(0).unwrap_or_default().trim_end().to_owned()),
        Replace => Value::String(
            s(0).unwrap_or_default()
                .replace(&s(1).unwrap_or_default(), &s(2).unwrap_or_default()),
        ),
        Coalesce => args
            .iter()
            .find(|v| !matches!(v, Value::Null))
            .cloned()
            .unwrap_or(Value::Null),
        NullIf => match (a, args.get(1)) {
            (Some(x), Some(y)) if super::expr::compare(x, y) == Some(std::cmp::Ordering::Equal) => {
                Value::Null
            }
            (Some(x), _) => x.clone(),
            _ => Value::Null,
        },
        Geo(_) => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-02-29T12:34:56.789Z
    const T: f64 = 1_709_210_096_789.0;

    #[test]
    fn dates_as_harper_gives_them() {
        assert_eq!(call(Func::Now, &[], T), Value::Int(T as i64));
        assert_eq!(
            call(Func::CurrentDate, &[], T),
            Value::String("2024-02-29".into())
        );
        assert_eq!(
            call(Func::CurrentTime, &[], T),
            Value::String("12:34:56.789".into())
        );
        assert_eq!(
            call(Func::Date, &[Value::Int(T as i64)], 0.0),
            Value::String("2024-02-29T12:34:56.789+0000".into())
        );
        assert_eq!(
            call(
                Func::DateFormat,
                &[Value::Int(T as i64), Value::String("x".into())],
                0.0
            ),
            Value::String(format!("{}", T as i64))
        );
        let plus = |n: i64, u: &str| {
            call(
                Func::DateAdd,
                &[Value::Int(T as i64), Value::Int(n), Value::String(u.into())],
                0.0,
            )
        };
        assert_eq!(plus(1, "days"), Value::Int(T as i64 + 86_400_000));
        // A year after a leap day is the last day of February.
        assert_eq!(
            call(Func::Date, &[plus(1, "years")], 0.0),
            Value::String("2025-02-28T12:34:56.789+0000".into())
        );
        assert_eq!(
            call(
                Func::DateSub,
                &[
                    Value::String("2020-4-1".into()),
                    Value::Int(3),
                    Value::String("years".into())
                ],
                0.0
            ),
            Value::Int(1_491_004_800_000)
        );
        assert_eq!(
            call(
                Func::DateDiff,
                &[
                    plus(5, "days"),
                    Value::Int(T as i64),
                    Value::String("days".into())
                ],
                0.0
            ),
            Value::Int(5)
        );
        assert_eq!(
            call(
                Func::OffsetUtc,
                &[Value::Int(T as i64), Value::Int(-6)],
                0.0
            ),
            Value::String("2024-02-29T06:34:56.789-0600".into())
        );
        assert_eq!(
            call(
                Func::Extract,
                &[Value::Int(T as i64), Value::String("month".into())],
                0.0
            ),
            Value::String("02".into())
        );
    }

    #[test]
    fn numbers_and_text() {
        assert_eq!(call(Func::Round, &[Value::Float(2.5)], 0.0), Value::Int(3));
        assert_eq!(
            call(Func::Round, &[Value::Float(1.2345), Value::Int(2)], 0.0),
            Value::Float(1.23)
        );
        assert_eq!(
            call(Func::Floor, &[Value::Float(-1.5)], 0.0),
            Value::Int(-2)
        );
        assert_eq!(call(Func::Abs, &[Value::Null], 0.0), Value::Null);
        assert_eq!(
            call(
                Func::Substring,
                &[Value::String("Harper".into()), Value::Int(2), Value::Int(3)],
                0.0
            ),
            Value::String("arp".into())
        );
        assert_eq!(
            call(
                Func::Concat,
                &[Value::String("a".into()), Value::Int(1), Value::Null],
                0.0
            ),
            Value::String("a1".into())
        );
        assert_eq!(
            call(Func::Coalesce, &[Value::Null, Value::Int(3)], 0.0),
            Value::Int(3)
        );
    }
}

//! Type enforcement of incoming records against a table's schema (docs/rest.md).
//!
//! Checks run on PUT, PATCH and POST for every body format, before anything is written. Values are
//! coerced where Harper coerces (`Date` from a string or number, an integral double to an
//! integer); every violation is collected, and the messages name the property.

use std::collections::HashMap;

use crate::schema::{Attribute, FieldType, ObjectType, Scalar, Table};
use crate::value::{Value, parse_date};

/// JavaScript's `Number.MAX_SAFE_INTEGER + 1`, the bound Harper gives `Long`.
const LONG_BOUND: i64 = 9_007_199_254_740_992;

/// How a write treats the properties it does not mention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// PUT and POST: the body is the whole record; required properties must be present.
    Replace,
    /// PATCH: only the given properties change; required ones may be omitted but not nulled.
    Patch,
}

/// Every problem found in a record, each naming its property.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join(". "))]
pub struct ValidationError(pub Vec<String>);

/// Checks (and coerces, in place) `record` for a write to `table`.
///
/// `@createdTime` and `@updatedTime` properties are removed: the server sets them.
pub fn check_record(
    table: &Table,
    record: &mut Value,
    mode: WriteMode,
) -> Result<(), ValidationError> {
    let Value::Object(props) = record else {
        return Err(ValidationError(vec![format!(
            "The record must be an object, not {}",
            record.kind()
        )]));
    };
    props.retain(|(k, _)| {
        !table
            .attribute(k)
            .is_some_and(|a| a.created_time || a.updated_time)
    });
    let mut errors = Vec::new();
    check_object(
        &table.attributes,
        table.sealed,
        &table.types,
        props,
        mode,
        None,
        &mut errors,
        0,
    );
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ValidationError(errors))
    }
}

/// Where a value sits in the record, spelled only when a message needs it (`a.b[2]`).
#[derive(Clone, Copy)]
enum PropPath<'a> {
    Field(Option<&'a PropPath<'a>>, &'a str),
    Index(&'a PropPath<'a>, usize),
}

impl std::fmt::Display for PropPath<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PropPath::Field(None, name) => f.write_str(name),
            PropPath::Field(Some(parent), name) => write!(f, "{parent}.{name}"),
            PropPath::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn check_object(
    attributes: &[Attribute],
    sealed: bool,
    types: &HashMap<String, ObjectType>,
    props: &mut [(String, Value)],
    mode: WriteMode,
    parent: Option<&PropPath<'_>>,
    errors: &mut Vec<String>,
    depth: usize,
) {
    for (name, value) in props.iter_mut() {
        let full = PropPath::Field(parent, name);
        match attributes.iter().find(|a| &a.name == name) {
            None if sealed => errors.push(format!("Property {full} is not allowed")),
            None => {}
            Some(a) if a.computed.is_some() => errors.push(format!(
                "Computed property {full} may not be directly assigned a value"
            )),
            Some(a) if a.relationship.is_some() => {}
            Some(a) => {
                if matches!(value, Value::Null) {
                    if a.required {
                        errors.push(format!(
                            "Property {full} is required (and does not allow null values)"
                        ));
                    }
                } else {
                    check_value(&a.ty, types, value, &full, errors, depth);
                }
            }
        }
    }
    if mode == WriteMode::Replace {
        for a in attributes
            .iter()
            .filter(|a| a.required && !a.primary_key && a.is_stored())
        {
            if !props.iter().any(|(k, _)| k == &a.name) {
                errors.push(format!(
                    "Property {} is required",
                    PropPath::Field(parent, &a.name)
                ));
            }
        }
    }
}

fn check_value(
    ty: &FieldType,
    types: &HashMap<String, ObjectType>,
    value: &mut Value,
    prop: &PropPath<'_>,
    errors: &mut Vec<String>,
    depth: usize,
) {
    if matches!(value, Value::Null) {
        return;
    }
    let must = |what: &str, value: &Value, errors: &mut Vec<String>| {
        errors.push(format!("Value {value} in property {prop} must be {what}"));
    };
    match ty {
        FieldType::Scalar(s) => match s {
            Scalar::Any => {}
            Scalar::String => {
                if !matches!(value, Value::String(_)) {
                    must("a string", value, errors);
                }
            }
            Scalar::Id => match value {
                Value::String(_) => {}
                Value::Array(items) if items.iter().all(|v| matches!(v, Value::String(_))) => {}
                _ => must("a string", value, errors),
            },
            Scalar::Boolean => {
                if !matches!(value, Value::Bool(_)) {
                    must("a boolean", value, errors);
                }
            }
            Scalar::Int => integer(
                value,
                (i32::MIN as i64, i32::MAX as i64),
                "an integer (from -2147483648 to 2147483647)",
                prop,
                errors,
            ),
            Scalar::Long => integer(
                value,
                (-LONG_BOUND, LONG_BOUND),
                "an integer (from -9007199254740992 to 9007199254740992)",
                prop,
                errors,
            ),
            Scalar::BigInt => integer(value, (i64::MIN, i64::MAX), "an integer", prop, errors),
            Scalar::Float => {
                if value.as_f64().is_none() {
                    must("a number", value, errors);
                }
            }
            Scalar::Date => match value {
                Value::Date(_) => {}
                Value::Int(i) => *value = Value::Date(*i as f64),
                Value::Float(f) if f.is_finite() => *value = Value::Date(*f),
                Value::String(s) => match parse_date(s) {
                    Some(ms) => *value = Value::Date(ms),
                    None => must("a Date", value, errors),
                },
                _ => must("a Date", value, errors),
            },
            Scalar::Bytes | Scalar::Blob => match value {
                Value::Bytes(_) => {}
                Value::String(s) => *value = Value::Bytes(std::mem::take(s).into_bytes()),
                _ => match buffer_json(value) {
                    Some(b) => *value = Value::Bytes(b),
                    None => must("a Buffer or Uint8Array", value, errors),
                },
            },
        },
        FieldType::List(el) => match value {
            Value::Array(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    check_value(
                        el,
                        types,
                        item,
                        &PropPath::Index(prop, i),
                        errors,
                        depth + 1,
                    );
                }
            }
            _ => must("an Array", value, errors),
        },
        FieldType::Named(name) => match (types.get(name), &mut *value) {
            // A table type without @relationship: any object is accepted, as in Harper.
            (None, Value::Object(_)) => {}
            (Some(t), Value::Object(props)) if depth < crate::value::MAX_DEPTH => {
                check_object(
                    &t.attributes,
                    t.sealed,
                    types,
                    props,
                    WriteMode::Replace,
                    Some(prop),
                    errors,
                    depth + 1,
                );
            }
            _ => must("an object", value, errors),
        },
    }
}

/// Accepts integers in `[lo, hi]` (and integral doubles, converted).
fn integer(
    value: &mut Value,
    (lo, hi): (i64, i64),
    what: &str,
    prop: &PropPath<'_>,
    errors: &mut Vec<String>,
) {
    let ok = match *value {
        Value::Int(i) => (lo..=hi).contains(&i),
        Value::Float(f)
            if f.fract() == 0.0 && f.abs() < 9.2e18 && (lo..=hi).contains(&(f as i64)) =>
        {
            *value = Value::Int(f as i64);
            true
        }
        _ => false,
    };
    if !ok {
        errors.push(format!("Value {value} in property {prop} must be {what}"));
    }
}

/// The bytes of Node's `Buffer.toJSON()` shape, `{"type":"Buffer","data":[...]}`.
fn buffer_json(v: &Value) -> Option<Vec<u8>> {
    if v.get("type") != Some(&Value::String("Buffer".into())) {
        return None;
    }
    match v.get("data")? {
        Value::Array(items) => items
            .iter()
            .map(|x| match x {
                Value::Int(i) => u8::try_from(*i).ok(),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Catalog;

    fn table(src: &str) -> Table {
        let mut c = Catalog::default();
        c.load_schema("t", src).unwrap();
        c.tables.remove(0)
    }

    fn obj(json: &[(&str, Value)]) -> Value {
        Value::Object(
            json.iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        )
    }

    #[test]
    fn int_range_message_matches_harper() {
        let t = table("type T @table { id: ID @primaryKey count: Int }");
        let mut r = obj(&[("count", Value::String("five".into()))]);
        let e = check_record(&t, &mut r, WriteMode::Replace).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Value \"five\" in property count must be an integer (from -2147483648 to 2147483647)"
        );
        let mut r = obj(&[("count", Value::Int(1 << 31))]);
        assert!(check_record(&t, &mut r, WriteMode::Replace).is_err());
        let mut r = obj(&[("count", Value::Float(3.0))]);
        check_record(&t, &mut r, WriteMode::Replace).unwrap();
        assert_eq!(r.get("count"), Some(&Value::Int(3)));
    }

    #[test]
    fn required_sealed_and_coercion() {
        let t = table(
            "type T @table @sealed { id: ID @primaryKey name: String! when: Date tags: [String] at: Float @updatedTime }",
        );
        let mut r = obj(&[("x", Value::Int(1))]);
        let e = check_record(&t, &mut r, WriteMode::Replace).unwrap_err();
        assert_eq!(
            e.0,
            vec!["Property x is not allowed", "Property name is required"]
        );
        let mut r = obj(&[("name", Value::Null)]);
        assert!(check_record(&t, &mut r, WriteMode::Patch).is_err());
        let mut r = obj(&[
            ("when", Value::String("2024-01-05".into())),
            ("at", Value::Int(5)),
        ]);
        check_record(&t, &mut r, WriteMode::Patch).unwrap();
        assert_eq!(r.get("when"), Some(&Value::Date(1_704_412_800_000.0)));
        assert_eq!(r.get("at"), None);
        let mut r = obj(&[
            ("name", Value::String("n".into())),
            ("tags", Value::Array(vec![Value::Int(1)])),
        ]);
        assert_eq!(
            check_record(&t, &mut r, WriteMode::Replace).unwrap_err().0,
            vec!["Value 1 in property tags[0] must be a string"]
        );
    }

    #[test]
    fn nested_types_are_checked() {
        let t =
            table("type T @table { id: ID @primaryKey a: Addr } type Addr @sealed { zip: Int }");
        let mut r = obj(&[(
            "a",
            obj(&[("zip", Value::String("x".into())), ("q", Value::Null)]),
        )]);
        let e = check_record(&t, &mut r, WriteMode::Replace).unwrap_err();
        assert_eq!(e.0.len(), 2);
        assert!(e.0[0].contains("property a.zip"));
    }
}

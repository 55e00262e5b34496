//! Primary keys: an id from a URL or topic as the key's type, the key placed in a record, and the
//! start of a table's auto-increment counter.

use tessera_storage::{Table, Value};

/// Converts an id from a URL or topic to the primary key's type: a number when the key is
/// numeric and the id is a plain decimal number, else the string as it is.
pub fn id_value(table: &Table, id: &str) -> Value {
    if table.key_type().is_numeric_key()
        && let Ok(f) = id.parse::<f64>()
        && f.is_finite()
        && !id.starts_with('+')
        && !id.contains(['e', 'E', 'x', 'X'])
    {
        return if f.fract() == 0.0 && f.abs() < 9.2e18 {
            Value::Int(f as i64)
        } else {
            Value::Float(f)
        };
    }
    Value::String(id.to_owned())
}

/// A primary key as a URL writes it: the inverse of [`id_value`].
pub fn id_text(pk: &Value) -> String {
    match pk {
        Value::String(s) => s.clone(),
        other => other.to_json(),
    }
}

/// Puts the primary key first in a record object, replacing one from the body.
pub fn set_primary_key(rec: &mut Value, name: &str, pk: Value) {
    if let Value::Object(props) = rec {
        props.retain(|(k, _)| k != name);
        props.insert(0, (name.to_owned(), pk));
    }
}

/// The first auto-increment key after `max`, the largest numeric key stored (1 with none).
pub fn next_key(max: Option<f64>) -> i64 {
    max.map_or(1, |m| (m.floor() as i64).saturating_add(1).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_take_the_key_type() {
        let mut c = tessera_storage::Catalog::default();
        c.load_schema(
            "s",
            "type A @table { id: Long @primaryKey } type B @table { id: ID @primaryKey }",
        )
        .unwrap();
        assert_eq!(id_value(&c.tables[0], "42"), Value::Int(42));
        assert_eq!(id_value(&c.tables[0], "4x"), Value::String("4x".into()));
        assert_eq!(id_value(&c.tables[0], "1e3"), Value::String("1e3".into()));
        assert_eq!(id_value(&c.tables[1], "42"), Value::String("42".into()));
    }

    #[test]
    fn next_key_follows_the_largest() {
        assert_eq!(next_key(None), 1);
        assert_eq!(next_key(Some(41.0)), 42);
        assert_eq!(next_key(Some(-5.0)), 1);
        let mut rec = Value::Object(vec![
            ("name".into(), Value::Int(1)),
            ("id".into(), Value::Int(9)),
        ]);
        set_primary_key(&mut rec, "id", Value::Int(3));
        assert_eq!(
            rec,
            Value::Object(vec![
                ("id".into(), Value::Int(3)),
                ("name".into(), Value::Int(1))
            ])
        );
    }
}

//! Conditions as the Operations API and the wasm host's `search` write them: a Query object
//! (`conditions` with `operator`, `sort`, `limit`, `offset`) into the same [`Query`] a URL query
//! string parses to, so both are planned like REST queries.

use tessera_protocol::query::{Condition, Filter, Limit, Op, Operand, Query, SortKey};
use tessera_storage::Value;

use crate::app::AppError;

/// A Query object's `conditions` (with `operator`), `sort`, `limit` and `offset`: the body of
/// `search_by_conditions` and the Resource API's `search`, where the conditions may be left out
/// unless `required`.
pub fn conditions_query(env: &Value, required: bool) -> Result<Query, AppError> {
    let filter = match env.get("conditions") {
        None | Some(Value::Null) if required => {
            return Err(AppError::BadRequest("'conditions' is required".into()));
        }
        None | Some(Value::Null) => None,
        Some(Value::Array(c)) if c.is_empty() && required => {
            return Err(AppError::BadRequest(
                "'conditions' must contain at least 1 items".into(),
            ));
        }
        Some(Value::Array(c)) if c.is_empty() => None,
        Some(Value::Array(c)) => Some(group(c, env.get("operator"))?),
        Some(_) => return Err(AppError::BadRequest("'conditions' must be an array".into())),
    };
    let sort = match env.get("sort") {
        None | Some(Value::Null) => Vec::new(),
        Some(s) => {
            let Some(Value::String(attr)) = s.get("attribute") else {
                return Err(AppError::BadRequest(
                    "'sort' must name an 'attribute'".into(),
                ));
            };
            vec![SortKey {
                path: vec![attr.clone()],
                descending: matches!(s.get("descending"), Some(Value::Bool(true))),
            }]
        }
    };
    let count = |name: &str| match env.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Int(n)) if *n >= 0 => Ok(Some(*n as usize)),
        Some(_) => Err(AppError::BadRequest(format!(
            "'{name}' must be a non-negative integer"
        ))),
    };
    let (limit, offset) = (count("limit")?, count("offset")?);
    let start = offset.unwrap_or(0);
    let limit = (limit.is_some() || start > 0).then(|| Limit {
        start,
        end: limit.map_or(usize::MAX, |l| start.saturating_add(l)),
    });
    Ok(Query {
        filter,
        select: None,
        limit,
        sort,
    })
}

/// The comparison a pattern with `wild` at its start and/or end asks for (`B*` starts with
/// `B`, `*o` ends with `o`, `*uk*` contains `uk`), and the text between.
pub fn wildcard(pattern: &str, wild: char) -> (Op, &str) {
    let lead = pattern.starts_with(wild);
    let trail = pattern.len() > 1 && pattern.ends_with(wild);
    let inner = &pattern[usize::from(lead)..pattern.len() - usize::from(trail)];
    let op = match (lead, trail) {
        (true, true) => Op::Contains,
        (false, true) => Op::StartsWith,
        (true, false) => Op::EndsWith,
        (false, false) => Op::Eq,
    };
    (op, inner)
}

pub fn condition(attr: &str, op: Op, value: Operand) -> Filter {
    Filter::Cond(Condition {
        path: vec![attr.to_owned()],
        op,
        value,
        at: 0,
        chained: None,
    })
}

/// A JSON operand as the query planner's: strings convert to the attribute's type.
pub fn operand(v: &Value) -> Operand {
    match v {
        Value::Null => Operand::Null,
        Value::Bool(b) => Operand::Bool(*b),
        Value::Int(i) => Operand::Number(*i as f64),
        Value::Float(f) => Operand::Number(*f),
        Value::String(s) => Operand::Text(s.clone()),
        other => Operand::String(other.to_json()),
    }
}

/// A group of conditions joined by `operator` (`and` when absent).
fn group(items: &[Value], operator: Option<&Value>) -> Result<Filter, AppError> {
    let or = match operator {
        None | Some(Value::Null) => false,
        Some(Value::String(o)) if o.eq_ignore_ascii_case("and") => false,
        Some(Value::String(o)) if o.eq_ignore_ascii_case("or") => true,
        Some(o) => {
            return Err(AppError::BadRequest(format!(
                "Unknown operator {}",
                o.to_json()
            )));
        }
    };
    let parts = items
        .iter()
        .map(one_condition)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(if or {
        Filter::Or(parts)
    } else {
        Filter::And(parts)
    })
}

/// One `{"search_attribute","search_type","search_value"}` (or a nested group).
fn one_condition(c: &Value) -> Result<Filter, AppError> {
    if let Some(Value::Array(nested)) = c.get("conditions") {
        if nested.is_empty() {
            return Err(AppError::BadRequest(
                "'conditions' must contain at least 1 items".into(),
            ));
        }
        return group(nested, c.get("operator"));
    }
    let Some(Value::String(attr)) = c.get("search_attribute").or_else(|| c.get("attribute")) else {
        return Err(AppError::BadRequest(
            "a condition needs 'search_attribute'".into(),
        ));
    };
    let Some(Value::String(kind)) = c.get("search_type").or_else(|| c.get("comparator")) else {
        return Err(AppError::BadRequest(
            "a condition needs 'search_type'".into(),
        ));
    };
    let value = c
        .get("search_value")
        .or_else(|| c.get("value"))
        .unwrap_or(&Value::Null);
    let op = match kind.as_str() {
        "equals" => Op::Eq,
        // Null values never match a comparison, not even `not_equal` (as in Harper).
        "not_equal" => {
            return Ok(Filter::And(vec![
                condition(attr, Op::Ne, operand(value)),
                condition(attr, Op::Ne, Operand::Null),
            ]));
        }
        "contains" => Op::Contains,
        "starts_with" => Op::StartsWith,
        "ends_with" => Op::EndsWith,
        "greater_than" => Op::Gt,
        "greater_than_equal" => Op::Ge,
        "less_than" => Op::Lt,
        "less_than_equal" => Op::Le,
        "between" => {
            let Value::Array(bounds) = value else {
                return Err(AppError::BadRequest("'between' needs [low, high]".into()));
            };
            let [lo, hi] = bounds.as_slice() else {
                return Err(AppError::BadRequest("'between' needs [low, high]".into()));
            };
            return Ok(Filter::And(vec![
                condition(attr, Op::Ge, operand(lo)),
                condition(attr, Op::Le, operand(hi)),
            ]));
        }
        other => {
            return Err(AppError::BadRequest(format!(
                "Unknown query comparator \"{other}\""
            )));
        }
    };
    Ok(condition(attr, op, operand(value)))
}

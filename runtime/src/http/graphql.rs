//! Harper's GraphQL query endpoint (`/graphql`, when a component's `config.yaml` says
//! `graphql: true`): queries over the exported tables, parsed by `graphql-parser` and run on the
//! same plans as REST queries.
//!
//! Each top-level field names an exported table; its arguments are conditions (`Dog(breed:
//! "lab")`), an object argument a condition through a relationship (`Dog(owner: {name: "Ann"})`
//! is `owner.name=Ann`); its selection set is the REST `select()`, relationships nested. Variables
//! (with defaults), fragments (named and inline), aliases, several operations with
//! `operationName`, `GET ?query=` and `POST {query, variables, operationName}` are taken. The
//! answer is `{"data": {...}}`, or `{"errors": [{"message": ...}]}` with 400. Mutations and
//! subscriptions are not served (the REST verbs and MQTT are).

use std::collections::HashMap;
use std::sync::Arc;

use graphql_parser::query::{
    Definition, Document, Field as GqlField, FragmentDefinition, OperationDefinition, Selection,
    SelectionSet, Value as GqlValue,
};
use serde_json::{Map, Value as Json, json};
use tessera_protocol::MediaType;
use tessera_protocol::query::{Condition, Field, Filter, Op, Operand, Query, Select};
use tessera_storage::{Table, Value};

use super::Rest;
use crate::app::AppError;
use crate::app::output::{self, body_value};
use crate::app::permissions::{Action, User};
use crate::app::records::readable_only;
use crate::data::conditions::operand;
use crate::data::{query, related};
use crate::net::reply::Reply;

/// A GraphQL request's failure: answered as `{"errors": [{"message": ...}]}`.
struct GqlError(u16, String);

impl From<AppError> for GqlError {
    fn from(e: AppError) -> Self {
        GqlError(e.status(), e.to_string())
    }
}

fn err(message: impl Into<String>) -> GqlError {
    GqlError(400, message.into())
}

type Fragments<'d, 'a> = HashMap<&'d str, &'d FragmentDefinition<'a, String>>;

/// The request: its query text, variables and operation name.
struct Request {
    query: String,
    variables: Map<String, Json>,
    operation: Option<String>,
}

fn request(method_get: bool, query_string: &str, body: &[u8]) -> Result<Request, GqlError> {
    let (query, variables, operation) = if method_get {
        let mut q = (None, None, None);
        for (k, v) in form_urlencoded::parse(query_string.as_bytes()) {
            match k.as_ref() {
                "query" => q.0 = Some(v.into_owned()),
                "variables" => {
                    q.1 =
                        Some(serde_json::from_str(&v).map_err(|e| err(format!("variables: {e}")))?)
                }
                "operationName" => q.2 = Some(v.into_owned()),
                _ => {}
            }
        }
        q
    } else {
        let v: Json =
            serde_json::from_slice(body).map_err(|e| err(format!("Invalid JSON body: {e}")))?;
        (
            v.get("query").and_then(Json::as_str).map(str::to_owned),
            v.get("variables").cloned(),
            v.get("operationName")
                .and_then(Json::as_str)
                .map(str::to_owned),
        )
    };
    let Some(query) = query else {
        return Err(err("A GraphQL request needs a query"));
    };
    let variables = match variables {
        None | Some(Json::Null) => Map::new(),
        Some(Json::Object(m)) => m,
        Some(_) => return Err(err("'variables' must be an object")),
    };
    Ok(Request {
        query,
        variables,
        operation,
    })
}

/// The operation to run: the one named, or the only one.
fn operation<'d, 'a>(
    doc: &'d Document<'a, String>,
    name: Option<&str>,
) -> Result<&'d OperationDefinition<'a, String>, GqlError> {
    let ops: Vec<&'d OperationDefinition<'a, String>> = doc
        .definitions
        .iter()
        .filter_map(|d| match d {
            Definition::Operation(o) => Some(o),
            Definition::Fragment(_) => None,
        })
        .collect();
    fn named<'o>(o: &'o OperationDefinition<'_, String>) -> Option<&'o str> {
        match o {
            OperationDefinition::Query(q) => q.name.as_deref(),
            OperationDefinition::Mutation(m) => m.name.as_deref(),
            OperationDefinition::Subscription(s) => s.name.as_deref(),
            OperationDefinition::SelectionSet(_) => None,
        }
    }
    match (name, ops.as_slice()) {
        (Some(n), _) => ops
            .iter()
            .find(|o| named(o) == Some(n))
            .copied()
            .ok_or_else(|| err(format!("Unknown operation named \"{n}\""))),
        (None, [one]) => Ok(one),
        (None, []) => Err(err("The document holds no operation")),
        (None, _) => Err(err(
            "The document holds more than one operation: name one with operationName",
        )),
    }
}

/// The fields of a selection set, fragments spread in.
fn fields<'d, 'a>(
    set: &'d SelectionSet<'a, String>,
    fragments: &Fragments<'d, 'a>,
    depth: usize,
    out: &mut Vec<&'d GqlField<'a, String>>,
) -> Result<(), GqlError> {
    if depth > 32 {
        return Err(err("Fragments nest too deeply (or spread themselves)"));
    }
    for s in &set.items {
        match s {
            Selection::Field(f) => out.push(f),
            Selection::InlineFragment(i) => fields(&i.selection_set, fragments, depth + 1, out)?,
            Selection::FragmentSpread(spread) => {
                let f = fragments
                    .get(spread.fragment_name.as_str())
                    .ok_or_else(|| err(format!("Unknown fragment \"{}\"", spread.fragment_name)))?;
                fields(&f.selection_set, fragments, depth + 1, out)?;
            }
        }
    }
    Ok(())
}

/// An argument's value with the variables put in; `None` for a variable given no value.
fn resolve(v: &GqlValue<'_, String>, vars: &Map<String, Json>) -> Option<Json> {
    Some(match v {
        GqlValue::Variable(name) => return vars.get(name).cloned(),
        GqlValue::Int(n) => json!(n.as_i64()),
        GqlValue::Float(f) => json!(f),
        GqlValue::String(s) => json!(s),
        GqlValue::Boolean(b) => json!(b),
        GqlValue::Null => Json::Null,
        GqlValue::Enum(e) => json!(e),
        GqlValue::List(items) => {
            Json::Array(items.iter().filter_map(|i| resolve(i, vars)).collect())
        }
        GqlValue::Object(o) => Json::Object(
            o.iter()
                .filter_map(|(k, v)| Some((k.clone(), resolve(v, vars)?)))
                .collect(),
        ),
    })
}

/// The conditions an argument makes: equality at `path`, an object a condition per property one
/// step further (through a relationship), a list any of its values.
fn conditions(path: Vec<String>, v: &Json, out: &mut Vec<Filter>) {
    let cond = |path: Vec<String>, value: Operand| {
        Filter::Cond(Condition {
            path,
            op: Op::Eq,
            value,
            at: 0,
            chained: None,
        })
    };
    match v {
        Json::Object(props) => {
            for (k, v) in props {
                let mut p = path.clone();
                p.push(k.clone());
                conditions(p, v, out);
            }
        }
        Json::Array(items) => out.push(Filter::Or(
            items
                .iter()
                .map(|i| cond(path.clone(), json_operand(i)))
                .collect(),
        )),
        v => out.push(cond(path, json_operand(v))),
    }
}

/// A JSON scalar as a condition's value (a string stays a string).
fn json_operand(v: &Json) -> Operand {
    match v {
        Json::String(s) => Operand::String(s.clone()),
        Json::Null => Operand::Null,
        Json::Bool(b) => Operand::Bool(*b),
        Json::Number(n) => operand(&Value::Float(n.as_f64().unwrap_or(f64::NAN))),
        other => Operand::String(other.to_string()),
    }
}

/// The REST selection of a field's selection set (`None`: none), and its aliases by name.
fn selection<'d, 'a>(
    f: &'d GqlField<'a, String>,
    fragments: &Fragments<'d, 'a>,
) -> Result<Option<Vec<Field>>, GqlError> {
    if f.selection_set.items.is_empty() {
        return Ok(None);
    }
    let mut inner = Vec::new();
    fields(&f.selection_set, fragments, 0, &mut inner)?;
    inner
        .into_iter()
        .filter(|g| g.name != "__typename")
        .map(|g| {
            Ok(Field {
                name: g.name.clone(),
                nested: selection(g, fragments)?,
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Renames aliased fields in a projected value, following the selection.
fn alias<'d, 'a>(v: &mut Value, set: &'d SelectionSet<'a, String>, fragments: &Fragments<'d, 'a>) {
    let mut fs = Vec::new();
    if fields(set, fragments, 0, &mut fs).is_err() {
        return;
    }
    match v {
        Value::Array(items) => items.iter_mut().for_each(|i| alias(i, set, fragments)),
        Value::Object(props) => {
            for f in fs {
                if let Some((k, inner)) = props.iter_mut().find(|(k, _)| *k == f.name) {
                    alias(inner, &f.selection_set, fragments);
                    if let Some(a) = &f.alias {
                        *k = a.clone();
                    }
                }
            }
        }
        _ => {}
    }
}

impl Rest {
    /// Answers a GraphQL request.
    pub(super) async fn graphql(
        &self,
        method_get: bool,
        query_string: &str,
        body: &[u8],
        user: &User,
        reply: &mut Reply<'_>,
    ) {
        let out = match self.run_graphql(method_get, query_string, body, user).await {
            Ok(data) => (200, json!({ "data": data })),
            Err(GqlError(status, message)) => (status, json!({"errors": [{"message": message}]})),
        };
        let bytes = serde_json::to_vec(&out.1).unwrap_or_default();
        reply.send(out.0, Some(MediaType::Json), &[], &bytes);
    }

    async fn run_graphql(
        &self,
        method_get: bool,
        query_string: &str,
        body: &[u8],
        user: &User,
    ) -> Result<Json, GqlError> {
        let req = request(method_get, query_string, body)?;
        let doc = graphql_parser::parse_query::<String>(&req.query)
            .map_err(|e| err(format!("Syntax Error: {}", e.to_string().trim())))?;
        let fragments: Fragments<'_, '_> = doc
            .definitions
            .iter()
            .filter_map(|d| match d {
                Definition::Fragment(f) => Some((f.name.as_str(), f)),
                Definition::Operation(_) => None,
            })
            .collect();
        let (set, defined) = match operation(&doc, req.operation.as_deref())? {
            OperationDefinition::SelectionSet(s) => (s, &[][..]),
            OperationDefinition::Query(q) => (&q.selection_set, q.variable_definitions.as_slice()),
            OperationDefinition::Mutation(_) | OperationDefinition::Subscription(_) => {
                return Err(err(
                    "Only queries are served over GraphQL (write with REST, subscribe with MQTT, WebSocket or SSE)",
                ));
            }
        };
        // Variables: what the request gives, else the definition's default.
        let mut vars = req.variables;
        for d in defined {
            if !vars.contains_key(&d.name)
                && let Some(default) = &d.default_value
                && let Some(v) = resolve(default, &Map::new())
            {
                vars.insert(d.name.clone(), v);
            }
        }
        let mut top = Vec::new();
        fields(set, &fragments, 0, &mut top)?;
        let mut data = Map::new();
        for f in top {
            let mut v = self.graphql_field(f, &fragments, &vars, user).await?;
            alias(&mut v, &f.selection_set, &fragments);
            let key = f.alias.clone().unwrap_or_else(|| f.name.clone());
            data.insert(key, output::json_value(&v));
        }
        Ok(Json::Object(data))
    }

    /// One top-level field: the records of the exported table it names.
    async fn graphql_field<'d, 'a>(
        &self,
        f: &'d GqlField<'a, String>,
        fragments: &Fragments<'d, 'a>,
        vars: &Map<String, Json>,
        user: &User,
    ) -> Result<Value, GqlError> {
        let table: Arc<Table> = self.app.tables.export(&f.name).cloned().ok_or_else(|| {
            err(format!(
                "Cannot query field \"{}\": no such table is exported",
                f.name
            ))
        })?;
        let Some(perm) = user.permission.table(&table.database, &table.name) else {
            return Err(GqlError(403, AppError::Forbidden.to_string()));
        };
        if !perm.allows(Action::Read) {
            return Err(GqlError(403, AppError::Forbidden.to_string()));
        }
        let restricted = user
            .permission
            .attribute_limits(&table.database, &table.name);
        let mut filters = Vec::new();
        for (name, v) in &f.arguments {
            if let Some(v) = resolve(v, vars) {
                conditions(vec![name.clone()], &v, &mut filters);
            }
        }
        let filter = match filters.len() {
            0 => None,
            1 => filters.pop(),
            _ => Some(Filter::And(filters)),
        };
        let select = selection(f, fragments)?.map(Select::Object);
        let parsed = Query {
            filter,
            select,
            limit: None,
            sort: Vec::new(),
        };
        let ctx = self.related();
        let joins = related::joins(&ctx, &table, parsed.filter.as_ref()).await?;
        let plan = query::plan(&table, "", parsed, joins)?;
        let rows = query::collect(&self.router, &plan).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let rec = output::stored_record(&row.stored)?;
            let shown = restricted
                .map(|p| readable_only(&table, p, rec.body))
                .transpose()?;
            let body = shown.as_deref().unwrap_or(rec.body);
            out.push(match &plan.select {
                Some(select) => {
                    related::project(&ctx, &table, body, select, &plan.narrowing).await?
                }
                None => body_value(body)?,
            });
        }
        Ok(Value::Array(out))
    }
}

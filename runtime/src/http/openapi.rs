//! `GET /openapi` (docs/rest.md): an OpenAPI 3.0.3 document of the exported tables, valid
//! under a strict validator (Harper's own is not: it writes `required: []` and OPTIONS operations
//! without their path parameter).

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value as Json, json};
use tessera_storage::schema::{Attribute, FieldType, ObjectType};
use tessera_storage::{Scalar, Table};

/// The document for `tables` (by URL segment), as served from `origin` (`http://host:port`).
pub fn document(
    origin: &str,
    exported: &HashMap<String, Arc<Table>>,
    all: &HashMap<String, Arc<Table>>,
) -> Json {
    let mut names: Vec<&String> = exported
        .iter()
        .filter(|(_, t)| t.rest)
        .map(|(n, _)| n)
        .collect();
    names.sort();
    let mut paths = Map::new();
    for name in names {
        let table = &exported[name];
        paths.insert(format!("/{name}/"), collection(table));
        paths.insert(format!("/{name}/{{id}}"), record(table));
        paths.insert(format!("/{name}/{{id}}.{{property}}"), property(table));
    }
    let mut schemas = Map::new();
    let mut types: Vec<&Arc<Table>> = all.values().collect();
    types.sort_by(|a, b| a.type_name.cmp(&b.type_name));
    for table in types {
        schemas.insert(
            table.type_name.clone(),
            object_schema(&table.attributes, table.sealed),
        );
        for ty in table.types.values() {
            schemas
                .entry(ty.name.clone())
                .or_insert_with(|| nested_schema(ty));
        }
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "HarperDB HTTP REST interface",
            "version": env!("CARGO_PKG_VERSION"),
        },
        "servers": [{"url": origin}],
        "security": [{"basicAuth": []}, {"bearerAuth": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "basicAuth": {"type": "http", "scheme": "basic"},
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
            },
        },
    })
}

fn schema_ref(table: &Table) -> Json {
    json!({"$ref": format!("#/components/schemas/{}", table.type_name)})
}

fn content(schema: Json) -> Json {
    json!({
        "application/json": {"schema": schema.clone()},
        "application/cbor": {"schema": schema.clone()},
        "application/x-msgpack": {"schema": schema},
    })
}

fn response(description: &str, schema: Option<Json>) -> Json {
    match schema {
        Some(s) => json!({"description": description, "content": content(s)}),
        None => json!({"description": description}),
    }
}

fn errors(responses: &mut Map<String, Json>) {
    responses.insert("401".into(), response("No or bad credentials", None));
    responses.insert("403".into(), response("Not permitted", None));
}

fn operation(summary: &str, mut responses: Map<String, Json>, extra: Option<(&str, Json)>) -> Json {
    errors(&mut responses);
    let mut op = Map::new();
    op.insert("summary".into(), json!(summary));
    if let Some((k, v)) = extra {
        op.insert(k.into(), v);
    }
    op.insert("responses".into(), Json::Object(responses));
    Json::Object(op)
}

fn responses(items: &[(&str, Json)]) -> Map<String, Json> {
    items
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

fn collection(table: &Table) -> Json {
    let params: Vec<Json> = table
        .attributes
        .iter()
        .filter(|a| a.relationship.is_none())
        .map(|a| {
            json!({
                "name": a.name,
                "in": "query",
                "required": false,
                "description": format!("Records whose {} equals the value", a.name),
                "schema": {"type": "string"},
            })
        })
        .collect();
    let list = json!({"type": "array", "items": schema_ref(table)});
    json!({
        "get": operation(
            &format!("Query {} records", table.type_name),
            responses(&[("200", response("The matching records", Some(list)))]),
            Some(("parameters", Json::Array(params.clone()))),
        ),
        "post": operation(
            &format!("Create a {} record with a generated primary key", table.type_name),
            responses(&[
                ("201", response("Created; the body is the new primary key", None)),
                ("400", response("The record is not valid", None)),
            ]),
            Some(("requestBody", json!({"required": true, "content": content(schema_ref(table))}))),
        ),
        "delete": operation(
            &format!("Delete the matching {} records", table.type_name),
            responses(&[("200", response("Deleted", Some(json!({"type": "boolean"}))))]),
            Some(("parameters", Json::Array(params))),
        ),
        "options": operation(
            "The methods this resource allows",
            responses(&[("204", response("The Allow header lists the methods", None))]),
            None,
        ),
    })
}

fn id_parameter(table: &Table) -> Json {
    json!({
        "name": "id",
        "in": "path",
        "required": true,
        "description": "The primary key",
        "schema": type_schema(&table.primary_key().ty),
    })
}

/// A path item whose path parameters every operation declares too (tools that read operations
/// alone, as many client generators do, then still see `id` and `property`).
fn each_operation_declares(mut item: Json) -> Json {
    let params = item.get("parameters").cloned().unwrap_or(json!([]));
    if let Json::Object(map) = &mut item {
        for (key, op) in map.iter_mut() {
            if key != "parameters"
                && let Json::Object(op) = op
            {
                op.insert("parameters".into(), params.clone());
            }
        }
    }
    item
}

fn record(table: &Table) -> Json {
    let rec = schema_ref(table);
    let body = json!({"required": true, "content": content(rec.clone())});
    each_operation_declares(json!({
        "parameters": [id_parameter(table)],
        "get": operation(
            &format!("Get a {} record", table.type_name),
            responses(&[
                ("200", response("The record", Some(rec))),
                ("304", response("Not modified (If-None-Match)", None)),
                ("404", response("No such record", None)),
            ]),
            None,
        ),
        "put": operation(
            &format!("Create or replace a {} record", table.type_name),
            responses(&[
                ("204", response("Stored", None)),
                ("400", response("The record is not valid", None)),
            ]),
            Some(("requestBody", body.clone())),
        ),
        "patch": operation(
            &format!("Update properties of a {} record", table.type_name),
            responses(&[
                ("204", response("Stored", None)),
                ("400", response("The properties are not valid", None)),
            ]),
            Some(("requestBody", body)),
        ),
        "delete": operation(
            &format!("Delete a {} record", table.type_name),
            responses(&[("200", response("Deleted", Some(json!({"type": "boolean"}))))]),
            None,
        ),
        "options": operation(
            "The methods this resource allows",
            responses(&[("204", response("The Allow header lists the methods", None))]),
            None,
        ),
    }))
}

fn property(table: &Table) -> Json {
    let names: Vec<&str> = table.attributes.iter().map(|a| a.name.as_str()).collect();
    each_operation_declares(json!({
        "parameters": [
            id_parameter(table),
            {
                "name": "property",
                "in": "path",
                "required": true,
                "description": "A property of the record",
                "schema": {"type": "string", "enum": names},
            },
        ],
        "get": operation(
            &format!("Get one property of a {} record", table.type_name),
            responses(&[
                ("200", response("The property's value", Some(json!({})))),
                ("404", response("No such record", None)),
            ]),
            None,
        ),
    }))
}

fn object_schema(attributes: &[Attribute], sealed: bool) -> Json {
    let mut props = Map::new();
    let mut required = Vec::new();
    for a in attributes {
        let mut s = type_schema(&a.ty);
        if (a.computed.is_some() || a.created_time || a.updated_time)
            && let Json::Object(m) = &mut s
        {
            m.insert("readOnly".into(), json!(true));
        }
        props.insert(a.name.clone(), s);
        if a.required {
            required.push(json!(a.name));
        }
    }
    let mut out = Map::new();
    out.insert("type".into(), json!("object"));
    out.insert("properties".into(), Json::Object(props));
    out.insert("additionalProperties".into(), json!(!sealed));
    // An empty `required` list is invalid OpenAPI 3.0: leave it out.
    if !required.is_empty() {
        out.insert("required".into(), Json::Array(required));
    }
    Json::Object(out)
}

fn nested_schema(ty: &ObjectType) -> Json {
    object_schema(&ty.attributes, ty.sealed)
}

fn type_schema(ty: &FieldType) -> Json {
    match ty {
        FieldType::Scalar(s) => match s {
            Scalar::String => json!({"type": "string"}),
            Scalar::Id => json!({"type": "string", "format": "ID"}),
            Scalar::Int => json!({"type": "integer", "format": "int32"}),
            Scalar::Long => json!({"type": "integer", "format": "int64"}),
            Scalar::BigInt => json!({"type": "integer"}),
            Scalar::Float => json!({"type": "number", "format": "double"}),
            Scalar::Boolean => json!({"type": "boolean"}),
            Scalar::Date => json!({"type": "string", "format": "date-time"}),
            Scalar::Bytes | Scalar::Blob => json!({"type": "string", "format": "binary"}),
            Scalar::Any => json!({}),
        },
        FieldType::List(inner) => json!({"type": "array", "items": type_schema(inner)}),
        FieldType::Named(n) => json!({"$ref": format!("#/components/schemas/{n}")}),
    }
}

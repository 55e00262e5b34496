//! The schema catalog: tables, attributes and nested types read from a component's
//! `schema.graphql` with Harper's directives (docs/rest.md).
//!
//! This is the only module that sees graphql-parser. Every directive Tessera does not know is a
//! load error that names the file, line and column, so a typo never silently drops an index.

use std::collections::HashMap;
use std::sync::Arc;

use graphql_parser::schema::{Definition, Directive, Field, Type, TypeDefinition};

use crate::computed::{self, Expr};
use crate::value::Value;

/// A scalar attribute type of Harper's schema language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scalar {
    String,
    Int,
    Long,
    Float,
    BigInt,
    Boolean,
    Id,
    Any,
    Date,
    Bytes,
    Blob,
}

impl Scalar {
    fn from_name(name: &str) -> Option<Scalar> {
        Some(match name {
            "String" => Scalar::String,
            "Int" => Scalar::Int,
            "Long" => Scalar::Long,
            "Float" => Scalar::Float,
            "BigInt" => Scalar::BigInt,
            "Boolean" => Scalar::Boolean,
            "ID" => Scalar::Id,
            "Any" => Scalar::Any,
            "Date" => Scalar::Date,
            "Bytes" => Scalar::Bytes,
            "Blob" => Scalar::Blob,
            _ => return None,
        })
    }

    /// The type's name as written in the schema.
    pub fn name(self) -> &'static str {
        match self {
            Scalar::String => "String",
            Scalar::Int => "Int",
            Scalar::Long => "Long",
            Scalar::Float => "Float",
            Scalar::BigInt => "BigInt",
            Scalar::Boolean => "Boolean",
            Scalar::Id => "ID",
            Scalar::Any => "Any",
            Scalar::Date => "Date",
            Scalar::Bytes => "Bytes",
            Scalar::Blob => "Blob",
        }
    }

    /// Whether primary keys of this type are numbers (ids in URLs are converted, POST counts up).
    pub fn is_numeric_key(self) -> bool {
        matches!(
            self,
            Scalar::Int | Scalar::Long | Scalar::Float | Scalar::BigInt | Scalar::Any
        )
    }
}

/// The declared type of an attribute.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldType {
    Scalar(Scalar),
    List(Box<FieldType>),
    /// Another type of the schema: a nested object, or the target of a relationship.
    Named(String),
}

/// `@relationship(from:, to:)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Relationship {
    pub from: Option<String>,
    pub to: Option<String>,
}

/// One declared attribute of a table or nested type.
#[derive(Debug, Clone)]
pub struct Attribute {
    pub name: String,
    pub ty: FieldType,
    /// `T!`: may not be missing or null.
    pub required: bool,
    pub primary_key: bool,
    pub indexed: bool,
    pub created_time: bool,
    pub updated_time: bool,
    pub hidden: bool,
    pub relationship: Option<Relationship>,
    /// `@computed(from: "expr")`: the expression, or empty for one set in code.
    pub computed: Option<String>,
    /// How a computed attribute is computed: the parsed `from:`, or the code's slot.
    pub expr: Option<Arc<Expr>>,
    /// `@computed(version: N)`: changing it rebuilds the attribute's index.
    pub computed_version: Option<i64>,
    /// The persisted attribute id used in index keys (assigned by the layout, 0 until then).
    pub id: u16,
    pub line: usize,
}

impl Attribute {
    /// An attribute of type `ty` with no directives.
    pub fn new(name: &str, ty: FieldType) -> Attribute {
        Attribute {
            name: name.to_owned(),
            ty,
            required: false,
            primary_key: false,
            indexed: false,
            created_time: false,
            updated_time: false,
            hidden: false,
            relationship: None,
            computed: None,
            expr: None,
            computed_version: None,
            id: 0,
            line: 0,
        }
    }

    /// An untyped, indexed attribute of a dynamic table.
    pub fn dynamic(name: &str) -> Attribute {
        Attribute {
            indexed: true,
            ..Attribute::new(name, FieldType::Scalar(Scalar::Any))
        }
    }

    /// Whether the attribute is part of the stored record (not a relationship or computed).
    pub fn is_stored(&self) -> bool {
        self.relationship.is_none() && self.computed.is_none()
    }

    /// Whether the attribute is computed by code that no loaded resource provides (it reads as
    /// null).
    pub fn lacks_code(&self) -> bool {
        matches!(self.expr.as_deref(), Some(Expr::Code(c)) if !c.installed())
    }

    /// The name of the attribute's index in the layout: a computed attribute's includes its
    /// `version`, so that a new version rebuilds the index.
    pub fn index_key(&self) -> String {
        match self.computed_version {
            Some(v) => format!("{}@v{v}", self.name),
            None => self.name.clone(),
        }
    }
}

/// A non-table type used as the type of a nested object attribute.
#[derive(Debug, Clone)]
pub struct ObjectType {
    pub name: String,
    pub attributes: Vec<Attribute>,
    pub sealed: bool,
}

/// A `@table` type.
#[derive(Debug, Clone)]
pub struct Table {
    /// The persisted table id (key prefix), assigned by the layout; 0 until then.
    pub id: u32,
    pub type_name: String,
    pub name: String,
    pub database: String,
    /// The URL segment when exported (`@export` or `@export(name:)`).
    pub export: Option<String>,
    pub sealed: bool,
    /// Declared in `schema.graphql`; false for a table made by `create_table`, whose attributes
    /// grow as records arrive (docs/operations.md).
    pub schema_defined: bool,
    /// `@table(expiration:)` in seconds.
    pub expiration: Option<f64>,
    /// `@table(eviction:)`: seconds after expiration before a record is physically removed.
    pub eviction: f64,
    /// `@table(scanInterval:)`: seconds between eviction scans.
    pub scan_interval: Option<f64>,
    pub attributes: Vec<Attribute>,
    /// Index into `attributes` of the primary key.
    pub primary_key: usize,
    /// Nested object types reachable from this table's attributes, by name.
    pub types: Arc<HashMap<String, ObjectType>>,
    /// `@table(audit:)`: whether its changes are kept in the audit log (true unless `false`).
    pub audit: bool,
    /// `@table(replicate:)`: whether its changes go to the other nodes of a cluster (true
    /// unless `false`).
    pub replicate: bool,
    /// `@export(rest:)` and `@export(mqtt:)`: the protocols it is exported on (both unless one
    /// is turned off).
    pub rest: bool,
    pub mqtt: bool,
}

/// The attribute every record of a dynamic table gets when it is created.
pub const CREATED_TIME: &str = "__createdtime__";
/// The attribute every record of a dynamic table gets when it is written.
pub const UPDATED_TIME: &str = "__updatedtime__";

impl Table {
    /// A table made by the Operations API's `create_table` (docs/operations.md): an
    /// untyped primary key, `__createdtime__` and `__updatedtime__`, and `attributes`, every one
    /// untyped and indexed. Ids are 0 until the layout assigns them.
    pub fn dynamic(database: &str, name: &str, primary_key: &str, attributes: &[String]) -> Table {
        let mut all = vec![
            Attribute {
                primary_key: true,
                ..Attribute::new(primary_key, FieldType::Scalar(Scalar::Any))
            },
            Attribute {
                created_time: true,
                ..Attribute::dynamic(CREATED_TIME)
            },
            Attribute {
                updated_time: true,
                ..Attribute::dynamic(UPDATED_TIME)
            },
        ];
        for a in attributes {
            if all.iter().all(|b| b.name != *a) {
                all.push(Attribute::dynamic(a));
            }
        }
        Table {
            id: 0,
            type_name: format!("{database}.{name}"),
            name: name.to_owned(),
            database: database.to_owned(),
            export: None,
            sealed: false,
            schema_defined: false,
            expiration: None,
            eviction: 0.0,
            scan_interval: None,
            attributes: all,
            primary_key: 0,
            types: Arc::default(),
            audit: true,
            replicate: true,
            rest: true,
            mqtt: true,
        }
    }

    /// The table with id `id` and its attributes numbered from 1 in declaration order: the ids
    /// a fresh layout would give it, for tools and tests that run without one.
    pub fn numbered(mut self, id: u32) -> Table {
        self.id = id;
        for (i, a) in self.attributes.iter_mut().enumerate() {
            a.id = i as u16 + 1;
        }
        self
    }

    /// `database.table`, unique in the catalog.
    pub fn full_name(&self) -> String {
        format!("{}.{}", self.database, self.name)
    }

    pub fn attribute(&self, name: &str) -> Option<&Attribute> {
        self.attributes.iter().find(|a| a.name == name)
    }

    pub fn primary_key(&self) -> &Attribute {
        &self.attributes[self.primary_key]
    }

    /// The scalar type of the primary key (`Any` when it is not a scalar).
    pub fn key_type(&self) -> Scalar {
        match &self.primary_key().ty {
            FieldType::Scalar(s) => *s,
            _ => Scalar::Any,
        }
    }

    pub fn created_time(&self) -> Option<&str> {
        self.attributes
            .iter()
            .find(|a| a.created_time)
            .map(|a| a.name.as_str())
    }

    pub fn updated_time(&self) -> Option<&str> {
        self.attributes
            .iter()
            .find(|a| a.updated_time)
            .map(|a| a.name.as_str())
    }

    /// Seconds between eviction scans of an expiring table: `scanInterval`, by default a quarter
    /// of `expiration + eviction` (the seed's schema docs), at least a second.
    pub fn eviction_interval(&self) -> Option<f64> {
        let expiration = self.expiration?;
        let every = self
            .scan_interval
            .unwrap_or((expiration + self.eviction) / 4.0);
        Some(every.max(1.0))
    }

    /// The indexed attributes: stored ones, and computed ones (indexed on their value at write
    /// time).
    pub fn indexed(&self) -> impl Iterator<Item = &Attribute> {
        self.attributes
            .iter()
            .filter(|a| a.indexed && !a.primary_key && a.relationship.is_none())
    }

    /// The description object of `GET /Table` (docs/rest.md).
    pub fn describe(&self, audit_size: u64) -> Value {
        let attrs = self
            .attributes
            .iter()
            .map(|a| {
                let mut o = vec![
                    ("name".to_owned(), Value::String(a.name.clone())),
                    ("type".to_owned(), Value::String(describe_type(&a.ty))),
                ];
                if let FieldType::List(el) = &a.ty {
                    o.push((
                        "elements".to_owned(),
                        Value::Object(vec![("type".to_owned(), Value::String(describe_type(el)))]),
                    ));
                }
                if a.primary_key {
                    o.push(("isPrimaryKey".to_owned(), Value::Bool(true)));
                }
                if a.indexed {
                    o.push(("indexed".to_owned(), Value::Object(vec![])));
                }
                if a.required {
                    o.push(("nullable".to_owned(), Value::Bool(false)));
                }
                if let Some(r) = &a.relationship {
                    let mut rel = vec![];
                    if let Some(f) = &r.from {
                        rel.push(("from".to_owned(), Value::String(f.clone())));
                    }
                    if let Some(t) = &r.to {
                        rel.push(("to".to_owned(), Value::String(t.clone())));
                    }
                    o.push(("relationship".to_owned(), Value::Object(rel)));
                }
                if let Some(c) = &a.computed {
                    o.push(("computed".to_owned(), Value::String(c.clone())));
                }
                if a.created_time {
                    o.push(("assignCreatedTime".to_owned(), Value::Bool(true)));
                }
                if a.updated_time {
                    o.push(("assignUpdatedTime".to_owned(), Value::Bool(true)));
                }
                Value::Object(o)
            })
            .collect();
        Value::Object(vec![
            ("records".to_owned(), Value::String("./".to_owned())),
            ("name".to_owned(), Value::String(self.name.clone())),
            ("database".to_owned(), Value::String(self.database.clone())),
            ("auditSize".to_owned(), Value::Int(audit_size as i64)),
            ("attributes".to_owned(), Value::Array(attrs)),
        ])
    }
}

impl Table {
    /// The Operations API's `describe_table` object (docs/operations.md) of a table holding
    /// `record_count` records.
    pub fn describe_operation(&self, record_count: u64) -> Value {
        let s = |k: &str, v: Value| (k.to_owned(), v);
        let attrs = self
            .attributes
            .iter()
            .filter(|a| a.relationship.is_none())
            .map(|a| {
                let mut o = vec![s("attribute", Value::String(a.name.clone()))];
                if a.primary_key {
                    o.push(s("is_primary_key", Value::Bool(true)));
                }
                if self.schema_defined {
                    o.push(s("type", Value::String(describe_type(&a.ty))));
                    if a.indexed {
                        o.push(s("indexed", Value::Object(vec![])));
                    }
                } else if a.indexed {
                    o.push(s("indexed", Value::Bool(true)));
                }
                Value::Object(o)
            })
            .collect();
        let mut out = vec![
            s("schema", Value::String(self.database.clone())),
            s("name", Value::String(self.name.clone())),
            s(
                "hash_attribute",
                Value::String(self.primary_key().name.clone()),
            ),
            s("audit", Value::Bool(self.audit)),
            s("schema_defined", Value::Bool(self.schema_defined)),
            s("attributes", Value::Array(attrs)),
            s("sources", Value::Array(vec![])),
            s("record_count", Value::Int(record_count as i64)),
        ];
        if let Some(e) = self.expiration {
            out.push(s("expiration", Value::String(format!("{e}s"))));
        }
        Value::Object(out)
    }
}

fn describe_type(t: &FieldType) -> String {
    match t {
        FieldType::Scalar(s) => s.name().to_owned(),
        FieldType::List(_) => "array".to_owned(),
        FieldType::Named(n) => n.clone(),
    }
}

/// Why a schema could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("{file}: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}:{line}:{column}: {message}")]
    At {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
}

/// Every table of the loaded components.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub tables: Vec<Table>,
}

/// Where schema errors point: the file, and a position in it.
struct Source<'f> {
    file: &'f str,
}

impl Source<'_> {
    fn at(&self, pos: graphql_parser::Pos, message: String) -> SchemaError {
        SchemaError::At {
            file: self.file.to_owned(),
            line: pos.line,
            column: pos.column,
            message,
        }
    }

    fn syntax(&self, message: String) -> SchemaError {
        SchemaError::Syntax {
            file: self.file.to_owned(),
            message,
        }
    }
}

type ObjectDef<'a> = graphql_parser::schema::ObjectType<'a, String>;
type DirectiveDef<'a> = Directive<'a, String>;

/// The object types of a schema document; anything else in it is refused.
fn object_types<'d>(
    src: &Source<'_>,
    doc: &'d graphql_parser::schema::Document<'d, String>,
) -> Result<Vec<&'d ObjectDef<'d>>, SchemaError> {
    let mut objects = Vec::new();
    for def in &doc.definitions {
        let (pos, refused) = match def {
            Definition::TypeDefinition(TypeDefinition::Object(o)) => {
                objects.push(o);
                continue;
            }
            Definition::TypeDefinition(TypeDefinition::Scalar(s)) => {
                (s.position, format!("custom scalar {}", s.name))
            }
            Definition::TypeDefinition(TypeDefinition::Enum(e)) => {
                (e.position, format!("enum {}", e.name))
            }
            Definition::TypeDefinition(TypeDefinition::Interface(i)) => {
                (i.position, format!("interface {}", i.name))
            }
            Definition::TypeDefinition(TypeDefinition::Union(u)) => {
                (u.position, format!("union {}", u.name))
            }
            Definition::TypeDefinition(TypeDefinition::InputObject(i)) => {
                (i.position, format!("input {}", i.name))
            }
            Definition::DirectiveDefinition(d) => {
                (d.position, format!("directive definition @{}", d.name))
            }
            Definition::SchemaDefinition(s) => {
                let message = "schema definitions are not supported".to_owned();
                return Err(src.at(s.position, message));
            }
            Definition::TypeExtension(_) => {
                return Err(src.syntax("type extensions are not supported".to_owned()));
            }
        };
        return Err(src.at(pos, format!("{refused} is not supported")));
    }
    Ok(objects)
}

/// The nested (non-table) object types, by name, so that tables can refer to them.
fn nested_types(
    src: &Source<'_>,
    objects: &[&ObjectDef<'_>],
    type_names: &[&str],
) -> Result<HashMap<String, ObjectType>, SchemaError> {
    let mut nested = HashMap::new();
    for o in objects {
        let mut is_table = false;
        let mut sealed = false;
        for d in &o.directives {
            match d.name.as_str() {
                "table" => is_table = true,
                "sealed" => sealed = true,
                "export" | "hidden" => {}
                other => {
                    return Err(src.at(
                        d.position,
                        format!("unknown directive @{other} on type {}", o.name),
                    ));
                }
            }
        }
        if !is_table {
            let attributes = o
                .fields
                .iter()
                .map(|f| attribute(f, type_names).map_err(|(p, m)| src.at(p, m)))
                .collect::<Result<Vec<_>, _>>()?;
            nested.insert(
                o.name.clone(),
                ObjectType {
                    name: o.name.clone(),
                    attributes,
                    sealed,
                },
            );
        }
    }
    Ok(nested)
}

/// Applies `@table(...)`'s arguments to `table`.
fn table_directive(
    src: &Source<'_>,
    d: &DirectiveDef<'_>,
    table: &mut Table,
) -> Result<(), SchemaError> {
    for (k, v) in &d.arguments {
        match (k.as_str(), v) {
            ("table", graphql_parser::query::Value::String(s)) => table.name = s.clone(),
            ("database", graphql_parser::query::Value::String(s)) => table.database = s.clone(),
            ("expiration", v) => {
                table.expiration = Some(number_arg(v).ok_or_else(|| {
                    src.at(
                        d.position,
                        "@table(expiration:) must be a number of seconds".to_owned(),
                    )
                })?)
            }
            ("eviction" | "scanInterval", v) => {
                let secs = number_arg(v).filter(|s| *s >= 0.0).ok_or_else(|| {
                    src.at(
                        d.position,
                        format!("@table({k}:) must be a number of seconds"),
                    )
                })?;
                if k == "eviction" {
                    table.eviction = secs;
                } else {
                    table.scan_interval = Some(secs);
                }
            }
            ("schema", graphql_parser::query::Value::String(s)) => table.database = s.clone(),
            ("replicate" | "replicated", graphql_parser::query::Value::Boolean(b)) => {
                table.replicate = *b
            }
            // A retention ("1d") or a flag: the audit log is kept unless it is off.
            ("audit", v) => {
                table.audit = match v {
                    graphql_parser::query::Value::Boolean(b) => *b,
                    graphql_parser::query::Value::String(s) => s != "false",
                    _ => {
                        return Err(src.at(
                            d.position,
                            "@table(audit:) must be a boolean or a retention such as \"1d\""
                                .to_owned(),
                        ));
                    }
                }
            }
            (k, _) => {
                return Err(src.at(
                    d.position,
                    format!("unknown or mistyped argument {k} of @table"),
                ));
            }
        }
    }
    Ok(())
}

/// Applies `@export(...)` to `table` (of type `type_name`): its URL segment and topic, and the
/// protocols it is exported on.
fn export_directive(
    src: &Source<'_>,
    d: &DirectiveDef<'_>,
    type_name: &str,
    table: &mut Table,
) -> Result<(), SchemaError> {
    let mut name = type_name.to_owned();
    for (k, v) in &d.arguments {
        match (k.as_str(), v) {
            ("name", graphql_parser::query::Value::String(s)) => name = s.clone(),
            ("rest", graphql_parser::query::Value::Boolean(b)) => table.rest = *b,
            ("mqtt", graphql_parser::query::Value::Boolean(b)) => table.mqtt = *b,
            (k, _) => {
                return Err(src.at(
                    d.position,
                    format!("unknown or mistyped argument {k} of @export"),
                ));
            }
        }
    }
    table.export = Some(name);
    Ok(())
}

/// The table an object type with `@table` declares.
fn table_of(
    src: &Source<'_>,
    o: &ObjectDef<'_>,
    type_names: &[&str],
    nested: &Arc<HashMap<String, ObjectType>>,
) -> Result<Table, SchemaError> {
    let mut table = Table {
        id: 0,
        type_name: o.name.clone(),
        name: o.name.clone(),
        database: "data".to_owned(),
        export: None,
        sealed: false,
        schema_defined: true,
        expiration: None,
        eviction: 0.0,
        scan_interval: None,
        attributes: Vec::new(),
        primary_key: 0,
        types: nested.clone(),
        audit: true,
        replicate: true,
        rest: true,
        mqtt: true,
    };
    for d in &o.directives {
        match d.name.as_str() {
            "table" => table_directive(src, d, &mut table)?,
            "export" => export_directive(src, d, &o.name, &mut table)?,
            "sealed" => table.sealed = true,
            _ => {}
        }
    }
    for f in &o.fields {
        table
            .attributes
            .push(attribute(f, type_names).map_err(|(p, m)| src.at(p, m))?);
    }
    table.primary_key = primary_key(src, o, &mut table.attributes)?;
    // `@computed` with no `from:` is computed by the application's code, from the record's
    // stored attributes.
    let stored: Vec<String> = table
        .attributes
        .iter()
        .filter(|a| a.is_stored())
        .map(|a| a.name.clone())
        .collect();
    for a in &mut table.attributes {
        if a.computed.is_some() && a.expr.is_none() {
            a.expr = Some(Arc::new(Expr::Code(Arc::new(computed::Code::new(
                stored.clone(),
            )))));
        }
    }
    Ok(table)
}

/// The index of the primary key among a table's attributes: the one `@primaryKey` attribute,
/// else `id` (then marked as the key), else a key Tessera adds: `id: ID`, generated on insert, as
/// Harper keys a table declared without one. It must be a scalar, or a list of scalars (a
/// composite key).
fn primary_key(
    src: &Source<'_>,
    o: &ObjectDef<'_>,
    attributes: &mut Vec<Attribute>,
) -> Result<usize, SchemaError> {
    let keys: Vec<usize> = (0..attributes.len())
        .filter(|&i| attributes[i].primary_key)
        .collect();
    let key = match keys.as_slice() {
        [k] => *k,
        [] => match attributes.iter().position(|a| a.name == "id") {
            Some(k) => {
                attributes[k].primary_key = true;
                k
            }
            None => {
                let mut id = Attribute::new("id", FieldType::Scalar(Scalar::Id));
                id.primary_key = true;
                id.line = o.position.line;
                attributes.insert(0, id);
                0
            }
        },
        _ => {
            return Err(src.at(
                o.position,
                format!("table {} has more than one @primaryKey", o.name),
            ));
        }
    };
    let scalar = match &attributes[key].ty {
        FieldType::Scalar(_) => true,
        FieldType::List(inner) => matches!(inner.as_ref(), FieldType::Scalar(_)),
        FieldType::Named(_) => false,
    };
    if !scalar {
        return Err(src.at(
            o.position,
            format!(
                "primary key {} of {} must be a scalar type or a list of them",
                attributes[key].name, o.name
            ),
        ));
    }
    Ok(key)
}

impl Catalog {
    /// Parses one schema file and adds its tables. `file` names the file in errors.
    pub fn load_schema(&mut self, file: &str, source: &str) -> Result<(), SchemaError> {
        let src = Source { file };
        // A file with nothing but comments (a component's schema not written yet) declares
        // nothing; the GraphQL grammar would call it an unexpected end.
        let blank = |l: &str| l.trim().is_empty() || l.trim_start().starts_with('#');
        if source.lines().all(blank) {
            return Ok(());
        }
        // graphql-parser panics on a block string indented with non-ASCII whitespace (it counts
        // the indent in characters and cuts it in bytes; found by fuzzing): such a text is
        // refused before it is parsed, and any other panic of the parser is caught, so that a
        // bad schema never brings down whoever sent it (a start, or `set_component_file`).
        if source.contains("\"\"\"") && source.chars().any(|c| c.is_whitespace() && !c.is_ascii()) {
            return Err(src.syntax(
                "a schema with block strings (\"\"\") may not hold non-ASCII whitespace".to_owned(),
            ));
        }
        let parsed = std::panic::catch_unwind(|| graphql_parser::parse_schema::<String>(source))
            .map_err(|_| {
                src.syntax("the GraphQL parser failed on this text (check block strings for unusual whitespace)".to_owned())
            })?;
        let doc = parsed.map_err(|e| src.syntax(e.to_string().trim().to_owned()))?;
        let objects = object_types(&src, &doc)?;
        let type_names: Vec<&str> = objects.iter().map(|o| o.name.as_str()).collect();
        let nested = Arc::new(nested_types(&src, &objects, &type_names)?);
        for o in &objects {
            if !o.directives.iter().any(|d| d.name == "table") {
                continue;
            }
            let table = table_of(&src, o, &type_names, &nested)?;
            self.check_new(&src, o, &table)?;
            self.tables.push(table);
        }
        Ok(())
    }

    /// Refuses a table declared twice, or exported under a name another table has.
    fn check_new(
        &self,
        src: &Source<'_>,
        o: &ObjectDef<'_>,
        table: &Table,
    ) -> Result<(), SchemaError> {
        if let Some(dup) = self
            .tables
            .iter()
            .find(|t| t.full_name() == table.full_name())
        {
            return Err(src.at(
                o.position,
                format!(
                    "table {} is declared twice (also as type {})",
                    table.full_name(),
                    dup.type_name
                ),
            ));
        }
        if let Some(export) = &table.export
            && self
                .tables
                .iter()
                .any(|t| t.export.as_ref() == Some(export))
        {
            return Err(src.at(o.position, format!("two tables are exported as {export}")));
        }
        Ok(())
    }

    /// The exported table reachable at URL segment `name`.
    pub fn exported(&self, name: &str) -> Option<&Table> {
        self.tables
            .iter()
            .find(|t| t.export.as_deref() == Some(name))
    }
}

fn number_arg(v: &graphql_parser::query::Value<'_, String>) -> Option<f64> {
    match v {
        graphql_parser::query::Value::Int(n) => n.as_i64().map(|i| i as f64),
        graphql_parser::query::Value::Float(f) => Some(*f),
        _ => None,
    }
}

fn field_type(t: &Type<'_, String>, type_names: &[&str]) -> Result<(FieldType, bool), String> {
    Ok(match t {
        Type::NonNullType(inner) => (field_type(inner, type_names)?.0, true),
        Type::ListType(inner) => (
            FieldType::List(Box::new(field_type(inner, type_names)?.0)),
            false,
        ),
        Type::NamedType(n) => match Scalar::from_name(n) {
            Some(s) => (FieldType::Scalar(s), false),
            None if type_names.contains(&n.as_str()) => (FieldType::Named(n.clone()), false),
            None => return Err(format!("unknown type {n}")),
        },
    })
}

fn string_arg(d: &Directive<'_, String>, name: &str) -> Option<String> {
    d.arguments
        .iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| match v {
            // Harper's examples write attribute names bare (`from: brandId`), which GraphQL reads as
            // an enum value.
            graphql_parser::query::Value::String(s) | graphql_parser::query::Value::Enum(s) => {
                Some(s.clone())
            }
            _ => None,
        })
}

fn attribute(
    f: &Field<'_, String>,
    type_names: &[&str],
) -> Result<Attribute, (graphql_parser::Pos, String)> {
    let (ty, required) = field_type(&f.field_type, type_names)
        .map_err(|m| (f.position, format!("{m} in field {}", f.name)))?;
    let mut a = Attribute {
        required,
        line: f.position.line,
        ..Attribute::new(&f.name, ty)
    };
    for d in &f.directives {
        match d.name.as_str() {
            "primaryKey" => a.primary_key = true,
            "indexed" => {
                if let Some(t) = string_arg(d, "type") {
                    return Err((
                        d.position,
                        format!("@indexed(type: \"{t}\") is not supported"),
                    ));
                }
                a.indexed = true;
            }
            "createdTime" => a.created_time = true,
            "updatedTime" => a.updated_time = true,
            "hidden" => a.hidden = true,
            "relationship" => {
                let r = Relationship {
                    from: string_arg(d, "from"),
                    to: string_arg(d, "to"),
                };
                if r.from.is_none() && r.to.is_none() {
                    return Err((
                        d.position,
                        format!("@relationship on {} needs from: or to:", f.name),
                    ));
                }
                a.relationship = Some(r);
            }
            "computed" => {
                let from = string_arg(d, "from");
                if let Some(src) = &from {
                    let e = computed::parse(src)
                        .map_err(|e| (d.position, format!("@computed on {}: {e}", f.name)))?;
                    a.expr = Some(Arc::new(e));
                }
                a.computed_version =
                    d.arguments
                        .iter()
                        .find(|(k, _)| k == "version")
                        .and_then(|(_, v)| match v {
                            graphql_parser::query::Value::Int(n) => n.as_i64(),
                            _ => None,
                        });
                a.computed = Some(from.unwrap_or_default());
            }
            other => {
                return Err((
                    d.position,
                    format!("unknown directive @{other} on field {}", f.name),
                ));
            }
        }
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by fuzzing (`storage/fuzz`, target `schema`): graphql-parser panicked on a block
    /// string indented with U+0085; the loader refuses it instead.
    #[test]
    fn a_text_the_parser_panics_on_is_refused() {
        let text = include_str!("../fuzz/regressions/schema-block-string-nel.graphql");
        let mut c = Catalog::default();
        assert!(matches!(
            c.load_schema("fuzz.graphql", text),
            Err(SchemaError::Syntax { .. })
        ));
    }

    const PRODUCT: &str = r#"
type Product @table @export {
  id: ID @primaryKey
  name: String! @indexed
  price: Float @indexed
  tags: [String] @indexed
  brandId: ID @indexed
  brand: Brand @relationship(from: brandId)
  address: Address
  createdAt: Long @createdTime
}
type Brand @table(database: "shop", table: "brands") @export(name: "b") @sealed { id: Long @primaryKey }
type Address { street: String }
"#;

    #[test]
    fn loads_directives() {
        let mut c = Catalog::default();
        c.load_schema("schema.graphql", PRODUCT).unwrap();
        assert_eq!(c.tables.len(), 2);
        let p = c.exported("Product").unwrap();
        assert_eq!(p.primary_key().name, "id");
        assert_eq!(p.key_type(), Scalar::Id);
        assert!(p.attribute("name").unwrap().required);
        assert_eq!(
            p.attribute("tags").unwrap().ty,
            FieldType::List(Box::new(FieldType::Scalar(Scalar::String)))
        );
        assert_eq!(p.created_time(), Some("createdAt"));
        assert!(p.types.contains_key("Address"));
        let b = c.exported("b").unwrap();
        assert_eq!(b.full_name(), "shop.brands");
        assert!(b.sealed);
        assert!(c.exported("Brand").is_none());
    }

    #[test]
    fn unknown_directive_names_the_line() {
        let mut c = Catalog::default();
        let e = c
            .load_schema(
                "s.graphql",
                "type T @table {\n  id: ID @primaryKey\n  x: Int @indexd\n}",
            )
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "s.graphql:3:10: unknown directive @indexd on field x"
        );
    }

    #[test]
    fn unknown_type_is_an_error() {
        let mut c = Catalog::default();
        assert!(
            c.load_schema("s", "type T @table { id: ID @primaryKey x: Strin }")
                .is_err()
        );
    }
}

//! Relationships and computed properties through the real binary (docs/rest.md).

use serde_json::{Value, json};
use tessera_tests::{Client, Server, Start};

const SCHEMA: &str = r#"
type Brand @table @export {
  id: ID @primaryKey
  name: String @indexed
  code: String @indexed
  products: [Product] @relationship(to: brandId)
}
type Product @table @export {
  id: ID @primaryKey
  name: String @indexed
  brandId: ID @indexed
  brand: Brand @relationship(from: brandId)
  brandCode: String
  brandByCode: Brand @relationship(from: brandCode, to: code)
  resellerIds: [ID] @indexed
  resellers: [Reseller] @relationship(from: resellerIds)
  unitPrice: Float
  quantity: Int
  total: Float @computed(from: "unitPrice * quantity")
  label: String @computed(from: "name + ' #' + quantity", version: 1) @indexed
}
type Reseller @table @export {
  id: ID @primaryKey
  name: String @indexed
}
type Person @table @export {
  id: ID @primaryKey
  name: String
  managerId: ID @indexed
  manager: Person @relationship(from: managerId)
  reports: [Person] @relationship(to: managerId)
}
"#;

fn load(c: &mut Client) {
    for (path, body) in [
        ("/Brand/b1", r#"{"name":"Acme","code":"ACM"}"#),
        ("/Brand/b2", r#"{"name":"Globex","code":"GLX"}"#),
        ("/Brand/b3", r#"{"name":"Empty","code":"EMP"}"#),
        ("/Reseller/r1", r#"{"name":"Cool Shop"}"#),
        ("/Reseller/r2", r#"{"name":"Big Box"}"#),
        (
            "/Product/p01",
            r#"{"name":"Mouse","brandId":"b1","brandCode":"ACM","resellerIds":["r1","r2"],"unitPrice":10,"quantity":3}"#,
        ),
        (
            "/Product/p02",
            r#"{"name":"Cable","brandId":"b2","resellerIds":["r2"],"unitPrice":2.5,"quantity":4}"#,
        ),
        (
            "/Product/p03",
            r#"{"name":"Dock","brandId":"b1","resellerIds":[],"unitPrice":100,"quantity":1}"#,
        ),
        (
            "/Product/p04",
            r#"{"name":"Pad","brandId":null,"unitPrice":5,"quantity":2}"#,
        ),
        (
            "/Product/p05",
            r#"{"name":"Hub","brandId":"b9","resellerIds":["r1","r9"],"unitPrice":20,"quantity":2}"#,
        ),
        ("/Person/alice", r#"{"name":"alice"}"#),
        ("/Person/bob", r#"{"name":"bob","managerId":"alice"}"#),
        ("/Person/carol", r#"{"name":"carol","managerId":"alice"}"#),
    ] {
        let r = c.put_json(path, body);
        assert_eq!(r.status, 204, "{path}: {}", r.text());
    }
}

fn get(c: &mut Client, path: &str) -> Value {
    let r = c.get(path);
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    r.json()
}

#[test]
fn conditions_through_relationships() {
    let (s, _a, _r) = Server::with_schema(SCHEMA);
    let mut c = s.client();
    load(&mut c);
    // Many-to-one, one-to-many, many-to-many, self-reference: inner joins.
    assert_eq!(
        get(&mut c, "/Product/?brand.name=Acme&select(id)"),
        json!(["p01", "p03"])
    );
    assert_eq!(
        get(&mut c, "/Brand/?products.name=Mouse&select(id)"),
        json!(["b1"])
    );
    assert_eq!(
        get(&mut c, "/Product/?resellers.name=Cool%20Shop&select(id)"),
        json!(["p01", "p05"])
    );
    assert_eq!(
        get(&mut c, "/Person/?manager.name=alice&select(id)"),
        json!(["bob", "carol"])
    );
    assert_eq!(
        get(&mut c, "/Product/?brand.name=Nobody&select(id)"),
        json!([])
    );
    assert_eq!(
        get(
            &mut c,
            "/Product/?brand.name=Acme&quantity=gt=1&select(id,quantity)"
        ),
        json!([{"id":"p01","quantity":3}])
    );
    let r = c.get("/Product/?brand.nope=1");
    assert_eq!(r.status, 404, "{}", r.text());
}

#[test]
fn nested_selections_have_left_join_semantics() {
    let (s, _a, _r) = Server::with_schema(SCHEMA);
    let mut c = s.client();
    load(&mut c);
    assert_eq!(
        get(&mut c, "/Product/?select(id,brand)&limit(1)"),
        json!([{"id":"p01","brand":{"id":"b1","name":"Acme","code":"ACM"}}])
    );
    // Null or dangling foreign keys: the property is omitted.
    assert_eq!(
        get(&mut c, "/Product/?select(id,brand{name})"),
        json!([
            {"id":"p01","brand":{"name":"Acme"}},
            {"id":"p02","brand":{"name":"Globex"}},
            {"id":"p03","brand":{"name":"Acme"}},
            {"id":"p04"},
            {"id":"p05"}
        ])
    );
    // Foreign key to foreign key.
    assert_eq!(
        get(&mut c, "/Product/p01?select(id,brandByCode{name})"),
        json!({"id":"p01","brandByCode":{"name":"Acme"}})
    );
    // One-to-many: no matches is [].
    assert_eq!(
        get(&mut c, "/Brand/?select(id,products{id})"),
        json!([
            {"id":"b1","products":[{"id":"p01"},{"id":"p03"}]},
            {"id":"b2","products":[{"id":"p02"}]},
            {"id":"b3","products":[]}
        ])
    );
    // Many-to-many keeps the id order; empty -> []; missing -> omitted; dangling -> null.
    assert_eq!(
        get(&mut c, "/Product/?select(id,resellers{name})"),
        json!([
            {"id":"p01","resellers":[{"name":"Cool Shop"},{"name":"Big Box"}]},
            {"id":"p02","resellers":[{"name":"Big Box"}]},
            {"id":"p03","resellers":[]},
            {"id":"p04"},
            {"id":"p05","resellers":[{"name":"Cool Shop"},null]}
        ])
    );
    // A to-many relationship in a condition narrows its selected records.
    assert_eq!(
        get(
            &mut c,
            "/Product/?resellers.name=Cool%20Shop&select(id,resellers{name})"
        ),
        json!([
            {"id":"p01","resellers":[{"name":"Cool Shop"}]},
            {"id":"p05","resellers":[{"name":"Cool Shop"}]}
        ])
    );
    // Self-reference both ways, nested two levels.
    assert_eq!(
        get(&mut c, "/Person/alice?select(id,reports{id,manager{name}})"),
        json!({"id":"alice","reports":[
            {"id":"bob","manager":{"name":"alice"}},
            {"id":"carol","manager":{"name":"alice"}}
        ]})
    );
    // Property paths.
    assert_eq!(
        get(&mut c, "/Product/p01.brand"),
        json!({"id":"b1","name":"Acme","code":"ACM"})
    );
    assert_eq!(get(&mut c, "/Product/p02.name"), json!("Cable"));
    assert_eq!(c.get("/Product/p99.brand").status, 404);
    // Relationships are not returned by default.
    assert_eq!(
        get(&mut c, "/Product/p03"),
        json!({"id":"p03","name":"Dock","brandId":"b1","resellerIds":[],"unitPrice":100,"quantity":1})
    );
}

#[test]
fn computed_properties() {
    let (s, app, root) = Server::with_schema(SCHEMA);
    let mut c = s.client();
    load(&mut c);
    assert_eq!(
        get(&mut c, "/Product/?id=p01&select(id,total)"),
        json!([{"id":"p01","total":30}])
    );
    assert_eq!(
        get(&mut c, "/Product/p02?select(name,total,label)"),
        json!({"name":"Cable","total":10,"label":"Cable #4"})
    );
    assert_eq!(get(&mut c, "/Product/p03.total"), json!(100));
    // `select()` is not a condition: it follows conditions joined by '|' with '&'.
    assert_eq!(
        get(
            &mut c,
            "/Product/?name=Mouse|name=Cable&select(id,brand{name})&sort(id)"
        ),
        json!([{"id":"p01","brand":{"name":"Acme"}},{"id":"p02","brand":{"name":"Globex"}}])
    );
    // The Operations API computes them when asked for by name.
    let (_, found) = s
        .ops()
        .operation(&json!({"operation": "search_by_id", "table": "Product",
        "ids": ["p02"], "get_attributes": ["name", "total", "label"]}));
    assert_eq!(
        found,
        json!([{"name":"Cable","total":10,"label":"Cable #4"}])
    );
    let (_, rows) = s.ops().operation(&json!({"operation": "sql",
        "sql": "SELECT name, total FROM data.Product WHERE id = 'p02'"}));
    assert_eq!(rows, json!([{"name":"Cable","total":10}]));
    // Not stored, not in the default output, refused when assigned.
    assert!(get(&mut c, "/Product/p01").get("total").is_none());
    let r = c.put_json("/Product/p06", r#"{"name":"X","total":5}"#);
    assert_eq!(r.status, 400);
    assert!(
        r.text()
            .contains("Computed property total may not be directly assigned a value"),
        "{}",
        r.text()
    );
    // Conditions on computed values: indexed (maintained on write) and not.
    assert_eq!(
        get(&mut c, "/Product/?label=Mouse%20%233&select(id)"),
        json!(["p01"])
    );
    assert_eq!(
        get(&mut c, "/Product/?total=gt=35&select(id,total)"),
        json!([{"id":"p03","total":100},{"id":"p05","total":40}])
    );
    assert_eq!(
        c.patch_json("/Product/p01", r#"{"quantity":5}"#).status,
        204
    );
    assert_eq!(
        get(&mut c, "/Product/?label=Mouse%20%235&select(id,total)"),
        json!([{"id":"p01","total":50}])
    );
    assert_eq!(get(&mut c, "/Product/?label=Mouse%20%233"), json!([]));
    assert_eq!(
        get(&mut c, "/Product/?sort(label)&select(label)&limit(2)"),
        json!(["Cable #4", "Dock #1"])
    );

    // A new version of the expression rebuilds the index at start-up.
    drop(c);
    s.terminate();
    let schema = SCHEMA.replace(
        r#"@computed(from: "name + ' #' + quantity", version: 1)"#,
        r#"@computed(from: "upper(name)", version: 2)"#,
    );
    std::fs::write(app.dir.path().join("schema.graphql"), schema).unwrap();
    let s = Start::new(app.dir.path(), root.path()).start();
    let mut c = s.client();
    assert_eq!(
        get(&mut c, "/Product/?label=MOUSE&select(id,label)"),
        json!([{"id":"p01","label":"MOUSE"}])
    );
    assert_eq!(get(&mut c, "/Product/?label=Mouse%20%235"), json!([]));
}

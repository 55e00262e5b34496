//! Harper's GraphQL query endpoint through the real binary: `graphql: true` in a component's
//! config serves `/graphql` over the exported tables, with arguments as conditions (through
//! relationships too), variables, fragments, aliases and operation names.

use serde_json::{Value, json};
use tessera_tests::{App, Client, Start};

const SCHEMA: &str = r#"
type Owner @table @export { id: ID @primaryKey name: String @indexed dogs: [Dog] @relationship(to: ownerId) }
type Dog @table @export { id: ID @primaryKey name: String @indexed breed: String @indexed
  ownerId: ID @indexed owner: Owner @relationship(from: "ownerId") }
type Hidden @table { id: ID @primaryKey }
"#;

fn ask(c: &mut Client, body: Value) -> (u16, Value) {
    let r = c.post_json("/graphql", &body.to_string());
    (r.status, r.json())
}

fn ids(v: &Value) -> Vec<&str> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect()
}

#[test]
fn queries_with_conditions_variables_fragments_and_relationships() {
    let app = App::new(SCHEMA);
    std::fs::write(
        app.dir.path().join("config.yaml"),
        "rest: true\ngraphql: true\ngraphqlSchema:\n  files: 'schema.graphql'\n",
    )
    .unwrap();
    let root = tempfile::tempdir().unwrap();
    let s = Start::new(app.dir.path(), root.path()).start();
    let mut ops = s.ops();
    for (table, records) in [
        (
            "Owner",
            json!([{"id": "o1", "name": "Ann"}, {"id": "o2", "name": "Bo"}]),
        ),
        (
            "Dog",
            json!([{"id": "d1", "name": "Rex", "breed": "lab", "ownerId": "o1"},
                   {"id": "d2", "name": "Ace", "breed": "pug", "ownerId": "o2"},
                   {"id": "d3", "name": "Max", "breed": "lab", "ownerId": "o2"}]),
        ),
    ] {
        let (st, body) =
            ops.operation(&json!({"operation": "insert", "table": table, "records": records}));
        assert_eq!(st, 200, "{body}");
    }
    let mut c = s.client();

    let (st, body) = ask(&mut c, json!({"query": "{ Dog { id name } }"}));
    assert_eq!(st, 200, "{body}");
    assert_eq!(
        body["data"]["Dog"],
        json!([{"id": "d1", "name": "Rex"}, {"id": "d2", "name": "Ace"}, {"id": "d3", "name": "Max"}])
    );
    // Arguments are conditions; an object argument goes through the relationship.
    let (_, body) = ask(&mut c, json!({"query": r#"{ Dog(breed: "lab") { id } }"#}));
    assert_eq!(ids(&body["data"]["Dog"]), ["d1", "d3"]);
    let (_, body) = ask(
        &mut c,
        json!({"query": r#"{ Dog(breed: "lab", owner: { name: "Bo" }) { id } }"#}),
    );
    assert_eq!(ids(&body["data"]["Dog"]), ["d3"]);
    // Variables, with defaults; a variable given no value leaves its argument out.
    let q = "query Q($breed: String = \"pug\") { Dog(breed: $breed) { id } }";
    let (_, body) = ask(&mut c, json!({"query": q}));
    assert_eq!(ids(&body["data"]["Dog"]), ["d2"]);
    let (_, body) = ask(&mut c, json!({"query": q, "variables": {"breed": "lab"}}));
    assert_eq!(ids(&body["data"]["Dog"]), ["d1", "d3"]);
    let (_, body) = ask(
        &mut c,
        json!({"query": "query Q($o: Any) { Dog(owner: $o) { id } }",
        "variables": {"o": {"name": "Ann"}}}),
    );
    assert_eq!(ids(&body["data"]["Dog"]), ["d1"]);
    let (_, body) = ask(
        &mut c,
        json!({"query": "query Q($b: String) { Dog(breed: $b) { id } }"}),
    );
    assert_eq!(ids(&body["data"]["Dog"]).len(), 3);
    // Nested relationships, aliases, fragments, several operations by name.
    let (_, body) = ask(
        &mut c,
        json!({"query": r#"query A { Dog { id } } query B { ...f } fragment f on Any { people: Owner(id: "o2") { id who: name dogs { ... on Dog { name } } } }"#,
               "operationName": "B"}),
    );
    assert_eq!(
        body["data"],
        json!({"people": [{"id": "o2", "who": "Bo", "dogs": [{"name": "Ace"}, {"name": "Max"}]}]})
    );
    // GET with the query in the URL.
    let r = c.get("/graphql?query=%7B%20Owner%20%7B%20id%20%7D%20%7D");
    assert_eq!(
        r.json()["data"]["Owner"],
        json!([{"id": "o1"}, {"id": "o2"}])
    );

    // Errors.
    for (body, needle) in [
        (json!({"query": "{ Dog { id "}), "Syntax Error"),
        (
            json!({"query": "{ Hidden { id } }"}),
            "Cannot query field \"Hidden\"",
        ),
        (
            json!({"query": "query A { Dog { id } } query B { Dog { id } }"}),
            "operationName",
        ),
        (json!({"query": "mutation { Dog { id } }"}), "Only queries"),
        (json!({"nope": 1}), "needs a query"),
    ] {
        let (st, answer) = ask(&mut c, body.clone());
        assert_eq!(st, 400, "{body}: {answer}");
        let message = answer["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{needle:?} not in {message}");
    }
    // Authentication as for REST.
    let r = s
        .client()
        .anonymous()
        .post_json("/graphql", r#"{"query":"{ Dog { id } }"}"#);
    assert_eq!(r.status, 401);
}

#[test]
fn without_graphql_true_there_is_no_endpoint() {
    let app = App::new(SCHEMA);
    let root = tempfile::tempdir().unwrap();
    let s = Start::new(app.dir.path(), root.path()).start();
    let r = s
        .client()
        .post_json("/graphql", r#"{"query":"{ Dog { id } }"}"#);
    assert_eq!(r.status, 404);
}

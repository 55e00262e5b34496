//! `{"operation":"sql"}` through the real binary (docs/operations.md): SELECT with WHERE,
//! ORDER BY, LIMIT/OFFSET, aggregates, GROUP BY and joins; INSERT, UPDATE and DELETE with the
//! data operations' messages; 400 with the position for bad SQL; role checks.

use serde_json::{Value, json};
use tessera_tests::{Client, Server};

const SCHEMA: &str = "type Dog @table @export { id: Int @primaryKey name: String @indexed age: Int @indexed breed: String @indexed }
type Breed @table @export { id: String @primaryKey label: String }";

fn sql(c: &mut Client, text: &str) -> (u16, Value) {
    c.operation(&json!({"operation": "sql", "sql": text}))
}

fn names(rows: &Value) -> Vec<&str> {
    rows.as_array()
        .unwrap_or_else(|| panic!("not rows: {rows}"))
        .iter()
        .map(|r| r["name"].as_str().unwrap_or("-"))
        .collect()
}

fn loaded() -> (Server, tempfile::TempDir, tessera_tests::App, Client) {
    let (s, app, root) = Server::with_schema(SCHEMA);
    let mut c = s.ops();
    let (st, body) = sql(
        &mut c,
        "INSERT INTO data.Dog (id, name, age, breed) VALUES (1, 'Penny', 5, 'lab'), (2, 'Harper', 2, 'pug'), (3, 'Bowie', 7, 'lab'), (4, 'Zed', NULL, 'mutt')",
    );
    assert_eq!(
        (st, &body),
        (
            200,
            &json!({"message": "inserted 4 of 4 records", "inserted_hashes": [1, 2, 3, 4], "skipped_hashes": []})
        )
    );
    let (st, _) = sql(
        &mut c,
        "INSERT INTO Breed (id, label) VALUES ('lab', 'Labrador'), ('pug', 'Pug')",
    );
    assert_eq!(st, 200);
    (s, root, app, c)
}

#[test]
fn select_filters_sorts_limits_aggregates_and_joins() {
    let (s, _root, _app, mut c) = loaded();

    let (st, rows) = sql(
        &mut c,
        "SELECT * FROM data.Dog WHERE age > 3 ORDER BY age DESC",
    );
    assert_eq!(st, 200);
    assert_eq!(
        rows,
        json!([{"id": 3, "name": "Bowie", "age": 7, "breed": "lab"},
                            {"id": 1, "name": "Penny", "age": 5, "breed": "lab"}])
    );
    let (_, rows) = sql(
        &mut c,
        "SELECT name FROM data.Dog WHERE name LIKE 'B%' OR age IN (2, 99) ORDER BY name",
    );
    assert_eq!(names(&rows), ["Bowie", "Harper"]);
    let (_, rows) = sql(
        &mut c,
        "SELECT name FROM data.Dog WHERE name LIKE '%e%' AND NOT_A_COLUMN = 1",
    );
    assert_eq!(rows, json!({"error": "unknown column NOT_A_COLUMN"}));
    let (_, rows) = sql(
        &mut c,
        "SELECT name FROM data.Dog WHERE age BETWEEN 2 AND 5 ORDER BY name LIMIT 1 OFFSET 1",
    );
    assert_eq!(names(&rows), ["Penny"]);
    let (_, rows) = sql(&mut c, "SELECT name FROM data.Dog WHERE age IS NULL");
    assert_eq!(names(&rows), ["Zed"]);
    let (_, rows) = sql(
        &mut c,
        "SELECT name FROM data.Dog WHERE 3 < age ORDER BY name",
    );
    assert_eq!(names(&rows), ["Bowie", "Penny"]);
    let (_, rows) = sql(
        &mut c,
        "SELECT d.name AS dog, d.age FROM data.Dog AS d WHERE d.id = 2",
    );
    assert_eq!(rows, json!([{"dog": "Harper", "age": 2}]));
    // An unindexed sort without conditions is sorted in memory.
    let (_, rows) = sql(&mut c, "SELECT label FROM data.Breed ORDER BY label DESC");
    assert_eq!(rows, json!([{"label": "Pug"}, {"label": "Labrador"}]));

    let (_, rows) = sql(
        &mut c,
        "SELECT COUNT(*) AS n, MAX(age), MIN(age) AS youngest, AVG(age), SUM(age) FROM data.Dog",
    );
    assert_eq!(
        rows,
        json!([{"n": 4, "MAX(age)": 7, "youngest": 2, "AVG(age)": 14.0 / 3.0, "SUM(age)": 14}])
    );
    let (_, rows) = sql(&mut c, "SELECT COUNT(*) AS n FROM data.Dog WHERE age > 100");
    assert_eq!(rows, json!([{"n": 0}]));
    let (_, rows) = sql(
        &mut c,
        "SELECT breed, COUNT(*) AS c FROM data.Dog GROUP BY breed ORDER BY c DESC, breed",
    );
    assert_eq!(
        rows,
        json!([{"breed": "lab", "c": 2}, {"breed": "mutt", "c": 1}, {"breed": "pug", "c": 1}])
    );

    let (_, rows) = sql(
        &mut c,
        "SELECT d.name, b.label FROM data.Dog AS d JOIN data.Breed AS b ON d.breed = b.id ORDER BY d.name",
    );
    assert_eq!(
        rows,
        json!([{"name": "Bowie", "label": "Labrador"}, {"name": "Harper", "label": "Pug"},
                            {"name": "Penny", "label": "Labrador"}])
    );
    let (_, rows) = sql(
        &mut c,
        "SELECT d.name, b.label FROM data.Dog d LEFT JOIN data.Breed b ON b.id = d.breed WHERE d.age IS NULL",
    );
    assert_eq!(rows, json!([{"name": "Zed", "label": null}]));
    let (_, rows) = sql(
        &mut c,
        "SELECT b.label, COUNT(*) AS dogs FROM data.Dog d JOIN data.Breed b ON d.breed = b.id WHERE b.label = 'Labrador' GROUP BY b.label",
    );
    assert_eq!(rows, json!([{"label": "Labrador", "dogs": 2}]));

    // SQL and REST see the same data.
    let (st, body) = sql(
        &mut c,
        "UPDATE data.Dog SET age = 3, name = 'Zeb' WHERE name = 'Zed'",
    );
    assert_eq!(
        (st, &body),
        (
            200,
            &json!({"message": "updated 1 of 1 records", "update_hashes": [4], "skipped_hashes": []})
        )
    );
    assert_eq!(s.client().get("/Dog/4").json()["name"], "Zeb");
    let (_, body) = sql(&mut c, "UPDATE data.Dog SET age = 1 WHERE id = 99");
    assert_eq!(
        body,
        json!({"message": "updated 0 of 0 records", "update_hashes": [], "skipped_hashes": []})
    );
    // An INSERT of an existing key is skipped.
    let (_, body) = sql(
        &mut c,
        "INSERT INTO data.Dog (id, name) VALUES (4, 'Other'), (5, 'Nova')",
    );
    assert_eq!(
        body,
        json!({"message": "inserted 1 of 2 records", "inserted_hashes": [5], "skipped_hashes": [4]})
    );
    let (st, body) = sql(&mut c, "DELETE FROM data.Dog WHERE id = 4");
    assert_eq!(
        (st, &body),
        (
            200,
            &json!({"message": "1 of 1 record successfully deleted", "deleted_hashes": [4], "skipped_hashes": []})
        )
    );
    assert_eq!(s.client().get("/Dog/4").status, 404);
    let (_, body) = sql(&mut c, "DELETE FROM data.Dog WHERE id = 4");
    assert_eq!(body["message"], "0 of 0 records successfully deleted");
    // Types are checked as for any write.
    let (st, _) = sql(&mut c, "INSERT INTO data.Dog (id, age) VALUES (9, 'old')");
    assert_eq!(st, 400);
}

#[test]
fn bad_sql_is_a_400_with_the_position_and_roles_apply() {
    let (s, _root, _app, mut c) = loaded();
    let (st, body) = sql(&mut c, "SELECT * FROM data.Dog WHERE");
    assert_eq!(st, 400, "{body}");
    let e = body["error"].as_str().unwrap();
    assert!(e.starts_with("Invalid SQL at: "), "{e}");
    assert!(e.contains("Line: 1, Column: 29"), "{e}");
    let (st, body) = sql(&mut c, "SELEC name FROM data.Dog");
    assert_eq!(st, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("Invalid SQL at: SELEC name"),
        "{body}"
    );
    for (text, status) in [
        ("SELECT * FROM data.Nope", 404),
        ("SELECT * FROM nodb.Dog", 404),
        ("SELECT nosuch FROM data.Dog", 404),
        ("SELECT * FROM data.Dog WHERE nosuch_function(age) = 1", 400),
        ("SELECT * FROM data.Dog WHERE COUNT(*) > 1", 400),
        ("SELECT ROUND(1, 2, 3)", 400),
        ("SELECT * FROM data.Dog WHERE name REGEXP '('", 400),
        ("DROP TABLE data.Dog", 400),
        ("SELECT * FROM data.Dog; SELECT * FROM data.Dog", 400),
        ("INSERT INTO data.Dog (id, name) VALUES (1)", 400),
        ("SELECT * FROM data.Dog LIMIT -1", 400),
        // Reserved words name a database or table only in backticks.
        ("SELECT * FROM call.Dog", 400),
        ("SELECT * FROM data.select", 400),
        ("SELECT * FROM `call`.`Dog`", 404),
    ] {
        let (st, body) = sql(&mut c, text);
        assert_eq!(st, status, "{text}: {body}");
        assert!(body["error"].is_string(), "{text}: {body}");
    }
    let (st, body) = c.operation(&json!({"operation": "sql"}));
    assert_eq!(
        (st, &body),
        (
            400,
            &json!({"error": "The 'sql' parameter is missing from the request body"})
        )
    );

    // A reader: SELECT without its hidden attribute; writes refused; asking for it refused.
    let perm = json!({"data": {"tables": {
        "Dog": {"read": true, "insert": false, "update": false, "delete": false,
                "attribute_permissions": [{"attribute_name": "name", "read": true, "insert": false, "update": false},
                                          {"attribute_name": "age", "read": false, "insert": false, "update": false}]},
        "Breed": {"read": false, "insert": false, "update": false, "delete": false,
                  "attribute_permissions": []}}}});
    let (st, body) =
        c.operation(&json!({"operation": "add_role", "role": "reader", "permission": perm}));
    assert_eq!(st, 200, "{body}");
    c.operation(
        &json!({"operation": "add_user", "username": "rita", "password": "pw", "role": "reader"}),
    );
    let mut rita = s.ops().as_user("rita", "pw");
    let (st, rows) = sql(&mut rita, "SELECT * FROM data.Dog WHERE id = 1");
    assert_eq!((st, &rows), (200, &json!([{"id": 1, "name": "Penny"}])));
    let (st, _) = sql(&mut rita, "SELECT age FROM data.Dog");
    assert_eq!(st, 403);
    // A table it may not see is reported with the attributes it may not read elsewhere.
    let (st, body) = sql(
        &mut rita,
        "SELECT d.age, b.label FROM data.Dog d INNER JOIN data.Breed b ON b.id = d.breed",
    );
    assert_eq!(st, 403, "{body}");
    assert_eq!(
        body["invalid_schema_items"],
        json!([
            "Table 'data.Breed' does not exist",
            "Attribute 'age' does not exist on 'data.Dog'",
            "Attribute 'breed' does not exist on 'data.Dog'"
        ]),
        "{body}"
    );
    // Every attribute the role may not read is reported at once.
    let (st, body) = sql(
        &mut rita,
        "SELECT breed FROM data.Dog WHERE age > 1 OR breed IS NOT NULL",
    );
    assert_eq!(st, 403);
    assert_eq!(
        body["invalid_schema_items"],
        json!([
            "Attribute 'breed' does not exist on 'data.Dog'",
            "Attribute 'age' does not exist on 'data.Dog'"
        ]),
        "{body}"
    );
    let (st, _) = sql(&mut rita, "SELECT * FROM data.Dog WHERE age > 1");
    assert_eq!(st, 403);
    let (st, _) = sql(&mut rita, "SELECT * FROM data.Breed");
    assert_eq!(st, 403);
    for text in [
        "INSERT INTO data.Dog (id, name) VALUES (7, 'x')",
        "UPDATE data.Dog SET name = 'x' WHERE id = 1",
        "DELETE FROM data.Dog WHERE id = 1",
    ] {
        let (st, body) = sql(&mut rita, text);
        assert_eq!(st, 403, "{text}: {body}");
    }
    let (_, rows) = sql(&mut c, "SELECT name FROM data.Dog WHERE id = 1");
    assert_eq!(names(&rows), ["Penny"]);
    // No credentials at all: 401.
    let (st, _) = sql(&mut s.ops().anonymous(), "SELECT * FROM data.Dog");
    assert_eq!(st, 401);
}

#[test]
fn expressions_functions_and_joins_of_many_tables() {
    let (_s, _root, _app, mut c) = loaded();
    // Arithmetic, functions and CASE in the select list, with Harper's labels.
    let (st, rows) = sql(
        &mut c,
        "SELECT 2 + 2, ROUND(7 / 2), UPPER(name) AS up, age * 10 AS months, \
         CASE WHEN age > 4 THEN 'old' ELSE 'young' END AS stage FROM data.Dog \
         WHERE [id] IN (1, 2) ORDER BY id",
    );
    assert_eq!(st, 200, "{rows}");
    assert_eq!(
        rows,
        json!([
            {"2 + 2": 4, "ROUND(7 / 2)": 4, "up": "PENNY", "months": 50, "stage": "old"},
            {"2 + 2": 4, "ROUND(7 / 2)": 4, "up": "HARPER", "months": 20, "stage": "young"}
        ])
    );
    // No FROM at all.
    let (_, rows) = sql(&mut c, "SELECT 2 * (3 + 4) AS n, CONCAT('a', 'b') AS s");
    assert_eq!(rows, json!([{"n": 14, "s": "ab"}]));
    // SQL's NULL: a missing age is neither equal nor unequal to 5.
    let (_, rows) = sql(
        &mut c,
        "SELECT name FROM data.Dog WHERE age != 5 ORDER BY name",
    );
    assert_eq!(names(&rows), ["Bowie", "Harper"]);
    let (_, rows) = sql(
        &mut c,
        "SELECT name FROM data.Dog WHERE age NOT BETWEEN 3 AND 6 OR name LIKE 'Z_d' ORDER BY name",
    );
    assert_eq!(names(&rows), ["Bowie", "Harper", "Zed"]);
    let (_, rows) = sql(
        &mut c,
        "SELECT name FROM data.Dog WHERE name REGEXP '^[BH]' ORDER BY name",
    );
    assert_eq!(names(&rows), ["Bowie", "Harper"]);
    // Text compared with a number reads as one.
    let (_, rows) = sql(
        &mut c,
        "SELECT name FROM data.Dog WHERE id IN ('1', '3') ORDER BY id",
    );
    assert_eq!(names(&rows), ["Penny", "Bowie"]);

    // Three tables: an owner per dog, a breed per dog; alias.* and a condition across tables.
    let (st, body) = c.operation(&json!({"operation": "create_table", "table": "Owner",
        "primary_key": "id"}));
    assert_eq!(st, 200, "{body}");
    let (st, body) = sql(
        &mut c,
        "INSERT INTO data.Owner (id, dog_id, owner) VALUES (10, 1, 'Kyle'), (11, 3, 'Ann'), (12, 2, 'Kyle')",
    );
    assert_eq!(st, 200, "{body}");
    let (st, rows) = sql(
        &mut c,
        "SELECT o.owner, d.name, b.label FROM data.Owner o \
         INNER JOIN data.Dog d ON d.id = o.dog_id \
         INNER JOIN data.Breed b ON b.id = d.breed \
         WHERE d.age + 1 > 3 ORDER BY d.name",
    );
    assert_eq!(st, 200, "{rows}");
    assert_eq!(
        rows,
        json!([{"owner": "Ann", "name": "Bowie", "label": "Labrador"},
               {"owner": "Kyle", "name": "Penny", "label": "Labrador"}])
    );
    let (_, rows) = sql(
        &mut c,
        "SELECT b.*, COUNT(d.id) AS dogs FROM data.Dog d LEFT JOIN data.Breed b ON b.id = d.breed \
         GROUP BY b.id HAVING COUNT(d.id) >= 1 ORDER BY dogs DESC, b.id",
    );
    assert_eq!(
        rows,
        json!([{"id": "lab", "label": "Labrador", "dogs": 2},
               {"id": null, "label": null, "dogs": 1},
               {"id": "pug", "label": "Pug", "dogs": 1}])
    );
    // A column selected under another name is not repeated by `*`; a qualified column inside
    // a function keeps its qualifier in the label.
    let (_, rows) = sql(&mut c, "SELECT *, name AS dog FROM data.Dog WHERE id = 1");
    assert_eq!(
        rows,
        json!([{"id": 1, "age": 5, "breed": "lab", "dog": "Penny"}])
    );
    let (_, rows) = sql(&mut c, "SELECT MAX(d.age) FROM data.Dog d");
    assert_eq!(rows, json!([{"MAX(d.age)": 7}]));
    // Columns of the same name are numbered, as Harper's engine names them.
    let (_, rows) = sql(
        &mut c,
        "SELECT d.id, b.id FROM data.Dog d INNER JOIN data.Breed b ON b.id = d.breed WHERE d.id = 2",
    );
    assert_eq!(rows, json!([{"id": 2, "id1": "pug"}]));
    // Comma joins with the join condition in WHERE.
    let (_, rows) = sql(
        &mut c,
        "SELECT DISTINCT o.owner FROM data.Owner o, data.Dog d WHERE o.dog_id = d.id AND d.breed = 'lab' ORDER BY 1",
    );
    assert_eq!(rows, json!([{"owner": "Ann"}, {"owner": "Kyle"}]));

    // Expressions in UPDATE and INSERT; dates from the functions.
    let (_, body) = sql(
        &mut c,
        "UPDATE data.Dog SET age = age * 2 WHERE age IS NOT NULL",
    );
    assert_eq!(body["message"], "updated 3 of 3 records", "{body}");
    let (_, rows) = sql(&mut c, "SELECT SUM(age) AS total FROM data.Dog");
    assert_eq!(rows, json!([{"total": 28}]));
    let (_, body) = sql(
        &mut c,
        "INSERT INTO data.Owner (id, owner, since) VALUES (13, CONCAT('Jo', 'e'), DATE_ADD(NOW(), 1, 'days'))",
    );
    assert_eq!(body["message"], "inserted 1 of 1 records", "{body}");
    let (_, rows) = sql(
        &mut c,
        "SELECT owner FROM data.Owner WHERE DATE_DIFF(since, NOW(), 'hours') BETWEEN 23 AND 25",
    );
    assert_eq!(rows, json!([{"owner": "Joe"}]));
    let (_, body) = sql(&mut c, "DELETE FROM data.Owner WHERE LENGTH(owner) = 3");
    assert_eq!(
        body["message"], "2 of 2 records successfully deleted",
        "{body}"
    );
}

#[test]
fn geo_functions_measure_as_harper_does() {
    let (_s, _root, _app, mut c) = loaded();
    let (st, body) =
        c.operation(&json!({"operation": "create_table", "table": "Place", "primary_key": "id"}));
    assert_eq!(st, 200, "{body}");
    let (st, body) = c.operation(
        &json!({"operation": "insert", "table": "Place", "records": [
        {"id": 1, "name": "Denver", "point": {"type": "Point", "coordinates": [-104.99, 39.74]}},
        {"id": 2, "name": "Boston", "point": {"type": "Point", "coordinates": [-71.05, 42.36]}},
        {"id": 3, "name": "Nowhere"}]}),
    );
    assert_eq!(st, 200, "{body}");
    // Figures as Harper's (turf's), with Harper's labels (the unit tests check the last digit:
    // the JSON parser of this client rounds the last one).
    let (st, rows) = sql(
        &mut c,
        "SELECT geoDistance('[-104.979127,39.761563]', '[-77.035248,38.889475]', 'miles')",
    );
    assert_eq!(st, 200, "{rows}");
    let miles = rows[0]["geoDistance('[-104.979127,39.761563]','[-77.035248,38.889475]','miles')"]
        .as_f64()
        .unwrap_or_else(|| panic!("{rows}"));
    assert!((miles - 1488.6913067538915).abs() < 1e-9, "{miles}");
    let (_, rows) = sql(
        &mut c,
        r#"SELECT geoArea('{"type":"Polygon","coordinates":[[[0,0],[0.123456,0],[0.123456,0.123456],[0,0.123456]]]}') AS area"#,
    );
    assert!(
        (rows[0]["area"].as_f64().unwrap() - 188871526.05092356).abs() < 1e-6,
        "{rows}"
    );
    // A square less its corner, with the first's properties; less nothing, no value at all.
    let (st, rows) = sql(
        &mut c,
        r#"SELECT geoDifference('{"type":"Feature","properties":{"n":1},"geometry":{"type":"Polygon","coordinates":[[[0,0],[0,2],[2,2],[2,0],[0,0]]]}}', '{"type":"Polygon","coordinates":[[[1,1],[1,3],[3,3],[3,1],[1,1]]]}') AS d, geoDifference('[1,2]', null) AS none"#,
    );
    assert_eq!(st, 200, "{rows}");
    assert_eq!(
        rows,
        json!([{"d": {"type": "Feature", "properties": {"n": 1}, "geometry": {"type": "Polygon",
            "coordinates": [[[0, 0], [2, 0], [2, 1], [1, 1], [1, 2], [0, 2], [0, 0]]]}}}])
    );
    let (_, rows) = sql(
        &mut c,
        "SELECT name, geoDistance('[-104.979127,39.761563]', point, 'kilometers') AS km FROM data.Place \
         WHERE geoNear('[-104.979127,39.761563]', point, 100, 'miles') ORDER BY km",
    );
    assert_eq!(names(&rows), ["Denver"]);
    let (_, rows) = sql(
        &mut c,
        r#"SELECT name FROM data.Place WHERE geoContains('{"type":"Polygon","coordinates":[[[-109,37],[-102,37],[-102,41],[-109,41],[-109,37]]]}', point)"#,
    );
    assert_eq!(names(&rows), ["Denver"]);
    // A measure of nothing (Harper's NaN) leaves its label out of the row.
    let (_, rows) = sql(
        &mut c,
        "SELECT id, geoLength(point, 'miles') FROM data.Place WHERE id = 3",
    );
    assert_eq!(rows, json!([{"id": 3}]));
    let (_, rows) = sql(
        &mut c,
        "SELECT geoConvert('[1,2]', 'point', '{\"name\": \"x\"}') AS f",
    );
    assert_eq!(
        rows,
        json!([{"f": {"type": "Feature", "properties": "{\"name\": \"x\"}",
                      "geometry": {"type": "Point", "coordinates": [1, 2]}}}])
    );
}

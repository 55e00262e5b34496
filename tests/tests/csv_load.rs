//! The CSV loads of the Operations API through the real binary: `csv_data_load`,
//! `csv_file_load` and `csv_url_load` run as jobs that `get_job` reports, stream in batches,
//! type their cells, and fail with the line of a bad row; and `export_local`, the way back out.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use serde_json::json;
use tessera_tests::Server;

const SCHEMA: &str = "type Part @table @export { id: Int @primaryKey name: String price: Float \
                      stock: Int }";

#[test]
fn data_loads_type_cells_by_the_schema_or_by_their_text() {
    let (s, _app, _root) = Server::with_schema(SCHEMA);
    let mut c = s.ops();
    let job = c.run_job(
        json!({"operation": "csv_data_load", "table": "Part",
               "data": "id,name,price,stock,note\n1,bolt,0.25,100,TRUE\n2,nut,,007,\"{\"\"a\"\":1}\"\n\n3,\"washer, flat\",1,,01234\n"}),
    );
    assert_eq!(job["status"], "COMPLETE", "{job}");
    assert_eq!(job["type"], "csv_data_load");
    assert_eq!(job["user"], "admin");
    assert_eq!(job["message"], "successfully loaded 3 of 3 records");
    let (_, rows) = c.operation(&json!({"operation": "search_by_id", "table": "Part",
        "ids": [1, 2, 3], "get_attributes": ["id", "name", "price", "stock", "note"]}));
    assert_eq!(
        rows,
        json!([
            {"id": 1, "name": "bolt", "price": 0.25, "stock": 100, "note": true},
            {"id": 2, "name": "nut", "price": null, "stock": 7, "note": {"a": 1}},
            {"id": 3, "name": "washer, flat", "price": 1, "stock": null, "note": "01234"},
        ])
    );

    // update and upsert as the action says.
    let job = c.run_job(
        json!({"operation": "csv_data_load", "action": "update", "table": "Part",
               "data": "id,stock\n1,99\n9,1\n"}),
    );
    assert_eq!(
        job["message"], "successfully loaded 1 of 2 records",
        "{job}"
    );
    let job = c.run_job(
        json!({"operation": "csv_data_load", "action": "upsert", "table": "Part",
               "data": "id,name\n3,washer\n4,gear\n"}),
    );
    assert_eq!(
        job["message"], "successfully loaded 2 of 2 records",
        "{job}"
    );
    let (_, rows) = c.operation(&json!({"operation": "sql",
        "sql": "SELECT id, name, stock FROM data.Part WHERE id IN (1, 3, 4) ORDER BY id"}));
    assert_eq!(
        rows,
        json!([{"id": 1, "name": "bolt", "stock": 99}, {"id": 3, "name": "washer", "stock": null},
               {"id": 4, "name": "gear", "stock": null}])
    );

    // A row that does not fit the schema fails the job with its line.
    let job = c.run_job(json!({"operation": "csv_data_load", "table": "Part",
               "data": "id,stock\n10,1\n11,many\n"}));
    assert_eq!(job["status"], "ERROR");
    let message = job["message"].as_str().unwrap();
    assert!(
        message.contains("line 3") && message.contains("stock"),
        "{message}"
    );
    // A column Harper would refuse.
    let job =
        c.run_job(json!({"operation": "csv_data_load", "table": "Part", "data": "id,a/b\n12,1\n"}));
    assert_eq!(
        job["message"],
        "Invalid column name 'a/b', cancelling load operation"
    );
    let (_, rows) = c.operation(&json!({"operation": "search_by_id", "table": "Part",
        "ids": [12], "get_attributes": ["*"]}));
    assert_eq!(rows, json!([]));

    // Refused before a job starts.
    for (op, error) in [
        (
            json!({"operation": "csv_data_load", "table": "Part"}),
            "Data is required",
        ),
        (
            json!({"operation": "csv_data_load", "table": "Nope", "data": "id\n1\n"}),
            "Table 'data.Nope' does not exist",
        ),
        (
            json!({"operation": "csv_data_load", "action": "merge", "table": "Part", "data": "id\n1\n"}),
            "Action is required and must be either insert, update, or upsert",
        ),
        (
            json!({"operation": "csv_file_load", "table": "Part", "file_path": "/no/such.csv"}),
            "No such file or directory /no/such.csv",
        ),
        (
            json!({"operation": "csv_url_load", "table": "Part", "csv_url": "ftp://x/y.csv"}),
            "'csv_url' must be a valid url",
        ),
    ] {
        let (st, body) = c.operation(&op);
        assert_eq!((st, body["error"].as_str()), (400, Some(error)), "{op}");
    }
    let (_, none) = c.operation(&json!({"operation": "get_job", "id": "no-such-job"}));
    assert_eq!(none, json!([]));
}

#[test]
fn a_large_file_loads_in_batches_into_a_dynamic_table() {
    let (s, _app, root) = Server::with_schema(SCHEMA);
    let mut c = s.ops();
    let (st, body) = c.operation(&json!({"operation": "create_table", "database": "inv",
        "table": "item", "primary_key": "sku"}));
    assert_eq!(st, 200, "{body}");
    // 25,000 rows (25 batches), with Latin-1 bytes that are not UTF-8.
    let path = root.path().join("items.csv");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    file.write_all(b"sku,city,qty\n").unwrap();
    for i in 0..25_000 {
        file.write_all(format!("{i},M").as_bytes()).unwrap();
        file.write_all(b"\xe9").unwrap();
        writeln!(file, "xico {i},{}", i % 7).unwrap();
    }
    file.flush().unwrap();
    drop(file);
    let job = c.run_job(
        json!({"operation": "csv_file_load", "schema": "inv", "table": "item",
               "file_path": path.to_str().unwrap()}),
    );
    assert_eq!(
        job["message"], "successfully loaded 25000 of 25000 records",
        "{job}"
    );
    let (_, n) = c.operation(&json!({"operation": "sql",
        "sql": "SELECT COUNT(*) AS n FROM inv.item WHERE qty = 3"}));
    assert_eq!(n, json!([{"n": 3571}]));
    let (_, rows) = c.operation(&json!({"operation": "search_by_id", "schema": "inv",
        "table": "item", "ids": [24999], "get_attributes": ["sku", "city", "qty"]}));
    assert_eq!(
        rows,
        json!([{"sku": 24999, "city": "M\u{fffd}xico 24999", "qty": 2}])
    );
    // The attributes the load added are the table's now.
    let (_, t) = c.operation(&json!({"operation": "describe_table", "schema": "inv",
        "table": "item"}));
    let names: Vec<&str> = t["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["attribute"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"city") && names.contains(&"qty"), "{t}");
}

/// Serves `body` with `content_type` to each of `requests` GETs on a free port.
fn serve_once(content_type: &'static str, body: &'static str, requests: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().take(requests) {
            let mut conn = conn.unwrap();
            let mut buf = [0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[test]
fn url_loads_take_csv_and_refuse_other_content() {
    let (s, _app, _root) = Server::with_schema(SCHEMA);
    let mut c = s.ops();
    let port = serve_once("text/csv; charset=utf-8", "id,name\n21,cog\n22,cam\n", 1);
    let job = c.run_job(json!({"operation": "csv_url_load", "table": "Part",
               "csv_url": format!("http://127.0.0.1:{port}/parts.csv")}));
    assert_eq!(
        job["message"], "successfully loaded 2 of 2 records",
        "{job}"
    );
    let port = serve_once("text/html", "<p>no</p>", 1);
    let job = c.run_job(json!({"operation": "csv_url_load", "table": "Part",
               "csv_url": format!("http://127.0.0.1:{port}/parts.csv")}));
    assert_eq!(job["status"], "ERROR");
    assert!(
        job["message"]
            .as_str()
            .unwrap()
            .contains("unsupported content type: text/html"),
        "{job}"
    );
}

#[test]
fn a_role_without_an_attribute_fails_the_job_with_harpers_refusal() {
    let (s, _app, _root) = Server::with_schema(SCHEMA);
    let mut c = s.ops();
    let (st, body) = c.operation(&json!({"operation": "add_role", "role": "loader",
        "permission": {"data": {"tables": {"Part": {"read": true, "insert": true,
            "update": false, "delete": false,
            "attribute_permissions": [
                {"attribute_name": "id", "read": true, "insert": true, "update": false},
                {"attribute_name": "price", "read": true, "insert": false, "update": false}]}}}}}));
    assert_eq!(st, 200, "{body}");
    let (st, body) = c.operation(&json!({"operation": "add_user", "role": "loader",
        "username": "loader", "password": "pw-loader", "active": true}));
    assert_eq!(st, 200, "{body}");
    let mut loader = s.ops().as_user("loader", "pw-loader");
    let job = loader.run_job(
        json!({"operation": "csv_data_load", "table": "Part", "data": "id,price\n31,2.5\n"}),
    );
    assert_eq!(job["status"], "ERROR");
    assert_eq!(
        job["message"]["unauthorized_access"][0]["required_attribute_permissions"],
        json!([{"attribute_name": "price", "required_permissions": ["insert"]}]),
        "{job}"
    );
    // The table permission is checked before any job starts.
    let (st, _) = loader.operation(&json!({"operation": "csv_data_load", "action": "update",
        "table": "Part", "data": "id\n1\n"}));
    assert_eq!(st, 403);
}

#[test]
fn delete_records_before_a_date_runs_as_a_job() {
    let (s, _app, _root) = Server::with_schema(SCHEMA);
    let mut c = s.ops();
    let (st, _) = c.operation(
        &json!({"operation": "create_table", "database": "old", "table": "log",
        "primary_key": "id"}),
    );
    assert_eq!(st, 200);
    let (st, _) = c.operation(
        &json!({"operation": "insert", "database": "old", "table": "log",
        "records": [{"id": 1}, {"id": 2}]}),
    );
    assert_eq!(st, 200);
    std::thread::sleep(Duration::from_millis(50));
    let cut = chrono_now_iso();
    std::thread::sleep(Duration::from_millis(50));
    let (st, _) = c.operation(
        &json!({"operation": "insert", "database": "old", "table": "log",
        "records": [{"id": 3}]}),
    );
    assert_eq!(st, 200);
    let job = c.run_job(
        json!({"operation": "delete_records_before", "database": "old", "table": "log", "date": cut}),
    );
    assert_eq!(job["message"], "2 records successfully deleted", "{job}");
    let (_, left) = c.operation(&json!({"operation": "search_by_value", "database": "old",
        "table": "log", "search_attribute": "id", "search_value": "*", "get_attributes": ["id"]}));
    assert_eq!(left, json!([{"id": 3}]));
    // A table without a created time, and a bad date, are refused at once.
    for (op, needle) in [
        (
            json!({"operation": "delete_records_before", "table": "Part", "date": cut}),
            "created-time",
        ),
        (
            json!({"operation": "delete_records_before", "database": "old", "table": "log", "date": "soon"}),
            "ISO-8601",
        ),
    ] {
        let (st, body) = c.operation(&op);
        assert_eq!(st, 400, "{body}");
        assert!(body["error"].as_str().unwrap().contains(needle), "{body}");
    }
}

/// Now as an ISO date with milliseconds, UTC.
fn chrono_now_iso() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

#[test]
fn export_local_writes_a_search_to_json_or_csv_that_loads_back() {
    let (s, _app, _root) = Server::with_schema(SCHEMA);
    let mut c = s.ops();
    let (st, _) = c.operation(&json!({"operation": "insert", "table": "Part", "records": [
        {"id": 1, "name": "bolt, hex", "price": 0.25}, {"id": 2, "name": "nut", "stock": 7},
        {"id": 3, "name": "gear", "price": 4}]}));
    assert_eq!(st, 200);
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().to_str().unwrap();
    let job = c.run_job(
        json!({"operation": "export_local", "path": dir, "filename": "parts",
        "format": "json", "search_operation": {"operation": "search_by_hash", "table": "Part",
        "hash_values": [1, 2], "get_attributes": ["id", "name"]}}),
    );
    assert_eq!(job["status"], "COMPLETE", "{job}");
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("parts.json")).unwrap()).unwrap();
    assert_eq!(
        written,
        json!([{"id": 1, "name": "bolt, hex"}, {"id": 2, "name": "nut"}])
    );
    // CSV of a SQL query, loaded back into another table as it was.
    let job = c.run_job(
        json!({"operation": "export_local", "path": dir, "filename": "cheap",
        "format": "csv", "search_operation": {"operation": "sql",
        "sql": "SELECT id, name, price, stock FROM data.Part WHERE id < 3 ORDER BY id"}}),
    );
    assert_eq!(job["status"], "COMPLETE", "{job}");
    let text = std::fs::read_to_string(out.path().join("cheap.csv")).unwrap();
    assert_eq!(
        text,
        "id,name,price,stock\n1,\"bolt, hex\",0.25,\n2,nut,,7\n"
    );
    c.operation(&json!({"operation": "create_table", "table": "copy", "primary_key": "id"}));
    let job = c.run_job(json!({"operation": "csv_file_load", "table": "copy",
        "file_path": out.path().join("cheap.csv").to_str().unwrap()}));
    assert_eq!(job["status"], "COMPLETE", "{job}");
    let (_, copied) = c.operation(&json!({"operation": "search_by_id", "table": "copy",
        "ids": [1], "get_attributes": ["name", "price"]}));
    assert_eq!(copied, json!([{"name": "bolt, hex", "price": 0.25}]));

    // Refused before a job starts: a bad format, a missing directory, not a search.
    for (bad, why) in [
        (json!({"format": "xml"}), "format"),
        (
            json!({"path": out.path().join("nope").to_str().unwrap()}),
            "does not exist",
        ),
        (
            json!({"search_operation": {"operation": "drop_table", "table": "Part"}}),
            "search",
        ),
    ] {
        let mut op = json!({"operation": "export_local", "path": dir, "format": "json",
            "search_operation": {"operation": "search_by_value", "table": "Part",
            "search_attribute": "id", "search_value": "*"}});
        for (k, v) in bad.as_object().unwrap() {
            op[k] = v.clone();
        }
        let (st, body) = c.operation(&op);
        assert_eq!(st, 400, "{body}");
        assert!(body["error"].as_str().unwrap().contains(why), "{body}");
    }
    // A search that fails fails the job, with its error.
    let job = c.run_job(
        json!({"operation": "export_local", "path": dir, "format": "json",
        "search_operation": {"operation": "search_by_value", "table": "Nope",
        "search_attribute": "id", "search_value": 1}}),
    );
    assert_eq!(job["status"], "ERROR", "{job}");
    // Super users only: it writes files on the server.
    c.operation(
        &json!({"operation": "add_role", "role": "r", "permission": {"super_user": false,
        "data": {"tables": {"Part": {"read": true, "insert": false, "update": false,
        "delete": false, "attribute_permissions": []}}}}}),
    );
    c.operation(
        &json!({"operation": "add_user", "username": "u", "password": "pw", "role": "r",
        "active": true}),
    );
    let (st, _) = s
        .ops()
        .as_user("u", "pw")
        .operation(&json!({"operation": "export_local",
        "path": dir, "format": "json", "search_operation": {"operation": "search_by_value",
        "table": "Part", "search_attribute": "id", "search_value": "*"}}));
    assert_eq!(st, 403);
}

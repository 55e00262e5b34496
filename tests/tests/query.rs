//! Collection queries through the real binary (docs/rest.md): every operator, groups,
//! select/limit/sort, ordering, arrays, nulls and booleans, errors, DELETE with a query, and a
//! result large enough to be streamed.

use serde_json::{Value, json};
use tessera_tests::{Client, Server, from_msgpack};

const SCHEMA: &str = r#"
type Product @table @export {
  id: ID @primaryKey
  name: String @indexed
  category: String @indexed
  price: Float @indexed
  tags: [String] @indexed
  inStock: Boolean @indexed
  discount: Float @indexed
  rating: Int
  note: String
}
"#;

/// The dataset: prices chosen so that `price=gt=40` lists p01, p04, p05, p03 .
const PRODUCTS: &[&str] = &[
    r#"{"id":"p01","name":"Mouse","category":"accessories","price":49.99,"tags":["usb","input"],"inStock":true,"discount":null,"rating":5}"#,
    r#"{"id":"p02","name":"Cable","category":"cables","price":9.5,"tags":["usb"],"inStock":false,"discount":0.1,"rating":3}"#,
    r#"{"id":"p03","name":"Monitor","category":"displays","price":199,"tags":["hdmi"],"inStock":true,"discount":0.2,"rating":4}"#,
    r#"{"id":"p04","name":"Keyboard","category":"input","price":99,"tags":["usb","input","dev"],"inStock":true,"rating":5}"#,
    r#"{"id":"p05","name":"Dock","category":"hubs","price":150,"tags":["usb","dev"],"inStock":false,"discount":null,"rating":2}"#,
    r#"{"id":"p06","name":"Sticker","category":"misc","price":1,"tags":[],"inStock":true,"rating":1,"note":"a|b"}"#,
    r#"{"id":"p07","name":"Mat","category":"accessories","price":15,"tags":["license"],"inStock":false,"discount":0.5}"#,
    r#"{"id":"p08","name":"Lamp","category":null,"price":25,"inStock":true,"rating":4}"#,
    r#"{"id":"p09","name":"Stand","category":"accessories","price":35,"tags":["desk"],"inStock":true,"rating":3}"#,
    r#"{"id":"p10","name":"Hub","category":"accessories","price":40,"tags":["usb","licensed"],"inStock":false,"rating":4}"#,
];

fn setup() -> (Server, tessera_tests::App, tempfile::TempDir, Client) {
    let (s, a, r) = Server::with_schema(SCHEMA);
    let mut c = s.client();
    for p in PRODUCTS {
        let id = serde_json::from_str::<Value>(p).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(c.put_json(&format!("/Product/{id}"), p).status, 204);
    }
    (s, a, r, c)
}

/// The ids a query returns, in order.
fn ids(c: &mut Client, query: &str) -> Vec<String> {
    let r = c.get(&format!("/Product/?{query}"));
    assert_eq!(r.status, 200, "{query}: {}", r.text());
    r.json()
        .as_array()
        .unwrap_or_else(|| panic!("{query}: not an array: {}", r.text()))
        .iter()
        .map(|p| p["id"].as_str().expect("id").to_owned())
        .collect()
}

fn status_and_text(c: &mut Client, query: &str) -> (u16, String) {
    let r = c.get(&format!("/Product/?{query}"));
    (r.status, r.text())
}

#[test]
fn operators_and_ordering() {
    let (_s, _a, _r, mut c) = setup();
    // Index order: ascending value, ties in primary-key order.
    assert_eq!(ids(&mut c, "price=gt=40"), ["p01", "p04", "p05", "p03"]);
    assert_eq!(
        ids(&mut c, "category=accessories"),
        ["p01", "p07", "p09", "p10"]
    );
    for (q, want) in [
        ("price=ge=40", vec!["p10", "p01", "p04", "p05", "p03"]),
        ("price=lt=10", vec!["p06", "p02"]),
        ("price=le=9.5", vec!["p06", "p02"]),
        ("price>150", vec!["p03"]),
        ("price>=150", vec!["p05", "p03"]),
        ("price<9.5", vec!["p06"]),
        ("price<=1", vec!["p06"]),
        ("rating=5", vec!["p01", "p04"]),
        ("rating!=5&price<20", vec!["p06", "p02", "p07"]),
        ("rating=ne=5&price<20", vec!["p06", "p02", "p07"]),
        ("name=sw=M", vec!["p07", "p03", "p01"]),
        ("name==Mo*", vec!["p03", "p01"]),
        ("name=ct=ou", vec!["p01"]),
        ("name=ew=d", vec!["p04", "p09"]),
        ("name===Mouse", vec!["p01"]),
        ("name!==Mouse&price<10", vec!["p06", "p02"]),
        ("inStock=false", vec!["p02", "p05", "p07", "p10"]),
        ("inStock==boolean:false", vec!["p02", "p05", "p07", "p10"]),
        ("rating==number:4", vec!["p03", "p08", "p10"]),
        ("name==string:Hub", vec!["p10"]),
        // Ranges: the two-condition form and the documented chained form.
        (
            "price=gt=20&price=lt=100",
            vec!["p08", "p09", "p10", "p01", "p04"],
        ),
        (
            "price=gt=20&lt=100",
            vec!["p08", "p09", "p10", "p01", "p04"],
        ),
        // Groups.
        (
            "rating=5|(price=gt=100&price=lt=200)",
            vec!["p01", "p03", "p04", "p05"],
        ),
        (
            "price=lt=10|[rating=5&[tags=usb|tags=dev]]",
            vec!["p01", "p02", "p04", "p06"],
        ),
        (
            "(category=cables|category=hubs)&inStock=false",
            vec!["p02", "p05"],
        ),
        // Non-indexed attribute: a scan, in primary-key order.
        ("rating=4", vec!["p03", "p08", "p10"]),
        // Primary key conditions.
        ("id=p03", vec!["p03"]),
        ("id=gt=p08", vec!["p09", "p10"]),
        // Percent-encoded structure characters are literal.
        ("note=a%7Cb", vec!["p06"]),
        ("name=nothing", vec![]),
    ] {
        let got = ids(&mut c, q);
        let mut got_sorted = got.clone();
        got_sorted.sort();
        let mut want_sorted = want.clone();
        want_sorted.sort();
        assert_eq!(got_sorted, want_sorted, "{q}");
        if !q.contains('|') && !q.contains("!=") && !q.contains("ne=") {
            assert_eq!(got, want, "order of {q}");
        }
    }
}

#[test]
fn arrays_nulls_and_booleans() {
    let (_s, _a, _r, mut c) = setup();
    assert_eq!(ids(&mut c, "tags=usb"), ["p01", "p02", "p04", "p05", "p10"]);
    assert_eq!(ids(&mut c, "tags=input&tags=usb"), ["p01", "p04"]);
    assert_eq!(ids(&mut c, "tags=sw=lic"), ["p07", "p10"]);
    // Explicit nulls are found; records that lack the attribute are not.
    assert_eq!(ids(&mut c, "discount==null"), ["p01", "p05"]);
    assert_eq!(ids(&mut c, "discount=null"), ["p01", "p05"]);
    assert_eq!(ids(&mut c, "category==null"), ["p08"]);
    assert_eq!(ids(&mut c, "discount=ne=null"), ["p02", "p03", "p07"]);
    // Complete sorts: nulls (and missing values) first, false before true.
    assert_eq!(
        ids(&mut c, "price=gt=0&sort(discount,id)"),
        [
            "p01", "p04", "p05", "p06", "p08", "p09", "p10", "p02", "p03", "p07"
        ]
    );
    assert_eq!(
        ids(&mut c, "sort(inStock,-price)"),
        [
            "p05", "p10", "p07", "p02", "p03", "p04", "p01", "p09", "p08", "p06"
        ]
    );
}

#[test]
fn select_limit_sort() {
    let (_s, _a, _r, mut c) = setup();
    let get = |c: &mut Client, q: &str| {
        let r = c.get(&format!("/Product/?{q}"));
        assert_eq!(r.status, 200, "{q}: {}", r.text());
        r.json()
    };
    assert_eq!(
        get(&mut c, "category=accessories&select(name)"),
        json!(["Mouse", "Mat", "Stand", "Hub"])
    );
    assert_eq!(
        get(&mut c, "category=accessories&select(id,discount)&limit(2)"),
        json!([{"id":"p01","discount":null},{"id":"p07","discount":0.5}])
    );
    assert_eq!(
        get(&mut c, "category=accessories&select([id,price])&limit(1,3)"),
        json!([["p07", 15], ["p09", 35]])
    );
    assert_eq!(
        get(&mut c, "id=p02&select(name,)"),
        json!([{"name":"Cable"}])
    );
    assert_eq!(get(&mut c, "price=gt=0&limit(20,30)"), json!([]));
    assert_eq!(
        ids(&mut c, "price=gt=0&sort(-price)&limit(3)"),
        ["p03", "p05", "p04"]
    );
    assert_eq!(
        ids(&mut c, "sort(+price)&limit(2,5)"),
        ["p07", "p08", "p09"]
    );
    assert_eq!(
        ids(&mut c, "inStock=true&sort(-rating,name)"),
        ["p04", "p01", "p08", "p03", "p09", "p06"]
    );
    // select on one record.
    let r = c.get("/Product/p01?select(name,price)");
    assert_eq!(r.json(), json!({"name":"Mouse","price":49.99}));
    // MessagePack: a collection is a sequence of maps.
    let r = c.request(
        "GET",
        "/Product/?category=accessories&select(id)&limit(2)",
        &[("Accept", "application/x-msgpack")],
        None,
    );
    assert_eq!(from_msgpack(&r.body[..4]), json!("p01"));
    let r = c.request(
        "GET",
        "/Product/?category=cables",
        &[("Accept", "application/x-msgpack")],
        None,
    );
    assert_eq!(from_msgpack(&r.body)["name"], json!("Cable"));
}

#[test]
fn errors_and_delete() {
    let (_s, _a, _r, mut c) = setup();
    for (q, status, needle) in [
        ("nope=1", 404, "nope is not a defined attribute"),
        ("sort(nope)", 404, "nope is not a defined attribute"),
        (
            "sort(rating)",
            404,
            "rating is not indexed and not combined with any other conditions",
        ),
        ("price=xx=3", 400, "position 5"),
        ("a=1&b=2|c=3", 400, "position 7"),
        ("foo()", 400, "unknown function"),
        ("limit(1,2,3)", 400, "limit()"),
        ("(price=1", 400, "missing ')'"),
        ("price=abc", 400, "must be a number"),
        ("inStock=yes", 400, "true or false"),
    ] {
        let (s, text) = status_and_text(&mut c, q);
        assert_eq!(s, status, "{q}: {text}");
        assert!(text.contains(needle), "{q}: {text}");
    }
    let r = c.delete("/Product/?category=accessories");
    assert_eq!((r.status, r.json()), (200, json!(true)));
    assert_eq!(ids(&mut c, "category=accessories"), Vec::<String>::new());
    assert_eq!(ids(&mut c, "price=gt=0").len(), 6);
    // The index entries went with the records.
    assert_eq!(ids(&mut c, "tags=sw=lic"), Vec::<String>::new());
}

#[test]
fn large_results_stream_in_order() {
    let (s, _a, _r) = Server::with_schema(SCHEMA);
    let mut c = s.client();
    let n = 3000;
    // Pipelined PUTs, then read the answers.
    for i in 0..n {
        let body = format!(
            r#"{{"name":"item {i:05}","category":"c{}","price":{}}}"#,
            i % 3,
            i % 100
        );
        let req = c.format(
            "PUT",
            &format!("/Product/k{i:05}"),
            &[("Content-Type", "application/json")],
            Some(body.as_bytes()),
        );
        c.send_raw(&req);
    }
    for _ in 0..n {
        assert_eq!(c.read_response(false).unwrap().status, 204);
    }
    let r = c.get("/Product/");
    assert_eq!(r.header("Transfer-Encoding"), Some("chunked"));
    let all = r.json();
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), n);
    let keys: Vec<&str> = all.iter().map(|p| p["id"].as_str().unwrap()).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "a full listing is in primary-key order");
    // An index walk merged across shards: ascending price, ties in key order.
    let r = c.get("/Product/?category=c1&select(id,price)");
    let rows = r.json();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), n / 3);
    let ids: Vec<&str> = rows.iter().map(|p| p["id"].as_str().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
    let r = c.get("/Product/?price=ge=98&sort(-price,id)&select(id)");
    let got = r.json();
    let got = got.as_array().unwrap();
    assert_eq!(got.len(), 60);
    assert_eq!(got[0], json!("k00099"));
    assert_eq!(got[30], json!("k00098"));
    // The connection is still usable after a streamed response.
    assert_eq!(c.get("/Product/k00001").status, 200);
}

//! `GET /openapi` (docs/rest.md), checked by a strict validator: openapi-spec-validator
//! from PyPI (installed by tests/run.sh), which Harper's own document fails.

use std::process::Command;

use serde_json::{Value, json};
use tessera_tests::Server;

const SCHEMA: &str = r#"
type Brand @table @export {
  id: ID @primaryKey
  name: String! @indexed
  products: [Product] @relationship(to: brandId)
}
type Product @table @export(name: "product") @sealed {
  id: Long @primaryKey
  name: String
  brandId: ID @indexed
  brand: Brand @relationship(from: brandId)
  price: Float
  total: Float @computed(from: "price * 2")
  dims: Dims
  tags: [String]
  at: Date
}
type Dims {
  w: Int
  h: Int
}
type Internal @table {
  id: ID @primaryKey
}
"#;

#[test]
fn document_is_valid_and_complete() {
    let (s, _a, root) = Server::with_schema(SCHEMA);
    let mut c = s.client();
    let r = c.get("/openapi");
    assert_eq!(r.status, 200, "{}", r.text());
    let doc = r.json();
    assert_eq!(doc["openapi"], json!("3.0.3"));
    assert_eq!(doc["info"]["title"], json!("HarperDB HTTP REST interface"));
    assert_eq!(doc["servers"][0]["url"], json!("http://127.0.0.1"));
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/Brand/",
        "/Brand/{id}",
        "/Brand/{id}.{property}",
        "/product/",
        "/product/{id}",
    ] {
        assert!(paths.contains_key(p), "missing {p}");
    }
    assert!(!paths.keys().any(|p| p.starts_with("/Internal")));
    // Each operation declares its path parameters itself.
    let names = |op: &Value| -> Vec<String> {
        op["parameters"]
            .as_array()
            .unwrap_or_else(|| panic!("no parameters: {op}"))
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect()
    };
    for method in ["get", "put", "patch", "delete"] {
        assert_eq!(names(&paths["/Brand/{id}"][method]), ["id"], "{method}");
    }
    let property = &paths["/Brand/{id}.{property}"]["get"];
    assert_eq!(names(property), ["id", "property"]);
    assert!(
        property["parameters"][1]["schema"]["enum"]
            .as_array()
            .unwrap()
            .contains(&json!("name"))
    );
    let product = &doc["components"]["schemas"]["Product"];
    assert_eq!(product["additionalProperties"], json!(false));
    assert_eq!(product["properties"]["id"]["format"], json!("int64"));
    assert_eq!(
        product["properties"]["brand"]["$ref"],
        json!("#/components/schemas/Brand")
    );
    assert_eq!(product["properties"]["total"]["readOnly"], json!(true));
    assert!(product.get("required").is_none(), "no empty required list");
    assert_eq!(
        doc["components"]["schemas"]["Brand"]["required"],
        json!(["name"])
    );
    assert_eq!(
        doc["components"]["schemas"]["Brand"]["properties"]["products"]["items"]["$ref"],
        json!("#/components/schemas/Product")
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearerAuth"]["scheme"],
        json!("bearer")
    );
    // Anonymous: refused like every table operation.
    let mut anon = s.client().anonymous();
    assert_eq!(anon.get("/openapi").status, 401);

    let file = root.path().join("openapi.json");
    std::fs::write(&file, &r.body).unwrap();
    let out = Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .expect("python3 runs (tests/run.sh installs openapi-spec-validator)");
    assert!(
        out.status.success(),
        "openapi-spec-validator: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

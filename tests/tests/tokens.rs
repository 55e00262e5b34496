//! Authentication tokens through the real binary (docs/operations.md): JWTs from
//! `create_authentication_tokens`, Bearer on REST and the Operations API with the user's role,
//! `refresh_operation_token`, expiry, and refresh tokens refused as credentials.

use serde_json::json;
use tessera_tests::Server;

const SCHEMA: &str = "type Dog @table @export { id: Int @primaryKey name: String }";

#[test]
fn tokens_authenticate_refresh_and_expire() {
    let (s, _app, _root) = Server::with_schema(SCHEMA);
    let mut admin = s.ops();
    assert_eq!(admin.operation(&json!({"operation": "insert", "table": "Dog", "records": [{"id": 1, "name": "Penny"}]})).0, 200);
    let perm = json!({"data": {"tables": {"Dog": {"read": true, "insert": false, "update": false,
        "delete": false, "attribute_permissions": []}}}});
    assert_eq!(
        admin
            .operation(&json!({"operation": "add_role", "role": "reader", "permission": perm}))
            .0,
        200
    );
    assert_eq!(admin.operation(&json!({"operation": "add_user", "username": "rita", "password": "pw", "role": "reader"})).0, 200);

    // No other credentials needed with username and password in the body.
    let mut anon = s.ops().anonymous();
    let (st, t) = anon.operation(
        &json!({"operation": "create_authentication_tokens", "username": "rita", "password": "pw"}),
    );
    assert_eq!(st, 200, "{t}");
    let (op_token, refresh) = (
        t["operation_token"].as_str().unwrap().to_owned(),
        t["refresh_token"].as_str().unwrap().to_owned(),
    );
    assert_eq!(op_token.split('.').count(), 3, "a JWT");
    let (st, body) = anon.operation(&json!({"operation": "create_authentication_tokens", "username": "rita", "password": "bad"}));
    assert_eq!(
        (st, body["error"].as_str()),
        (401, Some("invalid credentials"))
    );
    let (st, body) = anon.operation(&json!({"operation": "create_authentication_tokens"}));
    assert_eq!((st, body["error"].as_str()), (401, Some("Must login")));
    // With Basic auth and no body credentials: tokens for the caller.
    let (st, t2) = admin.operation(&json!({"operation": "create_authentication_tokens"}));
    assert_eq!(st, 200);
    let admin_token = t2["operation_token"].as_str().unwrap().to_owned();

    // Bearer works on REST and the Operations API, with the user's role.
    let mut rest = s.client().bearer(&op_token);
    assert_eq!(rest.get("/Dog/1").json()["name"], "Penny");
    assert_eq!(rest.put_json("/Dog/1", r#"{"name":"x"}"#).status, 403);
    let mut ops = s.ops().bearer(&op_token);
    let (st, body) = ops.operation(&json!({"operation": "search_by_id", "table": "Dog", "ids": [1], "get_attributes": ["name"]}));
    assert_eq!((st, body), (200, json!([{"name": "Penny"}])));
    let (st, body) = ops.operation(&json!({"operation": "user_info"}));
    assert_eq!((st, body["username"].as_str()), (200, Some("rita")));
    assert_eq!(
        s.client()
            .bearer(&admin_token)
            .put_json("/Dog/2", r#"{"name":"Rex"}"#)
            .status,
        204
    );

    // Garbage and refresh tokens are not credentials.
    let (st, body) = s
        .ops()
        .bearer("garbage")
        .operation(&json!({"operation": "user_info"}));
    assert_eq!((st, body["error"].as_str()), (401, Some("invalid token")));
    assert_eq!(s.client().bearer("garbage").get("/Dog/1").status, 401);
    let (st, _) = s
        .ops()
        .bearer(&refresh)
        .operation(&json!({"operation": "user_info"}));
    assert_eq!(st, 401);
    assert_eq!(s.client().bearer(&refresh).get("/Dog/1").status, 401);

    // Refresh: with the refresh token as Bearer; an operation token instead is a 400.
    let (st, body) = s
        .ops()
        .bearer(&refresh)
        .operation(&json!({"operation": "refresh_operation_token"}));
    assert_eq!(st, 200, "{body}");
    let fresh = body["operation_token"].as_str().unwrap().to_owned();
    assert_eq!(s.client().bearer(&fresh).get("/Dog/1").status, 200);
    let (st, body) = s
        .ops()
        .bearer(&op_token)
        .operation(&json!({"operation": "refresh_operation_token"}));
    assert_eq!(
        (st, body["error"].as_str()),
        (400, Some("'refresh_token' is required"))
    );
    let (st, body) =
        admin.operation(&json!({"operation": "refresh_operation_token", "refresh_token": refresh}));
    assert_eq!(st, 200, "{body}");

    // Expiry: a token that lives one second.
    let (_, short) = anon.operation(&json!({"operation": "create_authentication_tokens", "username": "rita", "password": "pw", "expires_in": 1}));
    let short = short["operation_token"].as_str().unwrap().to_owned();
    assert_eq!(s.client().bearer(&short).get("/Dog/1").status, 200);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (st, body) = s
        .ops()
        .bearer(&short)
        .operation(&json!({"operation": "user_info"}));
    assert_eq!((st, body["error"].as_str()), (401, Some("token expired")));
    assert_eq!(s.client().bearer(&short).get("/Dog/1").status, 401);

    // A deactivated user's tokens stop working at once.
    assert_eq!(
        admin
            .operation(&json!({"operation": "alter_user", "username": "rita", "active": false}))
            .0,
        200
    );
    assert_eq!(s.client().bearer(&fresh).get("/Dog/1").status, 401);
    // No secret in the server's output.
    assert!(!s.output().contains(&op_token) && !s.output().contains("pw\""));
}

//! Operations endpoints: liveness, readiness and the API description. None needs a key.

use reqwest::Method;

use crate::helpers::*;

#[tokio::test]
async fn health_and_readiness_answer_without_a_key() {
    let app = spawn_app().await;
    let h = fetch(app.anon(Method::GET, "/healthz")).await;
    h.assert_status(200);
    assert_eq!(h.json["status"], "ok");
    let r = fetch(app.anon(Method::GET, "/readyz")).await;
    r.assert_status(200);
    assert_eq!(r.json["status"], "ready");
    assert_eq!(r.json["checks"]["database"], "ok");
}

#[tokio::test]
async fn the_openapi_document_describes_the_api() {
    let app = spawn_app().await;
    let r = fetch(app.anon(Method::GET, "/openapi.json")).await;
    r.assert_status(200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{:?}",
        r.header("content-type")
    );
    let version = r.str("openapi");
    assert!(version.starts_with("3.1"), "openapi {version}");
    let paths = r.json["paths"].as_object().expect("paths");
    for p in [
        "/v1/verifications",
        "/v1/verifications/{id}",
        "/v1/verifications/{id}/check",
        "/v1/verifications/{id}/cancel",
        "/v1/verification-checks",
        "/v1/services",
        "/v1/services/{id}",
        "/v1/accounts/{account_ref}/phone",
        "/healthz",
        "/readyz",
    ] {
        assert!(
            paths.contains_key(p),
            "{p} missing from the OpenAPI document"
        );
    }
    assert!(paths["/v1/verifications"]["post"]["responses"]["201"].is_object());
    assert!(paths["/v1/verifications"]["post"]["responses"]["403"].is_object());
    assert!(r.json["components"]["securitySchemes"]["api_key"].is_object());
    let schemas = r.json["components"]["schemas"]
        .as_object()
        .expect("schemas");
    for s in [
        "AbuseInput",
        "AbusePolicy",
        "GeoPolicy",
        "GeoRule",
        "Limits",
        "RateSpec",
    ] {
        assert!(schemas.contains_key(s), "schema {s} missing");
    }
}

#[tokio::test]
async fn the_reference_page_lists_the_operations() {
    let app = spawn_app().await;
    let r = fetch(app.anon(Method::GET, "/docs")).await;
    r.assert_status(200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/html")),
        "{:?}",
        r.header("content-type")
    );
    let html = &r.text;
    assert!(html.starts_with("<!doctype html>"), "not an HTML page");
    // Every operation of the OpenAPI document is listed with its method and path.
    let doc = fetch(app.anon(Method::GET, "/openapi.json")).await;
    let mut listed = 0;
    for (path, item) in doc.json["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let entry = format!("{method}</span> <code>{path}</code>");
            assert!(html.contains(&entry), "/docs does not list {method} {path}");
            listed += 1;
        }
    }
    assert!(listed >= 14, "only {listed} operations");
    // Self-contained: no scripts, no outside assets.
    assert!(!html.contains("<script"), "the reference page runs scripts");
    assert!(
        !html.contains("https://"),
        "the reference page loads outside assets"
    );
}

//! The OpenAPI 3.1 document, generated from the handlers' annotations, and a
//! self-contained HTML reference rendered from it (no scripts, no outside assets).

use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{accounts, admin, health, metrics, services, verifications};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("rfk_…")
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ringfence API",
        description = "Phone verification with the number encrypted at rest. Errors: `{\"error\": {\"code\", \"message\", \"request_id\"}}` with a stable `code`; see docs/api.md for the list.",
    ),
    paths(
        verifications::start,
        verifications::get,
        verifications::check,
        verifications::check_by_number,
        verifications::cancel,
        services::create,
        services::list,
        services::get,
        services::update,
        accounts::bind,
        accounts::get,
        accounts::unbind,
        admin::decisions,
        admin::stats,
        admin::add_list_entry,
        admin::get_list,
        admin::remove_list_entry,
        health::healthz,
        health::readyz,
        metrics::metrics,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "verifications", description = "Start and check phone verifications"),
        (name = "services", description = "Verify service configuration (admin scope)"),
        (name = "accounts", description = "Bind verified numbers to the integrator's accounts"),
        (name = "admin", description = "What the anti-abuse engine decided; ban and safe lists (admin scope)"),
        (name = "operations", description = "Health and readiness"),
    )
)]
pub struct ApiDoc;

pub fn spec() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

pub async fn document() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-cache")], Json(spec()))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A readable page of every operation: method, path, summary, parameters, body schema
/// and responses, linked to the JSON document for the details.
pub async fn reference_page() -> Html<String> {
    let doc = serde_json::to_value(spec()).unwrap_or_default();
    let mut out = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>ringfence API reference</title>\
         <style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}\
         h2{margin-top:2.5rem;border-bottom:1px solid #ddd}.op{margin:1.2rem 0;padding:.8rem 1rem;border:1px solid #e3e3e3;border-radius:6px}\
         .m{display:inline-block;min-width:4.5rem;font-weight:bold;text-transform:uppercase}code{background:#f5f5f5;padding:0 .2rem}\
         td{padding:.15rem .6rem;vertical-align:top}</style></head><body>",
    );
    let title = doc
        .pointer("/info/title")
        .and_then(|v| v.as_str())
        .unwrap_or("API");
    let version = doc
        .pointer("/info/version")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    out.push_str(&format!(
        "<h1>{} <small>{}</small></h1>",
        esc(title),
        esc(version)
    ));
    if let Some(d) = doc.pointer("/info/description").and_then(|v| v.as_str()) {
        out.push_str(&format!("<p>{}</p>", esc(d)));
    }
    out.push_str("<p>Authenticate with <code>Authorization: Bearer rfk_…</code>. Machine-readable document: <a href=\"/openapi.json\">/openapi.json</a>.</p>");
    let Some(paths) = doc.get("paths").and_then(|p| p.as_object()) else {
        return Html(out);
    };
    let mut by_tag: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (path, item) in paths {
        let Some(ops) = item.as_object() else {
            continue;
        };
        for (method, op) in ops {
            let tag = op
                .pointer("/tags/0")
                .and_then(|t| t.as_str())
                .unwrap_or("other")
                .to_owned();
            let mut html = format!(
                "<div class=\"op\"><span class=\"m\">{}</span> <code>{}</code>",
                esc(method),
                esc(path)
            );
            for key in ["summary", "description"] {
                if let Some(s) = op.get(key).and_then(|s| s.as_str()) {
                    html.push_str(&format!("<p>{}</p>", esc(s)));
                }
            }
            if let Some(params) = op.get("parameters").and_then(|p| p.as_array()) {
                html.push_str("<table>");
                for p in params {
                    let name = p.get("name").and_then(|v| v.as_str()).unwrap_or("");
                    let loc = p.get("in").and_then(|v| v.as_str()).unwrap_or("");
                    let d = p.get("description").and_then(|v| v.as_str()).unwrap_or("");
                    html.push_str(&format!(
                        "<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                        esc(name),
                        esc(loc),
                        esc(d)
                    ));
                }
                html.push_str("</table>");
            }
            if let Some(r) = op
                .pointer("/requestBody/content/application~1json/schema/$ref")
                .and_then(|v| v.as_str())
            {
                let name = r.rsplit('/').next().unwrap_or(r);
                html.push_str(&format!("<p>Body: <code>{}</code></p>", esc(name)));
            }
            if let Some(resps) = op.get("responses").and_then(|r| r.as_object()) {
                html.push_str("<table>");
                for (code, r) in resps {
                    let d = r.get("description").and_then(|v| v.as_str()).unwrap_or("");
                    html.push_str(&format!(
                        "<tr><td><b>{}</b></td><td>{}</td></tr>",
                        esc(code),
                        esc(d)
                    ));
                }
                html.push_str("</table>");
            }
            html.push_str("</div>");
            by_tag.entry(tag).or_default().push(html);
        }
    }
    for (tag, ops) in by_tag {
        out.push_str(&format!("<h2>{}</h2>", esc(&tag)));
        for op in ops {
            out.push_str(&op);
        }
    }
    if let Some(schemas) = doc
        .pointer("/components/schemas")
        .and_then(|s| s.as_object())
    {
        out.push_str("<h2>Schemas</h2>");
        for (name, schema) in schemas {
            out.push_str(&format!("<div class=\"op\"><b>{}</b><table>", esc(name)));
            if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
                for (prop, s) in props {
                    let ty = s
                        .get("type")
                        .map(|t| t.to_string())
                        .unwrap_or_else(|| "object".into());
                    let d = s.get("description").and_then(|v| v.as_str()).unwrap_or("");
                    out.push_str(&format!(
                        "<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                        esc(prop),
                        esc(&ty),
                        esc(d)
                    ));
                }
            }
            out.push_str("</table></div>");
        }
    }
    out.push_str("</body></html>");
    Html(out)
}

//! Extractors whose rejections speak our error format: JSON bodies (strict: unknown
//! fields, trailing data and wrong types refused, with messages that name the field
//! but never echo a value) and API-key authentication with scopes.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::{ApiError, AppState};
use crate::store::Scope;

/// A JSON request body, parsed strictly into `T`.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|m| {
                let m = m.trim();
                m.eq_ignore_ascii_case("application/json")
                    || m.to_ascii_lowercase().ends_with("+json")
            });
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::BodyTooLarge
            } else {
                ApiError::InvalidRequest("could not read the request body".into())
            }
        })?;
        // Every request body is a JSON object. serde would also fill a struct from an
        // array, field by field in declaration order; refuse that, so field order
        // never becomes part of the API.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
            return Err(ApiError::InvalidRequest(
                "wrong type: the body must be a JSON object".into(),
            ));
        }
        parse_json(&bytes).map(ApiJson)
    }
}

/// A path parameter, whose rejection (percent-encoded bytes that are not UTF-8, for
/// one) speaks our error format instead of axum's plain text.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Self(p.0))
            .map_err(|_| {
                ApiError::InvalidRequest(
                    "the URL path is malformed (percent-encoded parts must be UTF-8)".into(),
                )
            })
    }
}

/// Parses a JSON document strictly, turning serde's errors into messages that name the
/// place of the problem but never repeat the offending value.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        describe(&path, &inner)
    })?;
    de.end().map_err(|e| {
        ApiError::InvalidJson(format!(
            "trailing data at line {} column {}",
            e.line(),
            e.column()
        ))
    })?;
    Ok(value)
}

fn safe_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 40
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn describe(path: &str, e: &serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => ApiError::InvalidJson(format!(
            "syntax error at line {} column {}",
            e.line(),
            e.column()
        )),
        Category::Data => {
            let msg = e.to_string();
            let field = |prefix: &str| {
                msg.strip_prefix(prefix)
                    .and_then(|rest| rest.split('`').next())
                    .filter(|name| safe_name(name))
                    .map(str::to_owned)
            };
            let at = if path == "." || path.is_empty() {
                String::new()
            } else {
                format!(" at `{path}`")
            };
            let text = if msg.starts_with("unknown field") {
                // The path ends with the unknown field itself; name only where it sits.
                let parent = path.rsplit_once('.').map(|(p, _)| p).unwrap_or("");
                let at = if parent.is_empty() {
                    String::new()
                } else {
                    format!(" in `{parent}`")
                };
                match field("unknown field `") {
                    Some(name) => format!("unknown field `{name}`{at}"),
                    None => format!("unknown field{at}"),
                }
            } else if msg.starts_with("missing field") {
                format!(
                    "missing field `{}`{at}",
                    field("missing field `").unwrap_or_default()
                )
            } else if msg.starts_with("unknown variant") {
                format!("unsupported value{at}")
            } else if msg.starts_with("invalid length") {
                format!("wrong number of elements{at}")
            } else {
                format!("wrong type or value{at}")
            };
            ApiError::InvalidRequest(text)
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key_id: String,
    pub scopes: Vec<Scope>,
}

async fn authenticate(parts: &Parts, state: &AppState, scope: Scope) -> Result<Caller, ApiError> {
    let presented = parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or(ApiError::Unauthorized)?;
    let caller = state
        .api_keys
        .authenticate(presented, state.clock.now())
        .await?
        .ok_or(ApiError::Unauthorized)?;
    if !caller.scopes.contains(&scope) {
        return Err(ApiError::Forbidden(scope.as_str()));
    }
    Ok(caller)
}

/// A caller holding the `verify` scope.
pub struct VerifyCaller(pub Caller);

/// A caller holding the `admin` scope.
pub struct AdminCaller(pub Caller);

impl FromRequestParts<AppState> for VerifyCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        authenticate(parts, state, Scope::Verify).await.map(Self)
    }
}

impl FromRequestParts<AppState> for AdminCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        authenticate(parts, state, Scope::Admin).await.map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        to: String,
        n: Option<u32>,
    }

    fn err(json: &str) -> String {
        parse_json::<Body>(json.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_place_but_never_echo_values() {
        assert_eq!(err(r#"{"to":"x","extra":1}"#), "unknown field `extra`");
        assert_eq!(err(r#"{"to":"x","+447700900123":1}"#), "unknown field");
        assert_eq!(err(r#"{"n":1}"#), "missing field `to`");
        let e = err(r#"{"to":"x","n":"+447700900123"}"#);
        assert_eq!(e, "wrong type or value at `n`");
        assert!(err(r#"{"to":"#).starts_with("malformed JSON"));
        assert!(err(r#"{"to":"x"} {}"#).contains("trailing"));
    }
}

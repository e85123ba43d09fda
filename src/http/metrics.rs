//! `GET /metrics`: counters in the Prometheus text format. Labels are codes (actions,
//! reasons, outcomes), never personal data; the endpoint needs no key, like `/healthz`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::app::AppState;

/// The counters of one instance since it started.
#[derive(Debug, Default)]
pub struct Metrics {
    decisions: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    checks: Mutex<BTreeMap<&'static str, u64>>,
}

impl Metrics {
    /// One anti-abuse decision: `action` and its first reason (`none` for an allow).
    pub fn decision(&self, action: &'static str, reason: &'static str) {
        *self
            .decisions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((action, reason))
            .or_default() += 1;
    }

    /// One check's outcome: `approved`, `wrong`, `refused`, `rate_limited`, `not_found`.
    pub fn check(&self, outcome: &'static str) {
        *self
            .checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(outcome)
            .or_default() += 1;
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP ringfence_send_decisions_total Anti-abuse decisions on sends, by action and reason.\n");
        out.push_str("# TYPE ringfence_send_decisions_total counter\n");
        for ((action, reason), n) in self
            .decisions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "ringfence_send_decisions_total{{action=\"{action}\",reason=\"{reason}\"}} {n}"
            );
        }
        out.push_str("# HELP ringfence_checks_total Code checks, by outcome.\n");
        out.push_str("# TYPE ringfence_checks_total counter\n");
        for (outcome, n) in self.checks.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            let _ = writeln!(out, "ringfence_checks_total{{outcome=\"{outcome}\"}} {n}");
        }
        out
    }
}

#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub async fn metrics(State(st): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(),
    )
}

//! The console: the Firewall page people use, the JSON API it calls, its
//! live updates, and the service's `/metrics` and `/healthz`, on one HTTP
//! listener (`--http-listen`).
//!
//! The JSON API is a door onto the same `FirewallService` as gRPC: each route
//! parses protobuf JSON into the gRPC request message, authenticates the
//! caller from the same headers the gRPC interceptor reads, and calls the
//! gRPC handler, so validation, authorization, spans and the error mapping
//! exist once. The page is plain HTML, CSS and JavaScript compiled into the
//! binary; it sends a bearer token as a header (kept in sessionStorage),
//! never a cookie, so no request is made on a user's behalf without them.

mod assets;
mod guard;
mod json_api;
mod live;
mod server;

use std::sync::Arc;

use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use cassette_auth::{Authenticator, Caller};
use cassette_proto::ProtoJson;
use tonic::Status;

use crate::grpc::status::http_error;
use crate::grpc::FirewallApi;
use cassette_service::limits::{Limits, Slots};
use cassette_service::Store;

pub use guard::Guard;
pub use server::serve;

/// What every console route shares.
pub struct Console {
    api: Arc<FirewallApi>,
    store: Arc<Store>,
    authenticator: Arc<Authenticator>,
    json: ProtoJson,
    live_streams: Arc<Slots>,
}

impl Console {
    pub fn new(
        api: Arc<FirewallApi>,
        store: Arc<Store>,
        authenticator: Arc<Authenticator>,
        limits: &Limits,
    ) -> Result<Arc<Self>, cassette_proto::JsonError> {
        Ok(Arc::new(Self {
            api,
            store,
            authenticator,
            json: ProtoJson::new()?,
            live_streams: Slots::new(
                "console live streams",
                limits.max_follow_streams_per_principal,
            ),
        }))
    }

    /// The caller, from the same headers the gRPC interceptor reads (a
    /// bearer token, and in development mode `x-actor`); no certificate.
    fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, Status> {
        crate::grpc::caller::authenticate(&self.authenticator, headers, None)
    }

    /// A gRPC answer as the JSON API's: the message in protobuf JSON, or the
    /// status as an HTTP error.
    fn answer<T: prost::Message>(&self, name: &str, result: Result<T, Status>) -> Response {
        match result.and_then(|message| {
            self.json
                .to_string(name, &message)
                .map_err(crate::grpc::status::internal)
        }) {
            Ok(body) => json_response(axum::http::StatusCode::OK, body),
            Err(status) => error_response(&status),
        }
    }
}

fn json_response(code: axum::http::StatusCode, body: String) -> Response {
    (
        code,
        [
            (axum::http::header::CONTENT_TYPE, "application/json"),
            (axum::http::header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// A status as the JSON API's error: the HTTP code `status.rs` maps it to,
/// and `{"error": {code, message, fieldViolations, resource}}`.
fn error_response(status: &Status) -> Response {
    let (code, body) = http_error(status);
    json_response(
        axum::http::StatusCode::from_u16(code)
            .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR),
        body.to_string(),
    )
}

/// Every route of the console listener, behind `guard`.
pub fn router(console: Arc<Console>, guard: Guard) -> Router {
    Router::new()
        .merge(assets::routes())
        .merge(json_api::routes())
        .route("/api/v1/firewalls/{instance_id}/live", get(live::stream))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(console)
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(guard),
            guard::check,
        ))
}

/// 200 SERVING while the service takes changes; 503 NOT_SERVING when it is
/// stopping, its log failed, or it is read-only, with the reason in
/// development mode only (in secured mode anyone may ask, and the reason
/// names records and files: it is in the log and on /metrics).
async fn healthz(axum::extract::State(console): axum::extract::State<Arc<Console>>) -> Response {
    let store = &console.store;
    let failure = store.failure().borrow().clone();
    let reason = match (failure, store.read_only(), store.is_stopping()) {
        (Some(reason), _, _) => Some(format!("NOT_SERVING: the event log failed: {reason}")),
        (None, Err(read_only), _) => Some(format!("NOT_SERVING: {read_only}")),
        (None, Ok(()), true) => Some("NOT_SERVING: stopping".to_owned()),
        (None, Ok(()), false) => None,
    };
    let reason = reason.map(|reason| {
        if console.authenticator.is_development() {
            reason
        } else {
            "NOT_SERVING".to_owned()
        }
    });
    match reason {
        None => (axum::http::StatusCode::OK, "SERVING\n").into_response(),
        Some(reason) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!("{reason}\n"),
        )
            .into_response(),
    }
}

/// The service's metrics, for any principal (Prometheus sends a bearer
/// token): they tell how the service is used and how it is failing.
async fn metrics(
    axum::extract::State(console): axum::extract::State<Arc<Console>>,
    headers: HeaderMap,
) -> Response {
    if let Err(status) = console.authenticate(&headers) {
        return error_response(&status);
    }
    cassette_metrics::respond(console.store.metrics().render()).await
}

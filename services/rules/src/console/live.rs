//! Live updates for an open Firewall page: server-sent events carrying the
//! instance's whole firewall (rules, each rule's status, the enforcer's
//! state) each time a change commits or its enforcer's sync state moves.
//! The page reads them with `fetch` (EventSource cannot send the bearer
//! header), so it never polls.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use cassette_auth::Action;
use cassette_model::InstanceId;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::grpc::caller::Reauthorized;
use crate::grpc::status as grpc_status;

use super::{error_response, Console};

/// A comment line this often keeps proxies and the page's dead-connection
/// check from closing an idle stream.
const HEARTBEAT: Duration = Duration::from_secs(15);

/// `GET /api/v1/firewalls/{id}/live`: `event: firewall` with the firewall
/// as protobuf JSON, first at once and then after every change; `event:
/// error` with the JSON API's error (the firewall was deleted, the caller
/// lost access) ends it, and so does the service stopping.
pub async fn stream(
    State(console): State<Arc<Console>>,
    Path(instance_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let caller = match console.authenticate(&headers) {
        Ok(caller) => caller,
        Err(status) => return error_response(&status),
    };
    // Authorized, and the instance exists, before any sync state is kept for it.
    if let Err(status) = console.firewall(&caller, &instance_id).await {
        return error_response(&status);
    }
    let slot = match console.live_streams.acquire(caller.actor().as_str()) {
        Ok(slot) => slot,
        Err(limit) => return error_response(&grpc_status::limit(limit)),
    };
    let id = match InstanceId::parse(&instance_id) {
        Ok(id) => id,
        Err(error) => return error_response(&grpc_status::internal(error)),
    };
    // Checked again after each policy reload: a caller who lost access gets
    // an error event, not the next change.
    let mut reauthorized = Reauthorized::new(console.authenticator.clone(), caller.clone());
    let board = console.store.board();
    let mut committed = board.watch_committed(&id);
    let mut status = board.watch_status(&id);
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(4);
    let span = tracing::info_span!("console_live", instance_id = %instance_id, principal = %caller);
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            let _slot = slot;
            let stopping = console.store.stopping();
            tokio::pin!(stopping);
            let mut heartbeat =
                tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
            loop {
                // Read after subscribing: nothing committed since is missed.
                committed.borrow_and_update();
                status.borrow_and_update();
                let allowed = reauthorized
                    .recheck(|c| c.authorize(Action::Read, "GetFirewall", &instance_id));
                let read = match allowed {
                    Ok(()) => console.firewall(reauthorized.caller(), &instance_id).await,
                    Err(status) => Err(status),
                };
                let event = match read {
                    Ok(firewall) => match console.json.to_string("Firewall", &firewall) {
                        Ok(json) => format!("event: firewall\ndata: {json}\n\n"),
                        Err(error) => error_event(&grpc_status::internal(error)),
                    },
                    Err(status) => error_event(&status),
                };
                let last = event.starts_with("event: error");
                if tx.send(Ok(Bytes::from(event))).await.is_err() || last {
                    return;
                }
                loop {
                    tokio::select! {
                        () = &mut stopping => {
                            let _ = tx.send(Ok(Bytes::from(error_event(&grpc_status::stopping())))).await;
                            return;
                        }
                        () = tx.closed() => return,
                        changed = committed.changed() => if changed.is_err() { return } else { break },
                        changed = status.changed() => if changed.is_err() { return } else { break },
                        () = reauthorized.changed() => break,
                        _ = heartbeat.tick() => {
                            if tx.send(Ok(Bytes::from_static(b": keepalive\n\n"))).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        },
        span,
    ));
    (
        [
            (axum::http::header::CONTENT_TYPE, "text/event-stream"),
            (axum::http::header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response()
}

fn error_event(status: &Status) -> String {
    let (_, body) = grpc_status::http_error(status);
    format!("event: error\ndata: {body}\n\n")
}

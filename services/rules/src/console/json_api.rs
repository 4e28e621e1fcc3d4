//! The JSON API: REST-shaped routes onto `FirewallService`. A request is
//! protobuf JSON of the gRPC request message (the body, or the query string
//! for GET and DELETE), with the instance and rule ids taken from the path.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, patch, post};
use axum::Router;
use cassette_model::ValidationError;
use cassette_proto::pb;
use cassette_proto::pb::firewall_service_server::FirewallService;
use serde_json::{Map, Value};
use tonic::Status;

use super::{json_response, Console};
use crate::grpc::status::invalid;
use crate::grpc::FirewallApi;

pub fn routes() -> Router<Arc<Console>> {
    Router::new()
        .route("/api/v1/whoami", get(whoami))
        .route(
            "/api/v1/firewalls",
            get(list_firewalls).post(create_firewall),
        )
        .route(
            "/api/v1/firewalls/{instance_id}",
            get(get_firewall).delete(delete_firewall),
        )
        .route("/api/v1/firewalls/{instance_id}/rules", post(add_rule))
        .route(
            "/api/v1/firewalls/{instance_id}/rules/{rule_id}",
            patch(update_rule).delete(delete_rule),
        )
        .route(
            "/api/v1/firewalls/{instance_id}/confirm",
            post(confirm_change),
        )
        .route(
            "/api/v1/firewalls/{instance_id}/apply",
            post(apply_firewall),
        )
        .route("/api/v1/firewalls/{instance_id}/sync", get(wait_for_sync))
        .route("/api/v1/firewalls/{instance_id}/diagnose", get(diagnose))
}

type Params = Query<HashMap<String, String>>;

/// A path parameter: the request field it sets (protobuf and JSON spelling).
struct PathField(&'static str, &'static str, String);

fn instance(id: String) -> PathField {
    PathField("instance_id", "instanceId", id)
}

fn rule(id: String) -> PathField {
    PathField("rule_id", "ruleId", id)
}

impl Console {
    /// The gRPC request message from a JSON object body (or the query
    /// parameters) and the path's ids, which win over the body's.
    fn request<T: prost::Message + Default>(
        &self,
        name: &str,
        body: &[u8],
        query: HashMap<String, String>,
        path: Vec<PathField>,
    ) -> Result<T, Status> {
        let mut object = if body.iter().all(u8::is_ascii_whitespace) {
            Map::new()
        } else {
            match serde_json::from_slice::<Value>(body) {
                Ok(Value::Object(object)) => object,
                Ok(_) => {
                    return Err(invalid(ValidationError::new(
                        "body",
                        format!("must be a JSON object (a {name})"),
                    )))
                }
                Err(error) => {
                    return Err(invalid(ValidationError::new(
                        "body",
                        format!("is not JSON: {error}"),
                    )))
                }
            }
        };
        for (key, value) in query {
            object.insert(key, Value::String(value));
        }
        for PathField(proto_name, json_name, value) in path {
            object.remove(proto_name);
            object.insert(json_name.to_owned(), Value::String(value));
        }
        let json = Value::Object(object).to_string();
        self.json
            .from_json(name, json.as_bytes())
            .map_err(|error| match error {
                cassette_proto::JsonError::Parse { field, message } => {
                    let field = if field.is_empty() {
                        "body".to_owned()
                    } else {
                        field
                    };
                    invalid(ValidationError::new(field, message))
                }
                other => crate::grpc::status::internal(other),
            })
    }

    /// Authenticates, then hands the request to the gRPC handler as the
    /// caller, and answers with its `response` message or its status.
    async fn call<Req, Resp, Fut>(
        &self,
        headers: &HeaderMap,
        request: impl FnOnce() -> Result<Req, Status>,
        response: &str,
        method: impl FnOnce(Arc<FirewallApi>, tonic::Request<Req>) -> Fut,
    ) -> Response
    where
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
        Resp: prost::Message,
    {
        let result = async {
            // Who asks comes first: an unauthenticated caller learns nothing
            // about its request, not even that it is malformed.
            let caller = self.authenticate(headers)?;
            let mut request = tonic::Request::new(request()?);
            request.extensions_mut().insert(caller);
            method(self.api.clone(), request)
                .await
                .map(tonic::Response::into_inner)
        }
        .await;
        self.answer(response, result)
    }

    /// The instance's firewall as `caller` may see it (authorized each time).
    pub(super) async fn firewall(
        &self,
        caller: &cassette_auth::Caller,
        instance_id: &str,
    ) -> Result<pb::Firewall, Status> {
        let mut request = tonic::Request::new(pb::GetFirewallRequest {
            instance_id: instance_id.to_owned(),
            ..Default::default()
        });
        request.extensions_mut().insert(caller.clone());
        self.api
            .get_firewall(request)
            .await
            .map(tonic::Response::into_inner)
    }
}

/// Who the console's caller is: the page shows it, and asks for a token
/// when it is refused.
async fn whoami(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    match c.authenticate(&headers) {
        Ok(caller) => json_response(
            axum::http::StatusCode::OK,
            serde_json::json!({
                "actor": caller.actor().as_str(),
                "caller": caller.describe(),
                "development": c.authenticator.is_development(),
            })
            .to_string(),
        ),
        Err(status) => super::error_response(&status),
    }
}

async fn list_firewalls(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Query(query): Params,
) -> Response {
    let request = || c.request("ListFirewallsRequest", b"", query, vec![]);
    c.call(
        &headers,
        request,
        "ListFirewallsResponse",
        |api, r| async move { api.list_firewalls(r).await },
    )
    .await
}

async fn create_firewall(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = || c.request("CreateFirewallRequest", &body, HashMap::new(), vec![]);
    c.call(&headers, request, "Firewall", |api, r| async move {
        api.create_firewall(r).await
    })
    .await
}

async fn get_firewall(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let request = || {
        c.request(
            "GetFirewallRequest",
            b"",
            HashMap::new(),
            vec![instance(id)],
        )
    };
    c.call(&headers, request, "Firewall", |api, r| async move {
        api.get_firewall(r).await
    })
    .await
}

async fn delete_firewall(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Params,
) -> Response {
    let request = || c.request("DeleteFirewallRequest", b"", query, vec![instance(id)]);
    c.call(
        &headers,
        request,
        "DeleteFirewallResponse",
        |api, r| async move { api.delete_firewall(r).await },
    )
    .await
}

async fn add_rule(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let request = || c.request("AddRuleRequest", &body, HashMap::new(), vec![instance(id)]);
    c.call(&headers, request, "Firewall", |api, r| async move {
        api.add_rule(r).await
    })
    .await
}

async fn update_rule(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path((id, rule_id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let request = || {
        c.request(
            "UpdateRuleRequest",
            &body,
            HashMap::new(),
            vec![instance(id), rule(rule_id)],
        )
    };
    c.call(&headers, request, "Firewall", |api, r| async move {
        api.update_rule(r).await
    })
    .await
}

async fn delete_rule(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path((id, rule_id)): Path<(String, String)>,
    Query(query): Params,
) -> Response {
    let request = || {
        c.request(
            "DeleteRuleRequest",
            b"",
            query,
            vec![instance(id), rule(rule_id)],
        )
    };
    c.call(&headers, request, "Firewall", |api, r| async move {
        api.delete_rule(r).await
    })
    .await
}

async fn confirm_change(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let request = || {
        c.request(
            "ConfirmChangeRequest",
            &body,
            HashMap::new(),
            vec![instance(id)],
        )
    };
    c.call(&headers, request, "Firewall", |api, r| async move {
        api.confirm_change(r).await
    })
    .await
}

async fn apply_firewall(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let request = || {
        c.request(
            "ApplyFirewallRequest",
            &body,
            HashMap::new(),
            vec![instance(id)],
        )
    };
    c.call(
        &headers,
        request,
        "ApplyFirewallResponse",
        |api, r| async move { api.apply_firewall(r).await },
    )
    .await
}

async fn wait_for_sync(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Params,
) -> Response {
    let request = || c.request("WaitForSyncRequest", b"", query, vec![instance(id)]);
    c.call(&headers, request, "SyncStatus", |api, r| async move {
        api.wait_for_sync(r).await
    })
    .await
}

async fn diagnose(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Params,
) -> Response {
    let request = || c.request("DiagnoseRequest", b"", query, vec![instance(id)]);
    c.call(&headers, request, "Diagnosis", |api, r| async move {
        api.diagnose(r).await
    })
    .await
}

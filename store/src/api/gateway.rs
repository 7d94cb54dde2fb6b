//! etcd 3.4's HTTP/JSON gateway (grpc-gateway v1), on the client port next to
//! gRPC: this is how APISIX (lua-resty-etcd) talks to the store.
//!
//! Every route calls the same service implementation as gRPC does; only the
//! encoding differs. JSON follows protobuf-JSON through the pbjson impls of
//! `cairn-proto`: proto field names out, proto or lowerCamelCase names in,
//! int64 as strings (numbers accepted), bytes in base64, enums by name or
//! number, default values omitted. Streams (`/v3/watch`, `/v3/lease/keepalive`)
//! answer with one `{"result":…}` object per line; closing the connection
//! cancels them. Bodies are read within the request limit
//! ([`super::json_frames`]). Errors are `{"error","message","code"}` with etcd's HTTP
//! status for the gRPC code.

use std::future::Future;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use cairn_proto::etcdserverpb::auth_server::Auth;
use cairn_proto::etcdserverpb::cluster_server::Cluster;
use cairn_proto::etcdserverpb::kv_server::Kv;
use cairn_proto::etcdserverpb::lease_server::Lease;
use cairn_proto::etcdserverpb::maintenance_server::Maintenance;
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Code, Status};

use super::auth::AuthService;
use super::bulk::Bulk;
use super::cluster::ClusterService;
use super::json_frames::{read_body, Chunks, Framer};
use super::kv::KvService;
use super::lease::LeaseService;
use super::maintenance::{MaintenanceService, CLUSTER_VERSION, SERVER_VERSION};
use super::txn_screen::JsonOps;
use super::watch::WatchService;
use crate::error::EtcdError;
use cairn_proto::etcdserverpb::TxnRequest;

/// The gRPC services the gateway forwards to.
#[derive(Clone)]
pub struct Services {
    pub kv: Arc<KvService>,
    pub lease: Arc<LeaseService>,
    pub watch: Arc<WatchService>,
    pub cluster: Arc<ClusterService>,
    pub maintenance: Arc<MaintenanceService>,
    pub auth: Arc<AuthService>,
    /// The largest JSON body of a unary call, and of each message of a
    /// stream: answered with etcd's `ResourceExhausted` beyond it.
    pub body_limit: usize,
    /// Where large bodies are decoded (see [`decode_large`]).
    pub bulk: Bulk,
}

/// Bodies from this size on are decoded off the request workers.
const LARGE_BODY: usize = 64 << 10;

/// etcd's HTTP status for a gRPC code (grpc-gateway v1's mapping).
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn error_body(s: &Status) -> serde_json::Value {
    serde_json::json!({"error": s.message(), "message": s.message(), "code": s.code() as i32})
}

fn error_response(s: Status) -> Response {
    (http_status(s.code()), axum::Json(error_body(&s))).into_response()
}

fn json_response<T: Serialize>(v: &T) -> Response {
    match serde_json::to_vec(v) {
        Ok(b) => ([(header::CONTENT_TYPE, "application/json")], b).into_response(),
        Err(e) => error_response(Status::internal(e.to_string())),
    }
}

/// Decodes a request body; an empty body is the default message.
fn decode<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, Status> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// What a unary request is refused for before its service sees it (etcd
/// checks a txn's shape and size before auth).
trait Screen<T>: Send + 'static {
    /// On each piece of the raw body as it arrives, before anything is
    /// parsed: a look at the bytes can cost far less than the parse it
    /// saves, and a refusal drops what was kept (see [`read_body`]).
    fn arriving(&mut self, _part: &[u8]) -> Option<Status> {
        None
    }

    /// On the parsed message.
    fn parsed(self, _req: &T) -> Result<(), Status>;
}

/// Requests refused only by their service.
struct NoScreen;

impl<T> Screen<T> for NoScreen {
    fn parsed(self, _req: &T) -> Result<(), Status> {
        Ok(())
    }
}

/// A txn: its top-level operation count from the bytes as they arrive, then
/// everything [`KvService::screen_txn`] checks.
struct TxnScreen(Arc<KvService>, JsonOps);

impl TxnScreen {
    fn new(kv: &Arc<KvService>) -> TxnScreen {
        TxnScreen(kv.clone(), JsonOps::new(kv.node.max_txn_ops))
    }
}

impl Screen<TxnRequest> for TxnScreen {
    fn arriving(&mut self, part: &[u8]) -> Option<Status> {
        self.1.over(part).then(|| EtcdError::TooManyOps.into())
    }

    fn parsed(self, req: &TxnRequest) -> Result<(), Status> {
        self.0.screen_txn(req)
    }
}

/// Decodes a body, screened before and after (see [`Screen`]); a body of
/// [`LARGE_BODY`] or more is screened, joined, parsed and, if refused,
/// dropped on the low-priority thread of [`super::bulk`], so none of that
/// holds up small requests.
async fn decode_large<T, S>(body: Chunks, bulk: &Bulk, screen: S) -> Result<T, Status>
where
    T: DeserializeOwned + Default + Send + 'static,
    S: Screen<T>,
{
    let small = body.len() < LARGE_BODY;
    let work = move || {
        let req = decode::<T>(&body.join())?;
        screen.parsed(&req)?;
        Ok(req)
    };
    if small {
        return work();
    }
    bulk.run(work)
        .await
        .unwrap_or_else(|| Err(Status::internal("decoding the request body failed")))
}

/// Carries the raw `Authorization` header (etcd's token) as gRPC metadata.
fn grpc_request<T>(msg: T, headers: &HeaderMap) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
    {
        r.metadata_mut().insert("token", v);
    }
    r
}

/// The request metadata a streaming route hands to its service.
fn metadata(headers: &HeaderMap) -> tonic::metadata::MetadataMap {
    grpc_request((), headers).metadata().clone()
}

/// A unary call: the body read within the limit, decoded, screened
/// ([`decode_large`]), then handed to `call`.
async fn unary<Req, Resp, S, F, Fut>(
    headers: HeaderMap,
    body: Body,
    s: &Services,
    mut screen: S,
    call: F,
) -> Response
where
    Req: DeserializeOwned + Default + Send + 'static,
    Resp: Serialize,
    S: Screen<Req>,
    F: FnOnce(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let arriving = |part: &[u8]| screen.arriving(part);
    let body = match read_body(body, declared, s.body_limit, arriving).await {
        Ok(b) => b,
        Err(s) => return error_response(s),
    };
    let len = body.len();
    let req = match decode_large::<Req, S>(body, &s.bulk, screen).await {
        Ok(r) => r,
        // A refused large body is answered at the refusal pace, so a client
        // cannot send them faster because they are refused fast.
        Err(s) => return error_response(super::refusal_pace::refused(len, s).await),
    };
    match call(grpc_request(req, &headers)).await {
        Ok(r) => json_response(&r.into_inner()),
        Err(s) => error_response(s),
    }
}

/// The JSON messages of a client-streaming call, one after another in the
/// body, each at most `limit` bytes (see [`Framer`]).
fn json_messages<T: DeserializeOwned + Default + Send + 'static>(
    body: Body,
    s: &Services,
) -> impl Stream<Item = Result<T, Status>> + Send + Unpin + 'static {
    let chunks = body.into_data_stream();
    let bulk = s.bulk.clone();
    let stream = futures::stream::unfold(
        (chunks, Framer::new(s.body_limit), false),
        move |(mut chunks, mut framer, done)| {
            let bulk = bulk.clone();
            async move {
                if done {
                    return None;
                }
                loop {
                    match framer.next_message() {
                        Ok(Some(msg)) => {
                            let msg = Chunks::from(Bytes::from(msg));
                            let item = decode_large::<T, _>(msg, &bulk, NoScreen).await;
                            let failed = item.is_err();
                            return Some((item, (chunks, framer, failed)));
                        }
                        Ok(None) => {}
                        Err(s) => return Some((Err(s), (chunks, framer, true))),
                    }
                    match chunks.next().await {
                        Some(Ok(b)) => framer.push(&b),
                        Some(Err(_)) | None if framer.is_partial() => {
                            let eof = Status::invalid_argument("unexpected EOF");
                            return Some((Err(eof), (chunks, framer, true)));
                        }
                        Some(Err(_)) | None => return None,
                    }
                }
            }
        },
    );
    Box::pin(stream)
}

/// A streamed answer: one `{"result":…}` (or `{"error":…}`) per line.
fn json_lines<T: Serialize + Send + 'static>(
    stream: impl Stream<Item = Result<T, Status>> + Send + 'static,
) -> Response {
    let lines = stream.map(|item| {
        let v = match item {
            Ok(msg) => serde_json::json!({ "result": msg }),
            Err(s) => serde_json::json!({ "error": {
                "grpc_code": s.code() as i32,
                "http_code": http_status(s.code()).as_u16(),
                "message": s.message(),
                "http_status": http_status(s.code()).canonical_reason().unwrap_or(""),
            }}),
        };
        let mut line = serde_json::to_vec(&v).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, std::convert::Infallible>(Bytes::from(line))
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(lines),
    )
        .into_response()
}

/// A unary route to `svc.method`; with `screen`, that [`Screen`] (made from
/// the service) runs as the body arrives and where it is parsed (see
/// [`read_body`] and [`decode_large`]).
macro_rules! unary_route {
    ($svc:ident . $method:ident) => {
        post(
            |State(s): State<Services>, headers: HeaderMap, body: Body| async move {
                let svc = s.$svc.clone();
                let call = |r| async move { svc.$method(r).await };
                unary(headers, body, &s, NoScreen, call).await
            },
        )
    };
    ($svc:ident . $method:ident, screen = $screen:ident) => {
        post(
            |State(s): State<Services>, headers: HeaderMap, body: Body| async move {
                let (svc, screen) = (s.$svc.clone(), $screen::new(&s.$svc));
                let call = |r| async move { svc.$method(r).await };
                unary(headers, body, &s, screen, call).await
            },
        )
    };
}

/// The gateway routes, under both `/v3` and `/v3beta` as etcd 3.4.
pub fn router(services: Services) -> Router {
    let v3: Router = Router::new()
        .route("/kv/range", unary_route!(kv.range))
        .route("/kv/put", unary_route!(kv.put))
        .route("/kv/deleterange", unary_route!(kv.delete_range))
        .route("/kv/txn", unary_route!(kv.txn, screen = TxnScreen))
        .route("/kv/compaction", unary_route!(kv.compact))
        .route("/lease/grant", unary_route!(lease.lease_grant))
        .route("/lease/revoke", unary_route!(lease.lease_revoke))
        .route("/kv/lease/revoke", unary_route!(lease.lease_revoke))
        .route("/lease/timetolive", unary_route!(lease.lease_time_to_live))
        .route(
            "/kv/lease/timetolive",
            unary_route!(lease.lease_time_to_live),
        )
        .route("/lease/leases", unary_route!(lease.lease_leases))
        .route("/kv/lease/leases", unary_route!(lease.lease_leases))
        .route("/cluster/member/list", unary_route!(cluster.member_list))
        .route("/cluster/member/add", unary_route!(cluster.member_add))
        .route(
            "/cluster/member/remove",
            unary_route!(cluster.member_remove),
        )
        .route(
            "/cluster/member/update",
            unary_route!(cluster.member_update),
        )
        .route(
            "/cluster/member/promote",
            unary_route!(cluster.member_promote),
        )
        .route("/maintenance/status", unary_route!(maintenance.status))
        .route("/maintenance/alarm", unary_route!(maintenance.alarm))
        .route(
            "/maintenance/defragment",
            unary_route!(maintenance.defragment),
        )
        .route("/maintenance/hash", unary_route!(maintenance.hash_kv))
        .route(
            "/maintenance/transfer-leadership",
            unary_route!(maintenance.move_leader),
        )
        .route(
            "/lease/keepalive",
            post(|State(s): State<Services>, body: Body| async move {
                json_lines(s.lease.keep_alive_stream(json_messages(body, &s)))
            }),
        )
        .route(
            "/watch",
            post(
                |State(s): State<Services>, headers: HeaderMap, body: Body| async move {
                    match s
                        .watch
                        .open(json_messages(body, &s), false, &metadata(&headers))
                    {
                        Ok(stream) => {
                            json_lines(stream.map(|r| r.map(crate::watch::WatchOut::into_response)))
                        }
                        Err(st) => error_response(st),
                    }
                },
            ),
        )
        .route("/auth/enable", unary_route!(auth.auth_enable))
        .route("/auth/disable", unary_route!(auth.auth_disable))
        .route("/auth/authenticate", unary_route!(auth.authenticate))
        .route("/auth/user/add", unary_route!(auth.user_add))
        .route("/auth/user/get", unary_route!(auth.user_get))
        .route("/auth/user/list", unary_route!(auth.user_list))
        .route("/auth/user/delete", unary_route!(auth.user_delete))
        .route(
            "/auth/user/changepw",
            unary_route!(auth.user_change_password),
        )
        .route("/auth/user/grant", unary_route!(auth.user_grant_role))
        .route("/auth/user/revoke", unary_route!(auth.user_revoke_role))
        .route("/auth/role/add", unary_route!(auth.role_add))
        .route("/auth/role/get", unary_route!(auth.role_get))
        .route("/auth/role/list", unary_route!(auth.role_list))
        .route("/auth/role/delete", unary_route!(auth.role_delete))
        .route("/auth/role/grant", unary_route!(auth.role_grant_permission))
        .route(
            "/auth/role/revoke",
            unary_route!(auth.role_revoke_permission),
        )
        .with_state(services);
    Router::new()
        .nest("/v3", v3.clone())
        .nest("/v3beta", v3)
        .route(
            "/version",
            get(|| async {
                axum::Json(serde_json::json!({"etcdserver": SERVER_VERSION, "etcdcluster": CLUSTER_VERSION}))
            }),
        )
        // Bodies are read within `Services::body_limit` by the routes.
        .layer(DefaultBodyLimit::disable())
}

/// `GET /health`: healthy when a linearizable read succeeds, as etcd's.
pub fn health_router(node: Arc<crate::node::Node>) -> Router {
    Router::new().route(
        "/health",
        get(move || {
            let node = node.clone();
            async move {
                match node.read_barrier().await {
                    Ok(()) => (
                        StatusCode::OK,
                        axum::Json(serde_json::json!({"health": "true"})),
                    ),
                    Err(e) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        axum::Json(serde_json::json!({"health": "false", "reason": e.to_string()})),
                    ),
                }
            }
        }),
    )
}

//! The native API under `/api/v1`: JSON in, JSON out. Every write becomes
//! [`Command`]s applied through `Table::apply_as`, so it is saved and published
//! before the answer.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::app::{AppState, write};
use super::error::{ApiError, ApiPath, ApiQuery};
use super::views::{ServerView, UpstreamView, parse_duration};
use std::collections::BTreeMap;

use crate::config::rules::{check_hash_key, check_weight, is_api_name, misplaced_keys};
use crate::config::{
    Balance, HashKey, HealthCheckConfig, HealthCheckError, HealthCheckKind, KeepaliveConfig,
    RetryPolicy, ServerConfig, ServerError, Timeouts, UpstreamError,
};
use crate::upstream::{AdminState, Command, ServerPatch, ServerRef, ServerSpec, UpstreamSettings};

type ApiResult = Result<Response, ApiError>;

/// Reads a JSON body: a JSON content type is required (so that a browser form
/// cannot post here) unless the request carries the token; unknown fields are
/// errors, not silently ignored.
pub(super) fn json_body<T: DeserializeOwned>(
    app: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = body.map_err(|e| {
        ApiError::new(
            e.status(),
            "BodyRejected",
            format!("cannot read the body: {e}"),
        )
    })?;
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let v = v.split(';').next().unwrap_or("").trim();
            v.eq_ignore_ascii_case("application/json") || v.ends_with("+json")
        });
    if !json_type && !app.access.has_token(headers) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "JsonRequired",
            "send the body as JSON with `Content-Type: application/json`",
        ));
    }
    serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("bad JSON body: {e}")))
}

/// A server as the API takes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewServer {
    addr: String,
    weight: Option<u32>,
    max_conns: Option<u32>,
    max_fails: Option<u32>,
    fail_timeout: Option<String>,
    slow_start: Option<String>,
    #[serde(default)]
    backup: bool,
    state: Option<AdminState>,
}

impl NewServer {
    /// The server, checked by the rules every door uses
    /// (`ServerConfig::validate`), with this API's error codes.
    fn into_config(self) -> Result<ServerConfig, ApiError> {
        let mut c = ServerConfig::new(self.addr);
        c.weight = self.weight.unwrap_or(c.weight);
        c.validate().map_err(|e| match e {
            ServerError::BadAddress { addr, reason } => {
                ApiError::unprocessable("BadAddress", format!("addr {addr:?}: {reason}"))
            }
            ServerError::BadWeight(_) => ApiError::unprocessable("BadWeight", e.to_string()),
        })?;
        c.max_conns = self.max_conns.unwrap_or(c.max_conns);
        c.max_fails = self.max_fails.unwrap_or(c.max_fails);
        if let Some(d) = &self.fail_timeout {
            c.fail_timeout = duration_field("fail_timeout", d)?;
        }
        if let Some(d) = &self.slow_start {
            c.slow_start = duration_field("slow_start", d)?;
        }
        c.backup = self.backup;
        c.down = matches!(self.state, Some(AdminState::Down));
        if matches!(self.state, Some(AdminState::Drain)) {
            return Err(ApiError::unprocessable(
                "BadState",
                "a new server can start `up` or `down`, not `drain`",
            ));
        }
        Ok(c)
    }

    /// Resolves the address off the async threads (a DNS lookup can block).
    pub(super) async fn into_spec(self) -> Result<ServerSpec, ApiError> {
        let config = self.into_config()?;
        tokio::task::spawn_blocking(move || ServerSpec::resolve(config))
            .await
            .map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal", e.to_string())
            })?
            .map_err(ApiError::from)
    }
}

fn duration_field(name: &str, s: &str) -> Result<Duration, ApiError> {
    parse_duration(s).map_err(|e| ApiError::unprocessable("BadDuration", format!("{name}: {e}")))
}

/// Changes to a server; absent fields stay as they are.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ServerChange {
    state: Option<AdminState>,
    weight: Option<u32>,
    max_conns: Option<u32>,
    max_fails: Option<u32>,
    fail_timeout: Option<String>,
    slow_start: Option<String>,
    backup: Option<bool>,
}

impl ServerChange {
    fn into_patch(self) -> Result<ServerPatch, ApiError> {
        let weight = self
            .weight
            .map(check_weight)
            .transpose()
            .map_err(|e| ApiError::unprocessable("BadWeight", e.to_string()))?;
        let patch = ServerPatch {
            state: self.state,
            weight,
            max_conns: self.max_conns,
            max_fails: self.max_fails,
            fail_timeout: self
                .fail_timeout
                .as_deref()
                .map(|d| duration_field("fail_timeout", d))
                .transpose()?,
            slow_start: self
                .slow_start
                .as_deref()
                .map(|d| duration_field("slow_start", d))
                .transpose()?,
            backup: self.backup,
        };
        if patch.is_empty() {
            return Err(ApiError::unprocessable(
                "NothingToChange",
                "the body names no field to change",
            ));
        }
        Ok(patch)
    }
}

/// An active health check as the API takes it: the keys of the file's
/// `health_check`, durations as strings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HealthCheckJson {
    #[serde(rename = "type")]
    kind: String,
    http_req: Option<String>,
    method: Option<String>,
    path: Option<String>,
    host: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    interval: Option<String>,
    jitter: Option<String>,
    timeout: Option<String>,
    fall: Option<u32>,
    rise: Option<u32>,
    #[serde(default)]
    valid_statuses: Vec<u16>,
    body: Option<String>,
    body_regex: Option<String>,
    port: Option<u16>,
    concurrency: Option<u32>,
    #[serde(default)]
    mandatory: bool,
}

fn bad_check(e: HealthCheckError) -> ApiError {
    ApiError::unprocessable("BadHealthCheck", e.to_string())
}

impl HealthCheckJson {
    /// The check, held to the rules every door uses: which settings go
    /// together (by what the body gives, so that a `tcp` check with `"path":
    /// "/"` is refused too), then `HealthCheckConfig::validate`.
    pub(super) fn into_config(self) -> Result<HealthCheckConfig, ApiError> {
        let kind = HealthCheckKind::from_name(&self.kind).map_err(bad_check)?;
        if let Some((_, e)) = misplaced_keys(kind, |k| self.gives(k)).into_iter().next() {
            return Err(bad_check(e));
        }
        let c = self.build(kind)?;
        c.validate().map_err(bad_check)?;
        Ok(c)
    }

    /// Whether the body sets `key` (one of the HTTP-only keys).
    fn gives(&self, key: &str) -> bool {
        match key {
            "http_req" => self.http_req.is_some(),
            "method" => self.method.is_some(),
            "path" => self.path.is_some(),
            "host" => self.host.is_some(),
            "headers" => !self.headers.is_empty(),
            "body" => self.body.is_some(),
            "body_regex" => self.body_regex.is_some(),
            "valid_statuses" => !self.valid_statuses.is_empty(),
            _ => false,
        }
    }

    /// The check as given, defaults for the rest; durations read here.
    fn build(self, kind: HealthCheckKind) -> Result<HealthCheckConfig, ApiError> {
        let mut c = HealthCheckConfig::new(kind);
        let d = |name: &str, v: &Option<String>, default: Duration| {
            v.as_deref()
                .map_or(Ok(default), |s| duration_field(name, s))
        };
        c.interval = d("interval", &self.interval, c.interval)?;
        c.timeout = d("timeout", &self.timeout, c.timeout)?;
        c.jitter = d("jitter", &self.jitter, c.jitter)?;
        c.http_req = self.http_req;
        c.method = self.method.unwrap_or(c.method);
        c.path = self.path.unwrap_or(c.path);
        c.host = self.host;
        c.headers = self.headers.into_iter().collect();
        c.fall = self.fall.unwrap_or(c.fall);
        c.rise = self.rise.unwrap_or(c.rise);
        c.concurrency = self.concurrency.unwrap_or(c.concurrency);
        c.valid_statuses = self.valid_statuses;
        c.body = self.body;
        c.body_regex = self.body_regex;
        c.port = self.port;
        c.mandatory = self.mandatory;
        Ok(c)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryJson {
    tries: Option<u32>,
    timeout: Option<String>,
    non_idempotent: Option<bool>,
}

/// An upstream as `POST /api/v1/upstreams` takes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewUpstream {
    name: String,
    balance: Option<String>,
    hash_key: Option<String>,
    keepalive: Option<usize>,
    keepalive_timeout: Option<String>,
    connect_timeout: Option<String>,
    read_timeout: Option<String>,
    send_timeout: Option<String>,
    retry: Option<RetryJson>,
    health_check: Option<HealthCheckJson>,
    #[serde(default)]
    servers: Vec<NewServer>,
}

impl NewUpstream {
    async fn into_command(self) -> Result<Command, ApiError> {
        if !is_api_name(&self.name) {
            return Err(ApiError::unprocessable(
                "BadName",
                format!("bad upstream name {:?}", self.name),
            ));
        }
        let balance = match &self.balance {
            None => Balance::RoundRobin,
            Some(b) => Balance::from_name(b)
                .map_err(|e| ApiError::unprocessable("BadBalance", e.to_string()))?,
        };
        let bad_key = |e: UpstreamError| ApiError::unprocessable("BadHashKey", e.to_string());
        let hash_key = self
            .hash_key
            .as_deref()
            .map(HashKey::from_name)
            .transpose()
            .map_err(bad_key)?;
        check_hash_key(balance, hash_key.as_ref()).map_err(bad_key)?;
        let d = |name: &str, v: &Option<String>, default: Duration| -> Result<Duration, ApiError> {
            v.as_deref()
                .map_or(Ok(default), |s| duration_field(name, s))
        };
        let (kd, td, rd) = (
            KeepaliveConfig::default(),
            Timeouts::default(),
            RetryPolicy::default(),
        );
        let retry = match &self.retry {
            None => rd,
            Some(r) => RetryPolicy {
                tries: RetryPolicy::at_least_one_try(r.tries.unwrap_or(rd.tries)),
                timeout: d("retry.timeout", &r.timeout, rd.timeout)?,
                non_idempotent: r.non_idempotent.unwrap_or(rd.non_idempotent),
            },
        };
        let settings = UpstreamSettings {
            balance,
            hash_key,
            keepalive: KeepaliveConfig {
                max_idle: self.keepalive.unwrap_or(kd.max_idle),
                idle_timeout: d(
                    "keepalive_timeout",
                    &self.keepalive_timeout,
                    kd.idle_timeout,
                )?,
            },
            timeouts: Timeouts {
                connect: d("connect_timeout", &self.connect_timeout, td.connect)?,
                read: d("read_timeout", &self.read_timeout, td.read)?,
                send: d("send_timeout", &self.send_timeout, td.send)?,
            },
            retry,
            health_check: self
                .health_check
                .map(HealthCheckJson::into_config)
                .transpose()?,
            ..UpstreamSettings::default()
        };
        let mut servers = Vec::new();
        for s in self.servers {
            servers.push(s.into_spec().await?);
        }
        Ok(Command::CreateUpstream {
            name: self.name,
            settings,
            servers,
        })
    }
}

/// A server named by id (a number) or address (a string).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum ServerRefJson {
    Id(u32),
    Addr(String),
}

impl From<ServerRefJson> for ServerRef {
    fn from(r: ServerRefJson) -> Self {
        match r {
            ServerRefJson::Id(id) => ServerRef::Id(id),
            ServerRefJson::Addr(a) => ServerRef::parse(&a),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum BatchOp {
    Add {
        upstream: String,
        server: NewServer,
    },
    Patch {
        upstream: String,
        server: ServerRefJson,
        set: ServerChange,
    },
    Remove {
        upstream: String,
        server: ServerRefJson,
    },
    CreateUpstream {
        upstream: Box<NewUpstream>,
    },
    DeleteUpstream {
        upstream: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Batch {
    operations: Vec<BatchOp>,
}

#[derive(Debug, Deserialize)]
pub(super) struct WaitQuery {
    wait: Option<String>,
}

fn who(addr: SocketAddr) -> String {
    addr.to_string()
}

fn now() -> u64 {
    crate::clock::now_ms()
}

/// Runs the writer on a blocking thread: it may fsync the state file.
pub(super) async fn apply(
    app: &AppState,
    commands: Vec<Command>,
    origin: String,
) -> Result<Vec<Arc<crate::upstream::Server>>, ApiError> {
    write(&app.table, commands, origin)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal", e.to_string()))?
        .map_err(|e| ApiError::from(e.error))
}

/// Applies one server command and returns the server it touched.
pub(super) async fn apply_one(
    app: &AppState,
    command: Command,
    origin: String,
) -> Result<Arc<crate::upstream::Server>, ApiError> {
    apply(app, vec![command], origin)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal",
                "the table returned no server for a server command",
            )
        })
}

fn wait_param(q: &WaitQuery) -> Result<Option<Duration>, ApiError> {
    q.wait
        .as_deref()
        .map(|w| duration_field("wait", w))
        .transpose()
}

/// The current version of an upstream, or 404 `UpstreamNotFound`.
fn lookup_upstream(app: &AppState, name: &str) -> Result<Arc<crate::upstream::Upstream>, ApiError> {
    app.table
        .upstream(name)
        .ok_or_else(|| ApiError::from(crate::upstream::TableError::UnknownUpstream(name.into())))
}

fn find_server(
    app: &AppState,
    upstream: &str,
    server: &str,
) -> Result<Arc<crate::upstream::Server>, ApiError> {
    let up = lookup_upstream(app, upstream)?;
    let r = ServerRef::parse(server);
    up.snapshot()
        .servers
        .iter()
        .find(|s| r.matches(s))
        .cloned()
        .ok_or_else(|| {
            ApiError::not_found(
                "ServerNotFound",
                format!("upstream {upstream:?} has no server {r}"),
            )
        })
}

/// `GET /api/v1/cluster`: the fleet's shared store as this instance sees it;
/// 404 when the instance is not part of a fleet.
pub(super) async fn cluster(State(app): State<AppState>) -> Response {
    match app.table.store().and_then(|s| s.cluster_status()) {
        Some(c) => Json(c).into_response(),
        None => ApiError::not_found(
            "NoCluster",
            "this instance has no [cluster] section: its table is its own",
        )
        .into_response(),
    }
}

/// `GET /api/v1/whoami`: what this client may do (the dashboard asks, to show
/// its buttons only to those whose changes would be let through).
pub(super) async fn whoami(
    State(app): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Json<super::access::Capabilities> {
    Json(app.access.capabilities(client.ip(), &headers))
}

pub(super) async fn list_upstreams(State(app): State<AppState>) -> Json<Vec<UpstreamView>> {
    let t = app.table.load();
    let now = now();
    Json(
        t.upstreams
            .values()
            .map(|u| UpstreamView::of(u, now))
            .collect(),
    )
}

pub(super) async fn get_upstream(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult {
    let up = lookup_upstream(&app, &name)?;
    Ok(Json(UpstreamView::of(&up, now())).into_response())
}

pub(super) async fn create_upstream(
    State(app): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let new: NewUpstream = json_body(&app, &headers, body)?;
    let name = new.name.clone();
    let cmd = new.into_command().await?;
    apply(&app, vec![cmd], who(client)).await?;
    let up = lookup_upstream(&app, &name)?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/api/v1/upstreams/{name}"))],
        Json(UpstreamView::of(&up, now())),
    )
        .into_response())
}

pub(super) async fn delete_upstream(
    State(app): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult {
    apply(&app, vec![Command::DeleteUpstream { name }], who(client)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn list_servers(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult {
    let up = lookup_upstream(&app, &name)?;
    let now = now();
    let list: Vec<ServerView> = up
        .snapshot()
        .servers
        .iter()
        .map(|s| ServerView::of(s, now))
        .collect();
    Ok(Json(list).into_response())
}

pub(super) async fn add_server(
    State(app): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    ApiPath(name): ApiPath<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let new: NewServer = json_body(&app, &headers, body)?;
    let spec = new.into_spec().await?;
    let server = &apply_one(
        &app,
        Command::Add {
            upstream: name.clone(),
            server: spec,
        },
        who(client),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        [(
            header::LOCATION,
            format!("/api/v1/upstreams/{name}/servers/{}", server.id),
        )],
        Json(ServerView::of(server, now())),
    )
        .into_response())
}

pub(super) async fn get_server(
    State(app): State<AppState>,
    ApiPath((name, server)): ApiPath<(String, String)>,
) -> ApiResult {
    let s = find_server(&app, &name, &server)?;
    Ok(Json(ServerView::of(&s, now())).into_response())
}

pub(super) async fn patch_server(
    State(app): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    ApiPath((name, server)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<WaitQuery>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let wait = wait_param(&q)?;
    let change: ServerChange = json_body(&app, &headers, body)?;
    let patch = change.into_patch()?;
    let server = apply_one(
        &app,
        Command::Patch {
            upstream: name,
            server: ServerRef::parse(&server),
            patch,
        },
        who(client),
    )
    .await?;
    respond_after_wait(&server, wait).await
}

/// With `?wait=`, answers once the server has no request in flight (200) or the
/// wait ran out (202, with the count still active).
async fn respond_after_wait(
    server: &Arc<crate::upstream::Server>,
    wait: Option<Duration>,
) -> ApiResult {
    let status = match wait {
        Some(w) if server.runtime.wait_idle(w).await > 0 => StatusCode::ACCEPTED,
        _ => StatusCode::OK,
    };
    Ok((status, Json(ServerView::of(server, now()))).into_response())
}

pub(super) async fn delete_server(
    State(app): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    ApiPath((name, server)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<WaitQuery>,
) -> ApiResult {
    let wait = wait_param(&q)?;
    let server = apply_one(
        &app,
        Command::Remove {
            upstream: name,
            server: ServerRef::parse(&server),
        },
        who(client),
    )
    .await?;
    respond_after_wait(&server, wait).await
}

pub(super) async fn batch(
    State(app): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let batch: Batch = json_body(&app, &headers, body)?;
    let count = batch.operations.len();
    let mut commands = Vec::with_capacity(count);
    for (i, op) in batch.operations.into_iter().enumerate() {
        let cmd = match op {
            BatchOp::Add { upstream, server } => Command::Add {
                upstream,
                server: server.into_spec().await.map_err(|e| e.at(i))?,
            },
            BatchOp::Patch {
                upstream,
                server,
                set,
            } => Command::Patch {
                upstream,
                server: server.into(),
                patch: set.into_patch().map_err(|e| e.at(i))?,
            },
            BatchOp::Remove { upstream, server } => Command::Remove {
                upstream,
                server: server.into(),
            },
            BatchOp::CreateUpstream { upstream } => {
                upstream.into_command().await.map_err(|e| e.at(i))?
            }
            BatchOp::DeleteUpstream { upstream } => Command::DeleteUpstream { name: upstream },
        };
        commands.push(cmd);
    }
    let result = write(&app.table, commands, who(client))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal", e.to_string()))?;
    match result {
        Ok(touched) => {
            let now = now();
            let servers: Vec<ServerView> = touched.iter().map(|s| ServerView::of(s, now)).collect();
            Ok(Json(serde_json::json!({ "applied": count, "servers": servers })).into_response())
        }
        Err(e) => {
            let err = ApiError::from(e.error);
            Err(match e.index {
                Some(i) => err.at(i),
                None => err,
            })
        }
    }
}

pub(super) async fn get_health_check(
    State(app): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult {
    let up = lookup_upstream(&app, &name)?;
    match &up.settings.health_check {
        Some(c) => Ok(Json(crate::upstream::check_view(c)).into_response()),
        None => Err(ApiError::not_found(
            "NoHealthCheck",
            format!("upstream {name:?} has no health check"),
        )),
    }
}

pub(super) async fn put_health_check(
    State(app): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    ApiPath(name): ApiPath<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let json: HealthCheckJson = json_body(&app, &headers, body)?;
    let check = json.into_config()?;
    let view = crate::upstream::check_view(&check);
    apply(
        &app,
        vec![Command::SetHealthCheck {
            upstream: name,
            check: Some(check),
        }],
        who(client),
    )
    .await?;
    Ok(Json(view).into_response())
}

pub(super) async fn delete_health_check(
    State(app): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult {
    apply(
        &app,
        vec![Command::SetHealthCheck {
            upstream: name,
            check: None,
        }],
        who(client),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(super) async fn events(
    State(app): State<AppState>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let rx = app.table.subscribe();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let ev = match rx.recv().await {
            Ok(e) => {
                let data = serde_json::to_string(&e).unwrap_or_default();
                SseEvent::default()
                    .event(e.change.clone())
                    .id(e.seq.to_string())
                    .data(data)
            }
            // A reader too slow for the stream is told how much it missed.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => SseEvent::default()
                .event("lagged")
                .data(format!("{{\"missed\":{n}}}")),
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(ev), rx))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

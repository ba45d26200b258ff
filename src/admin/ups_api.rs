//! Seed compatibility: the OpenResty recipe's `/ups_api?ups=NAME&act=list|up|down`
//! (lua-upstream-nginx-module's `get_servers` / `set_peer_down`), so that the
//! scripts and curl commands written for it keep working. `act=drain` is ours.
//!
//! This module owns the parsing of that API's query string and form body and the
//! `{code, msg, data}` answers. It must not touch the table except through one
//! `Table::apply_as` call per request, on a blocking thread (so a list of
//! servers changes all together or not at all), and it does not decide access:
//! `admin::guard` does, before this code runs, and answers denials with
//! [`denied`] in this API's shape.
//!
//! Codes: `D002` success; `E001` no server given (400); `E002` the change could
//! not be applied or saved (500; 503 while a fleet's store is unreachable, 409
//! when other instances' concurrent changes kept winning); `E003` unknown upstream (404); `E004` unknown
//! server, named (404); `E005` unknown `act` (400); `E006` refused by the access
//! policy (403/401/405); `E007` a change sent with another method than POST
//! (405); `E008` a body that is not a form (415/400). Without `ups` or `act`
//! the answer is the usage line as plain text (400).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;

use super::app::{AppState, write};
use super::form::parse_pairs;
use crate::upstream::{AdminState, Command, Server, ServerRef, TableError};

/// What a request without `ups` or `act` is told (plain text).
pub const USAGE: &str = "usage: /ups_api?ups=NAME&act=list|up|down|drain [server=ADDR,...]\n";

/// An answer in the seed's shape: `{"code": "...", "msg": "...", "data": ...}`.
#[derive(Debug)]
pub struct UpsError {
    pub status: StatusCode,
    pub code: &'static str,
    pub msg: String,
    pub data: Value,
}

impl UpsError {
    fn new(status: StatusCode, code: &'static str, msg: impl Into<String>) -> Self {
        UpsError {
            status,
            code,
            msg: msg.into(),
            data: Value::Null,
        }
    }

    fn with_data(mut self, data: Value) -> Self {
        self.data = data;
        self
    }
}

impl IntoResponse for UpsError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "code": self.code, "msg": self.msg, "data": self.data });
        (self.status, Json(body)).into_response()
    }
}

/// A refusal by the access policy, in this API's shape (`E006`).
pub fn denied(status: StatusCode, msg: String) -> Response {
    UpsError::new(status, "E006", msg).into_response()
}

/// One server as `act=list` shows it: the fields of `get_servers`, then ours.
#[derive(Debug, Serialize)]
pub struct ListedServer {
    pub name: String,
    pub addr: String,
    pub weight: u32,
    pub max_fails: u32,
    /// Seconds, as `get_servers` gives it.
    pub fail_timeout: u64,
    pub backup: bool,
    /// Whether an operator took it out (`down` or `drain`).
    pub down: bool,
    pub id: u32,
    pub state: AdminState,
    pub health: &'static str,
}

impl ListedServer {
    pub fn of(s: &Server, now_ms: u64) -> ListedServer {
        ListedServer {
            name: s.addr.clone(),
            addr: s.sockaddr.to_string(),
            weight: s.weight,
            max_fails: s.max_fails,
            fail_timeout: s.fail_timeout.as_secs(),
            backup: s.backup,
            down: s.state != AdminState::Up,
            id: s.id,
            state: s.state,
            health: super::views::health(s, now_ms),
        }
    }
}

/// The servers named by every `server=` value: comma-separated lists and
/// repeated keys both count, whitespace around each is dropped, empty entries
/// are skipped, and a server named twice counts once.
pub fn server_list<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for v in values {
        for s in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if !out.iter().any(|o| o == s) {
                out.push(s.to_string());
            }
        }
    }
    out
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    List,
    Set(AdminState),
}

/// Parses an `act` value, tolerating the whitespace of hand-typed commands.
pub fn parse_act(s: &str) -> Option<Act> {
    match s.trim().to_ascii_lowercase().as_str() {
        "list" => Some(Act::List),
        "up" => Some(Act::Set(AdminState::Up)),
        "down" => Some(Act::Set(AdminState::Down)),
        "drain" => Some(Act::Set(AdminState::Drain)),
        _ => None,
    }
}

fn first<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn list(app: &AppState, ups: &str) -> Result<Vec<ListedServer>, UpsError> {
    let up = app
        .table
        .upstream(ups)
        .ok_or_else(|| unknown_upstream(ups))?;
    let now = crate::clock::now_ms();
    Ok(up
        .snapshot()
        .servers
        .iter()
        .map(|s| ListedServer::of(s, now))
        .collect())
}

fn unknown_upstream(ups: &str) -> UpsError {
    UpsError::new(
        StatusCode::NOT_FOUND,
        "E003",
        format!("no upstream named {ups:?}"),
    )
}

/// Reads the form body: absent or `application/x-www-form-urlencoded`.
fn form_body(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Vec<(String, String)>, UpsError> {
    let body =
        body.map_err(|e| UpsError::new(e.status(), "E008", format!("cannot read the body: {e}")))?;
    if body.is_empty() {
        return Ok(Vec::new());
    }
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form {
        return Err(UpsError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "E008",
            "send the servers as a form: `server=ADDR[,ADDR...]` with \
             `Content-Type: application/x-www-form-urlencoded`",
        ));
    }
    let text = std::str::from_utf8(&body).map_err(|_| {
        UpsError::new(
            StatusCode::BAD_REQUEST,
            "E008",
            "the form body is not UTF-8",
        )
    })?;
    Ok(parse_pairs(text))
}

/// `/ups_api`, any method: `act=list` reads; `up`, `down`, `drain` need POST.
pub(super) async fn handle(
    State(app): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match run(&app, client, &method, &uri, &headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn run(
    app: &AppState,
    client: SocketAddr,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, UpsError> {
    let query = parse_pairs(uri.query().unwrap_or(""));
    let (Some(ups), Some(act)) = (first(&query, "ups"), first(&query, "act")) else {
        return Ok(usage());
    };
    let ups = ups.trim();
    let state = match parse_act(act) {
        Some(Act::List) => return Ok(Json(list(app, ups)?).into_response()),
        Some(Act::Set(state)) => state,
        None => {
            return Err(UpsError::new(
                StatusCode::BAD_REQUEST,
                "E005",
                format!(
                    "unknown act {:?} (expected list, up, down or drain)",
                    act.trim()
                ),
            ));
        }
    };
    if *method != Method::POST {
        return Err(UpsError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "E007",
            format!(
                "act={} changes the table: send it with POST",
                state.as_str()
            ),
        ));
    }
    let form = form_body(headers, body)?;
    let servers = named_servers(&query, &form)?;
    let changed = set_state(app, client, ups, &servers, state).await?;
    let now = crate::clock::now_ms();
    let data: Vec<ListedServer> = changed.iter().map(|s| ListedServer::of(s, now)).collect();
    Ok(Json(serde_json::json!({
        "code": "D002",
        "msg": "set peer is success",
        "data": data,
    }))
    .into_response())
}

/// The answer to a request without `ups` or `act`: how to call this API.
fn usage() -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        USAGE,
    )
        .into_response()
}

/// Every server the query and the form name, at least one (`E001`).
fn named_servers(
    query: &[(String, String)],
    form: &[(String, String)],
) -> Result<Vec<String>, UpsError> {
    let servers = server_list(
        query
            .iter()
            .chain(form)
            .filter(|(k, _)| k == "server")
            .map(|(_, v)| v.as_str()),
    );
    if servers.is_empty() {
        return Err(UpsError::new(
            StatusCode::BAD_REQUEST,
            "E001",
            "no server given",
        ));
    }
    Ok(servers)
}

/// Sets every server of `servers` to `state` in one change (all or none), and
/// says why not in this API's codes.
async fn set_state(
    app: &AppState,
    client: SocketAddr,
    ups: &str,
    servers: &[String],
    state: AdminState,
) -> Result<Vec<Arc<Server>>, UpsError> {
    let commands: Vec<Command> = servers
        .iter()
        .map(|s| Command::SetState {
            upstream: ups.to_string(),
            server: ServerRef::parse(s),
            state,
        })
        .collect();
    let result = write(&app.table, commands, client.to_string())
        .await
        .map_err(|e| UpsError::new(StatusCode::INTERNAL_SERVER_ERROR, "E002", e.to_string()))?;
    match result.map_err(|e| e.error) {
        Ok(changed) => Ok(changed),
        Err(TableError::UnknownUpstream(_)) => Err(unknown_upstream(ups)),
        Err(TableError::UnknownServer { server, .. }) => Err(UpsError::new(
            StatusCode::NOT_FOUND,
            "E004",
            format!("upstream {ups:?} has no server {server}; nothing was changed"),
        )
        .with_data(serde_json::json!([server]))),
        Err(e) => {
            let status = match e {
                TableError::StoreUnavailable(_) | TableError::StoreOutcomeUnknown(_) => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                TableError::Conflict(_) => StatusCode::CONFLICT,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            Err(UpsError::new(
                status,
                "E002",
                format!("failed to set peer {}: {e}", state.as_str()),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_lists_split_trim_and_dedupe() {
        assert_eq!(
            server_list(["a:1, b:2,,", " a:1 ", "c:3"]),
            vec!["a:1", "b:2", "c:3"]
        );
        assert!(server_list([" , ", ""]).is_empty());
    }

    #[test]
    fn acts_are_trimmed_and_case_blind() {
        assert_eq!(parse_act(" down"), Some(Act::Set(AdminState::Down)));
        assert_eq!(parse_act("UP "), Some(Act::Set(AdminState::Up)));
        assert_eq!(parse_act("\tlist\n"), Some(Act::List));
        assert_eq!(parse_act("drain"), Some(Act::Set(AdminState::Drain)));
        assert_eq!(parse_act("reboot"), None);
        assert_eq!(parse_act(""), None);
    }
}

//! Changes through the admin API are linearizable with the traffic: once the
//! answer to a change has arrived, every request that starts afterwards routes by
//! it. Sixteen clients send requests continuously through the proxy to three
//! backends that record every request (and when it arrived); each client records,
//! per request, when it started and which backend answered.

use crate::support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;

use support::{ApiReply, Backend, Call, InProcess, config, named, spawn_open_admin};

const CLIENTS: usize = 16;
/// Requests each backend gets before the change (so it demonstrably had traffic).
const BEFORE: usize = 20;
/// Requests that must start after the change's answer before the check.
const AFTER: usize = 400;

/// One client request: when it started, its path, and the backend that answered.
struct Record {
    start: Instant,
    path: String,
    answered_by: String,
}

/// Sends requests on one keep-alive connection until `stop`; counts in `after` the
/// requests started once `changed` was set.
async fn client(
    proxy: SocketAddr,
    n: usize,
    stop: Arc<AtomicBool>,
    changed: Arc<AtomicBool>,
    after: Arc<AtomicUsize>,
) -> Vec<Record> {
    let stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut records = Vec::new();
    let mut seq = 0;
    while !stop.load(Ordering::SeqCst) {
        sender.ready().await.unwrap();
        let path = format!("/c{n}/{seq}");
        seq += 1;
        let req = Request::get(&path)
            .header("host", "localhost")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let is_after = changed.load(Ordering::SeqCst);
        let start = Instant::now();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        records.push(Record {
            start,
            path,
            answered_by: String::from_utf8_lossy(&body).into_owned(),
        });
        if is_after {
            after.fetch_add(1, Ordering::SeqCst);
        }
    }
    records
}

/// Runs traffic, applies `change` once every backend has had traffic, and checks
/// that no request started after the change's answer reached `excluded`.
async fn check_linearizable<F, Fut>(change: F, excluded: &[&str])
where
    F: FnOnce(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ApiReply>,
{
    let backends: Vec<(&str, Backend)> = vec![
        ("a", named("a").await),
        ("b", named("b").await),
        ("c", named("c").await),
    ];
    let cfg = config(backends.iter().map(|(_, b)| b.server()).collect());
    let proxy = InProcess::start(&cfg).await;
    let admin = spawn_open_admin(Arc::clone(&proxy.table));

    let stop = Arc::new(AtomicBool::new(false));
    let changed = Arc::new(AtomicBool::new(false));
    let after = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| {
            tokio::spawn(client(
                proxy.addr,
                n,
                Arc::clone(&stop),
                Arc::clone(&changed),
                Arc::clone(&after),
            ))
        })
        .collect();

    for (_, b) in &backends {
        b.wait_hits(BEFORE, Duration::from_secs(20)).await;
    }
    let reply = change(admin).await;
    let answered = Instant::now();
    assert!(reply.status.is_success(), "the change failed: {reply}");
    changed.store(true, Ordering::SeqCst);

    let deadline = Instant::now() + Duration::from_secs(20);
    while after.load(Ordering::SeqCst) < AFTER {
        assert!(
            Instant::now() < deadline,
            "only {} requests after the change",
            after.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut records = Vec::new();
    for c in clients {
        records.extend(c.await.unwrap());
    }

    // The clients' view: what started after the answer never reached `excluded`.
    let started_after: Vec<&Record> = records.iter().filter(|r| r.start > answered).collect();
    assert!(started_after.len() >= AFTER, "{}", started_after.len());
    for r in &started_after {
        assert!(
            !excluded.contains(&r.answered_by.as_str()),
            "{} started {:?} after the change's answer and was answered by {}",
            r.path,
            r.start - answered,
            r.answered_by
        );
    }
    let served_after: std::collections::BTreeSet<&str> = started_after
        .iter()
        .map(|r| r.answered_by.as_str())
        .collect();
    let remaining: std::collections::BTreeSet<&str> = backends
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !excluded.contains(n))
        .collect();
    assert_eq!(served_after, remaining, "the others take the traffic");

    // The backends' view: every request an excluded backend received was started
    // before the answer (it may arrive later: it was already on its way).
    let start_of: HashMap<&str, Instant> =
        records.iter().map(|r| (r.path.as_str(), r.start)).collect();
    for (name, b) in backends.iter().filter(|(n, _)| excluded.contains(n)) {
        let seen = b.seen();
        assert!(seen.len() >= BEFORE, "{name} had traffic before the change");
        for s in seen {
            let start = start_of[s.path.as_str()];
            assert!(
                start < answered,
                "{name} received {} (arrived {:?} after the answer), started after the change",
                s.path,
                s.at.saturating_duration_since(answered)
            );
        }
    }
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_patch_to_down_answers_no_new_request_reaches_that_server() {
    check_linearizable(
        |admin| async move {
            Call::patch(
                "/api/v1/upstreams/default/servers/1",
                r#"{"state": "down"}"#,
            )
            .send(admin)
            .await
        },
        &["b"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_patch_to_drain_answers_no_new_request_reaches_that_server() {
    check_linearizable(
        |admin| async move {
            Call::patch(
                "/api/v1/upstreams/default/servers/1",
                r#"{"state": "drain"}"#,
            )
            .send(admin)
            .await
        },
        &["b"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_server_delete_answers_no_new_request_reaches_that_server() {
    check_linearizable(
        |admin| async move {
            Call::delete("/api/v1/upstreams/default/servers/1")
                .send(admin)
                .await
        },
        &["b"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_batch_that_downs_two_servers_answers_no_new_request_reaches_either() {
    check_linearizable(
        |admin| async move {
            let batch = json!({ "operations": [
                { "op": "patch", "upstream": "default", "server": 0, "set": { "state": "down" } },
                { "op": "patch", "upstream": "default", "server": 2, "set": { "state": "down" } },
            ]});
            Call::post("/api/v1/batch", &batch.to_string())
                .send(admin)
                .await
        },
        &["a", "c"],
    )
    .await;
}

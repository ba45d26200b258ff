//! Requests through the real binary: how they are spread over servers, and the
//! request as a server sees it.

use crate::support;

use std::collections::BTreeMap;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{Switchyard, fetch, get, named};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_splits_100_gets_exactly_50_50_over_two_servers() {
    let alpha = named("alpha").await;
    let bravo = named("bravo").await;
    let sy = Switchyard::proxy(&[alpha.addr, bravo.addr]);

    let mut answered: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..100 {
        let r = get(sy.addr(), &format!("/n/{i}")).await;
        assert_eq!(r.status, StatusCode::OK, "request {i}: {}", r.body);
        *answered.entry(r.body).or_default() += 1;
    }
    assert_eq!(answered.get("alpha"), Some(&50), "answers: {answered:?}");
    assert_eq!(answered.get("bravo"), Some(&50), "answers: {answered:?}");
    // What the servers saw agrees with what the client got.
    assert_eq!((alpha.hits(), bravo.hits()), (50, 50));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sees_forwarding_headers_the_client_host_and_no_hop_by_hop_headers() {
    let alpha = named("alpha").await;
    let sy = Switchyard::proxy(&[alpha.addr]);

    let req = Request::get("/where?x=1")
        .header("host", "shop.example:8080")
        .header("connection", "x-custom")
        .header("x-custom", "for the proxy only")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("x-end-to-end", "kept")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let r = fetch(sy.addr(), req).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, "alpha");

    let seen = alpha.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    let h = |name: &str| s.headers.get(name).map(|v| v.to_str().unwrap().to_string());
    assert_eq!(s.path, "/where?x=1");
    assert_eq!(s.version, Version::HTTP_11);
    assert_eq!(h("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(h("x-real-ip").as_deref(), Some("127.0.0.1"));
    assert_eq!(h("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(h("host").as_deref(), Some("shop.example:8080"));
    assert_eq!(h("x-end-to-end").as_deref(), Some("kept"));
    assert_eq!(h("x-custom"), None, "header named by Connection must go");
    assert_eq!(h("keep-alive"), None);
    assert_eq!(h("proxy-connection"), None);
    assert!(
        !h("connection").unwrap_or_default().contains("x-custom"),
        "client's Connection header passed through: {:?}",
        h("connection")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_appends_the_client_to_the_chain_it_sent() {
    let alpha = named("alpha").await;
    let sy = Switchyard::proxy(&[alpha.addr]);

    let req = Request::get("/")
        .header("host", "localhost")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-real-ip", "203.0.113.7")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let r = fetch(sy.addr(), req).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let s = &alpha.seen()[0];
    assert_eq!(s.headers["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    // X-Real-IP is the peer the proxy saw, not what the client claimed.
    assert_eq!(s.headers["x-real-ip"], "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_client_is_served_over_one_multiplexed_connection() {
    let alpha = named("alpha").await;
    let bravo = named("bravo").await;
    let sy = Switchyard::proxy(&[alpha.addr, bravo.addr]);
    let addr = sy.addr();

    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });

    // Ten requests at once on the one connection.
    let mut tasks = Vec::new();
    for i in 0..10 {
        let mut sender = sender.clone();
        tasks.push(tokio::spawn(async move {
            let req = Request::get(format!("http://h2.example/{i}"))
                .body(Empty::<Bytes>::new())
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            let version = resp.version();
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (version, status, String::from_utf8(body.to_vec()).unwrap())
        }));
    }
    let mut answered: BTreeMap<String, usize> = BTreeMap::new();
    for t in tasks {
        let (version, status, body) = t.await.unwrap();
        assert_eq!(version, Version::HTTP_2);
        assert_eq!(status, StatusCode::OK);
        *answered.entry(body).or_default() += 1;
    }
    assert_eq!(
        answered.values().sum::<usize>(),
        10,
        "answers: {answered:?}"
    );
    assert!(
        answered.keys().all(|k| k == "alpha" || k == "bravo"),
        "answers: {answered:?}"
    );
    // Servers are spoken to in HTTP/1.1, with the :authority as Host.
    let seen: Vec<_> = alpha.seen().into_iter().chain(bravo.seen()).collect();
    assert_eq!(seen.len(), 10);
    for s in &seen {
        assert_eq!(s.version, Version::HTTP_11);
        assert_eq!(s.headers["host"], "h2.example");
        assert_eq!(s.headers["x-forwarded-proto"], "http");
    }
}

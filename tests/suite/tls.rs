//! TLS on both sides: HTTPS listeners with SNI and reload, HTTPS and HTTP/2
//! upstreams, verification, https health checks, trailers (gRPC's shape).
//! Certificates are made here with rcgen; every socket is on 127.0.0.1.

use crate::support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::HeaderValue;
use hyper::service::service_fn;
use hyper::{HeaderMap, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use switchyard::config::{Config, parse};
use switchyard::proxy::Proxy;
use switchyard::upstream::Table;
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A test CA that writes what it issues into its own folder.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: TempDir,
    n: AtomicUsize,
}

/// An issued certificate: its files and its DER (to compare with what a peer shows).
#[derive(Clone)]
struct Leaf {
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), issuer.pem()).unwrap();
        Ca {
            issuer,
            dir,
            n: AtomicUsize::new(0),
        }
    }

    fn pem_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A leaf for `names`; already expired when `expired`.
    fn issue(&self, names: &[&str], expired: bool) -> Leaf {
        let n = self.n.fetch_add(1, Ordering::Relaxed);
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        if expired {
            params.not_before = rcgen::date_time_ymd(2001, 1, 1);
            params.not_after = rcgen::date_time_ymd(2002, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let leaf = Leaf {
            cert: self.dir.path().join(format!("leaf{n}.pem")),
            key: self.dir.path().join(format!("leaf{n}.key")),
            der: cert.der().clone(),
        };
        std::fs::write(&leaf.cert, cert.pem()).unwrap();
        std::fs::write(&leaf.key, key.serialize_pem()).unwrap();
        leaf
    }
}

fn server_config(leaf: &Leaf) -> Arc<rustls::ServerConfig> {
    let chain = vec![leaf.der.clone()];
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&leaf.key).unwrap();
    let mut c = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(c)
}

use rustls::pki_types::pem::PemObject;

/// A backend answering `name`, echoing `X-Forwarded-Proto`, and on `/trailers`
/// ending its body with `grpc-status: 0` trailers. Counts its connections.
struct Backend {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

async fn answer(name: &'static str, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let proto = req
        .headers()
        .get("x-forwarded-proto")
        .cloned()
        .unwrap_or(HeaderValue::from_static("-"));
    let te = req.headers().get("te").cloned();
    let body: Body = if req.uri().path() == "/trailers" {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers.insert("grpc-message", HeaderValue::from_static("fine"));
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(name.as_bytes()))),
            Ok(Frame::trailers(trailers)),
        ];
        StreamBody::new(futures_util::stream::iter(frames)).boxed()
    } else {
        Full::new(Bytes::from_static(name.as_bytes())).boxed()
    };
    let mut resp = Response::new(body);
    resp.headers_mut().insert("x-seen-proto", proto);
    if let Some(te) = te {
        resp.headers_mut().insert("x-seen-te", te);
    }
    Ok(resp)
}

/// `tls`: HTTPS (HTTP/1.1 or h2 by ALPN); `None`: cleartext (HTTP/1.1 or h2c).
async fn backend(name: &'static str, tls: Option<Arc<rustls::ServerConfig>>) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&connections);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            let tls = tls.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| answer(name, req));
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                match tls {
                    None => {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                    Some(tls) => {
                        let Ok(stream) = tokio_rustls::TlsAcceptor::from(tls).accept(stream).await
                        else {
                            return;
                        };
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
            });
        }
    });
    Backend { addr, connections }
}

/// A TLS client connection: what the server showed, and a sender.
struct TlsConn {
    peer: CertificateDer<'static>,
    alpn: Option<Vec<u8>>,
    h1: Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>>,
    h2: Option<hyper::client::conn::http2::SendRequest<Empty<Bytes>>>,
}

async fn tls_connect(addr: SocketAddr, ca: &Path, sni: &str, alpn: &[&[u8]]) -> TlsConn {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
        .unwrap();
    let (_, session) = stream.get_ref();
    let peer = session.peer_certificates().unwrap()[0].clone();
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    if alpn.as_deref() == Some(b"h2") {
        let (h2, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        TlsConn {
            peer,
            alpn,
            h1: None,
            h2: Some(h2),
        }
    } else {
        let (h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        TlsConn {
            peer,
            alpn,
            h1: Some(h1),
            h2: None,
        }
    }
}

/// Status, body and trailers of one exchange.
struct Got {
    status: u16,
    headers: HeaderMap,
    body: String,
    trailers: Option<HeaderMap>,
}

async fn collect(resp: Response<Incoming>) -> Got {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    Got {
        status,
        headers,
        body: String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
        trailers,
    }
}

fn request(host: &str, path: &str) -> Request<Empty<Bytes>> {
    Request::builder()
        .uri(path)
        .header("host", host)
        .body(Empty::new())
        .unwrap()
}

/// An h2 request: absolute URI, `te: trailers` as gRPC clients send it.
fn h2_request(scheme: &str, host: &str, path: &str) -> Request<Empty<Bytes>> {
    Request::builder()
        .uri(format!("{scheme}://{host}{path}"))
        .header("te", "trailers")
        .version(hyper::Version::HTTP_2)
        .body(Empty::new())
        .unwrap()
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

fn config(text: &str) -> Config {
    parse(text, "test.toml").unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `config` in-process; returns its listener addresses and TLS reloader.
async fn start(config: &Config) -> (Vec<SocketAddr>, switchyard::tls::TlsReloader, Arc<Table>) {
    let table = Arc::new(Table::from_config(config).unwrap());
    let proxy = Proxy::bind(config, Arc::clone(&table)).await.unwrap();
    let addrs = proxy.local_addrs();
    let reloader = proxy.tls_reloader();
    tokio::spawn(proxy.run(std::future::pending()));
    (addrs, reloader, table)
}

async fn plain_get(addr: SocketAddr, host: &str, path: &str) -> Got {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    collect(tx.send_request(request(host, path)).await.unwrap()).await
}

#[tokio::test]
async fn https_client_reaches_an_https_backend_and_sni_picks_the_listener_certificate() {
    let ca = Ca::new("switchyard test CA");
    let a = ca.issue(&["a.test"], false);
    let b = ca.issue(&["b.test"], false);
    let backend_cert = ca.issue(&["backend.test"], false);
    let be = backend("secure-backend", Some(server_config(&backend_cert))).await;
    let cfg = config(&format!(
        r#"
[[listener]]
listen = "127.0.0.1:0"
routes = [{{ upstream = "sslback" }}]
tls = {{ certificates = [{{ cert = "{}", key = "{}" }}, {{ cert = "{}", key = "{}" }}] }}

[upstream.sslback]
scheme = "https"
tls_ca = "{}"
tls_server_name = "backend.test"
servers = [{{ addr = "{}" }}]
"#,
        path(&a.cert),
        path(&a.key),
        path(&b.cert),
        path(&b.key),
        path(&ca.pem_path()),
        be.addr
    ));
    let (addrs, _, _) = start(&cfg).await;

    let mut to_a = tls_connect(addrs[0], &ca.pem_path(), "a.test", &[b"http/1.1"]).await;
    assert!(
        to_a.peer == a.der,
        "SNI a.test must get a.test's certificate"
    );
    let got = collect(
        to_a.h1
            .as_mut()
            .unwrap()
            .send_request(request("a.test", "/"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((got.status, got.body.as_str()), (200, "secure-backend"));
    assert_eq!(got.headers["x-seen-proto"], "https");

    let to_b = tls_connect(addrs[0], &ca.pem_path(), "b.test", &[b"http/1.1"]).await;
    assert!(
        to_b.peer == b.der,
        "SNI b.test must get b.test's certificate"
    );
    assert_eq!(to_b.alpn.as_deref(), Some(&b"http/1.1"[..]));
}

#[tokio::test]
async fn a_backend_certificate_from_another_ca_is_a_502_and_tls_verify_false_passes() {
    let ours = Ca::new("ours");
    let theirs = Ca::new("theirs");
    let stranger = theirs.issue(&["127.0.0.1"], false);
    let be = backend("stranger", Some(server_config(&stranger))).await;
    let cfg = config(&format!(
        r#"
[[listener]]
listen = "127.0.0.1:0"
routes = [{{ host = "strict", upstream = "strict" }}, {{ host = "lax", upstream = "lax" }}]

[upstream.strict]
scheme = "https"
tls_ca = "{}"
retry = {{ tries = 1 }}
servers = [{{ addr = "{}" }}]

[upstream.lax]
scheme = "https"
tls_verify = false
servers = [{{ addr = "{}" }}]
"#,
        path(&ours.pem_path()),
        be.addr,
        be.addr
    ));
    let (addrs, _, _) = start(&cfg).await;

    let strict = plain_get(addrs[0], "strict", "/").await;
    assert_eq!(strict.status, 502);
    assert!(
        strict.body.contains("TLS handshake with")
            && strict.body.contains("invalid peer certificate"),
        "the 502 says why: {}",
        strict.body
    );
    let lax = plain_get(addrs[0], "lax", "/").await;
    assert_eq!((lax.status, lax.body.as_str()), (200, "stranger"));
}

/// 100 requests at once on one client connection; every answer keeps its trailers.
async fn hundred_streams(
    tx: &hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    scheme: &str,
) -> Vec<Got> {
    let all = (0..100).map(|_| {
        let mut tx = tx.clone();
        let req = h2_request(scheme, "grpc.test", "/trailers");
        async move { collect(tx.send_request(req).await.unwrap()).await }
    });
    futures_util::future::join_all(all).await
}

fn assert_trailers_survived(got: &[Got], body: &str) {
    assert_eq!(got.len(), 100);
    for g in got {
        assert_eq!((g.status, g.body.as_str()), (200, body));
        let t = g
            .trailers
            .as_ref()
            .expect("trailers must survive the proxy");
        assert_eq!(t["grpc-status"], "0");
        assert_eq!(t["grpc-message"], "fine");
        assert_eq!(g.headers["x-seen-te"], "trailers");
    }
}

#[tokio::test]
async fn an_h2_prior_knowledge_client_multiplexes_100_streams_over_h2c_and_trailers_survive() {
    let be = backend("h2c-backend", None).await;
    let cfg = config(&format!(
        r#"
[[listener]]
listen = "127.0.0.1:0"
routes = [{{ upstream = "grpc" }}]

[upstream.grpc]
protocol = "h2c"
servers = [{{ addr = "{}" }}]
"#,
        be.addr
    ));
    let (addrs, _, _) = start(&cfg).await;
    let tcp = TcpStream::connect(addrs[0]).await.unwrap();
    let (tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let got = hundred_streams(&tx, "http").await;
    assert_trailers_survived(&got, "h2c-backend");
    assert_eq!(
        be.connections.load(Ordering::SeqCst),
        1,
        "100 concurrent requests share one HTTP/2 connection to the server"
    );
}

#[tokio::test]
async fn an_alpn_h2_client_multiplexes_100_streams_to_an_h2_tls_backend_and_trailers_survive() {
    let ca = Ca::new("h2 CA");
    let front = ca.issue(&["grpc.test"], false);
    let back = ca.issue(&["127.0.0.1"], false);
    let be = backend("h2-tls-backend", Some(server_config(&back))).await;
    let cfg = config(&format!(
        r#"
[[listener]]
listen = "127.0.0.1:0"
routes = [{{ upstream = "grpc" }}]
tls = {{ certificates = [{{ cert = "{}", key = "{}" }}], min_version = "1.3" }}

[upstream.grpc]
scheme = "https"
protocol = "h2"
tls_ca = "{}"
servers = [{{ addr = "{}" }}]
"#,
        path(&front.cert),
        path(&front.key),
        path(&ca.pem_path()),
        be.addr
    ));
    let (addrs, _, _) = start(&cfg).await;
    let conn = tls_connect(addrs[0], &ca.pem_path(), "grpc.test", &[b"h2", b"http/1.1"]).await;
    assert_eq!(conn.alpn.as_deref(), Some(&b"h2"[..]), "ALPN picks h2");
    let got = hundred_streams(conn.h2.as_ref().unwrap(), "https").await;
    assert_trailers_survived(&got, "h2-tls-backend");
    assert_eq!(be.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_https_health_check_marks_a_backend_with_an_expired_certificate_unhealthy() {
    let ca = Ca::new("health CA");
    let good = backend(
        "good",
        Some(server_config(&ca.issue(&["127.0.0.1"], false))),
    )
    .await;
    let expired = backend(
        "expired",
        Some(server_config(&ca.issue(&["127.0.0.1"], true))),
    )
    .await;
    let cfg = config(&format!(
        r#"
[[listener]]
listen = "127.0.0.1:0"
routes = [{{ upstream = "sslback" }}]

[upstream.sslback]
scheme = "https"
tls_ca = "{}"
servers = [{{ addr = "{}" }}, {{ addr = "{}" }}]
health_check = {{ type = "https", path = "/", interval = "50ms", timeout = "1s", fall = 1, rise = 1 }}
"#,
        path(&ca.pem_path()),
        good.addr,
        expired.addr
    ));
    let (_, _, table) = start(&cfg).await;
    let mut events = table.subscribe();
    let checker = switchyard::health::active::spawn(Arc::clone(&table));
    let expired_addr = expired.addr.to_string();
    let verdict = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let e = events.recv().await.unwrap();
            if e.change == "health" {
                return e;
            }
        }
    })
    .await
    .expect("a health change within 10s");
    checker.abort();
    assert_eq!(verdict.server.as_deref(), Some(expired_addr.as_str()));
    assert_eq!(verdict.new.as_deref(), Some("unhealthy"));
    let servers = table
        .upstream("sslback")
        .unwrap()
        .snapshot()
        .servers
        .clone();
    let health: Vec<_> = servers
        .iter()
        .map(|s| (s.addr.clone(), s.runtime.stats.health()))
        .collect();
    assert_eq!(
        health,
        vec![
            (good.addr.to_string(), switchyard::upstream::Health::Healthy),
            (expired_addr, switchyard::upstream::Health::Unhealthy),
        ]
    );
}

#[tokio::test]
async fn after_a_reload_new_connections_get_the_new_certificate_and_an_open_one_continues() {
    let ca = Ca::new("reload CA");
    let old = ca.issue(&["site.test"], false);
    let be = backend("plain", None).await;
    let live = ca.dir.path().join("live");
    std::fs::create_dir(&live).unwrap();
    let (cert, key) = (live.join("cert.pem"), live.join("key.pem"));
    std::fs::copy(&old.cert, &cert).unwrap();
    std::fs::copy(&old.key, &key).unwrap();
    let cfg = config(&format!(
        r#"
[[listener]]
listen = "127.0.0.1:0"
routes = [{{ upstream = "app" }}]
tls = {{ certificates = [{{ cert = "{}", key = "{}" }}] }}

[upstream.app]
servers = [{{ addr = "{}" }}]
"#,
        path(&cert),
        path(&key),
        be.addr
    ));
    let (addrs, reloader, _) = start(&cfg).await;
    let mut open = tls_connect(addrs[0], &ca.pem_path(), "site.test", &[b"http/1.1"]).await;
    assert!(open.peer == old.der);
    let first = open.h1.as_mut().unwrap();
    assert_eq!(
        collect(first.send_request(request("site.test", "/")).await.unwrap())
            .await
            .status,
        200
    );

    let new = ca.issue(&["site.test"], false);
    std::fs::copy(&new.cert, &cert).unwrap();
    std::fs::copy(&new.key, &key).unwrap();
    assert_eq!(reloader.reload().map_err(|e| e.to_string()), Ok(1));

    let fresh = tls_connect(addrs[0], &ca.pem_path(), "site.test", &[b"http/1.1"]).await;
    assert!(
        fresh.peer == new.der,
        "a new connection gets the reloaded certificate"
    );
    let again = open.h1.as_mut().unwrap();
    let got = collect(again.send_request(request("site.test", "/")).await.unwrap()).await;
    assert_eq!(
        (got.status, got.body.as_str()),
        (200, "plain"),
        "the open connection goes on"
    );

    // A broken file is refused and the listener keeps serving what it had.
    std::fs::write(&key, "not a key").unwrap();
    assert!(reloader.reload().is_err());
    let still = tls_connect(addrs[0], &ca.pem_path(), "site.test", &[b"http/1.1"]).await;
    assert!(still.peer == new.der);
}

#[tokio::test]
async fn the_seed_configuration_translated_runs_with_sslback_on_local_https_backends() {
    let ca = Ca::new("seed CA");
    let cert = ca.issue(&["127.0.0.1"], false);
    let one = backend("ssl-one", Some(server_config(&cert))).await;
    let two = backend("ssl-two", Some(server_config(&cert))).await;
    let foo = backend("foo", None).await;
    // The seed's two upstreams; sslback's servers are the local HTTPS backends,
    // checked the way the seed's checker checks both upstreams (over TLS here).
    let text = format!(
        r#"
[[listener]]
listen = "127.0.0.1:0"
routes = [{{ host = "sslback", upstream = "sslback" }}, {{ path_prefix = "/", upstream = "foo.com" }}]

[upstream."foo.com"]
balance = "round_robin"
servers = [{{ addr = "{}" }}]

[upstream.sslback]
scheme = "https"
tls_ca = "{}"
servers = [{{ addr = "{}" }}, {{ addr = "{}" }}]
health_check = {{ type = "https", http_req = "GET / HTTP/1.0\r\nHost: foo.com\r\n\r\n",
  interval = "2s", timeout = "1s", fall = 3, rise = 2, valid_statuses = [200, 302], concurrency = 10 }}
"#,
        foo.addr,
        path(&ca.pem_path()),
        one.addr,
        two.addr
    );
    let sy = support::Switchyard::run_config(&text, 1);
    let mut bodies = Vec::new();
    for _ in 0..4 {
        bodies.push(plain_get(sy.addr(), "sslback", "/").await.body);
    }
    bodies.sort();
    assert_eq!(bodies, ["ssl-one", "ssl-one", "ssl-two", "ssl-two"]);
    assert_eq!(plain_get(sy.addr(), "foo.com", "/").await.body, "foo");
}

#[tokio::test]
async fn the_admin_endpoint_reloads_listener_certificates() {
    let ca = Ca::new("admin reload CA");
    let old = ca.issue(&["site.test"], false);
    let be = backend("plain", None).await;
    let live = ca.dir.path().join("live");
    std::fs::create_dir(&live).unwrap();
    let (cert, key) = (live.join("cert.pem"), live.join("key.pem"));
    std::fs::copy(&old.cert, &cert).unwrap();
    std::fs::copy(&old.key, &key).unwrap();
    let text = format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listener]]
listen = "127.0.0.1:0"
routes = [{{ upstream = "app" }}]
tls = {{ certificates = [{{ cert = "{}", key = "{}" }}] }}

[upstream.app]
servers = [{{ addr = "{}" }}]
"#,
        path(&cert),
        path(&key),
        be.addr
    );
    let sy = support::Switchyard::run_config_with_admin(&text, 1);
    let admin = sy.admin();
    let reload = || support::Call::new(hyper::Method::POST, "/api/v1/tls/reload");

    let mut open = tls_connect(sy.addr(), &ca.pem_path(), "site.test", &[b"http/1.1"]).await;
    assert!(
        open.peer == old.der,
        "before the reload: the old certificate"
    );
    let got = collect(
        open.h1
            .as_mut()
            .unwrap()
            .send_request(request("site.test", "/"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((got.status, got.body.as_str()), (200, "plain"));

    // A new certificate for the same name: another key and serial.
    let new = ca.issue(&["site.test"], false);
    assert!(new.der != old.der);
    std::fs::copy(&new.cert, &cert).unwrap();
    std::fs::copy(&new.key, &key).unwrap();
    let r = reload().send(admin).await;
    assert_eq!(r.status, 200, "{r}");
    assert_eq!(r.json, serde_json::json!({ "reloaded": 1 }), "{r}");

    let fresh = tls_connect(sy.addr(), &ca.pem_path(), "site.test", &[b"http/1.1"]).await;
    assert!(
        fresh.peer == new.der,
        "a connection opened after the reload gets the new certificate"
    );
    let got = collect(
        open.h1
            .as_mut()
            .unwrap()
            .send_request(request("site.test", "/"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (got.status, got.body.as_str()),
        (200, "plain"),
        "the connection opened before the reload still completes a request"
    );

    // A broken key file: 422, and the listener keeps what it had.
    std::fs::write(&key, "not a key").unwrap();
    let r = reload().send(admin).await;
    assert_eq!(r.status, 422, "{r}");
    assert_eq!(r.code(), "TlsReloadFailed", "{r}");
    let still = tls_connect(sy.addr(), &ca.pem_path(), "site.test", &[b"http/1.1"]).await;
    assert!(
        still.peer == new.der,
        "after a failed reload the last good certificate is still served"
    );
    let got = collect(
        open.h1
            .as_mut()
            .unwrap()
            .send_request(request("site.test", "/"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(got.status, 200);
}

/// An HTTPS backend that requires a client certificate issued by `clients`.
fn mtls_server_config(leaf: &Leaf, clients: &Ca) -> Arc<rustls::ServerConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(clients.pem_path()).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&leaf.key).unwrap();
    let mut c = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![leaf.der.clone()], key)
        .unwrap();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

#[tokio::test]
async fn an_upstream_that_requires_a_client_certificate_gets_ours() {
    let ca = Ca::new("mTLS CA");
    let server = ca.issue(&["127.0.0.1"], false);
    let client = ca.issue(&["switchyard.test"], false);
    let be = backend("mtls-backend", Some(mtls_server_config(&server, &ca))).await;
    let cfg = config(&format!(
        r#"
[[listener]]
listen = "127.0.0.1:0"
routes = [{{ host = "with", upstream = "with_cert" }}, {{ host = "without", upstream = "without_cert" }}]

[upstream.with_cert]
scheme = "https"
tls_ca = "{ca}"
tls_client_cert = "{cert}"
tls_client_key = "{key}"
servers = [{{ addr = "{addr}" }}]

[upstream.without_cert]
scheme = "https"
tls_ca = "{ca}"
retry = {{ tries = 1 }}
servers = [{{ addr = "{addr}" }}]
"#,
        ca = path(&ca.pem_path()),
        cert = path(&client.cert),
        key = path(&client.key),
        addr = be.addr
    ));
    let (addrs, _, _) = start(&cfg).await;

    let with = plain_get(addrs[0], "with", "/").await;
    assert_eq!(
        (with.status, with.body.as_str()),
        (200, "mtls-backend"),
        "with tls_client_cert the backend accepts us"
    );
    let without = plain_get(addrs[0], "without", "/").await;
    assert_eq!(
        without.status, 502,
        "without a client certificate the backend refuses us: {}",
        without.body
    );
}

//! The dashboard (`GET /` on the admin listener) in a real browser: Debian's
//! `chromium`, headless, driven through `chromedriver` (WebDriver) with
//! fantoccini, against the real binary.
//!
//! Where `chromium` or `chromedriver` is not installed each test says SKIPPED
//! and passes, unless `SWITCHYARD_REQUIRE_BROWSER` is set (as `.ci/run` sets
//! it): then a missing browser is a failure. The tests take turns with the one
//! browser they start each (the machine has two cores), and together take well
//! under a minute.
//!
//! `SWITCHYARD_SCREENSHOT=docs/dashboard.png cargo test --test suite dashboard_browser::`
//! writes the README's screenshot; without it the screenshot goes to the
//! target directory only.

use crate::support;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fantoccini::{Client, ClientBuilder, Locator};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use support::{Call, Switchyard};

// ---------------------------------------------------------------------------
// The browser
// ---------------------------------------------------------------------------

/// One browser at a time: Chromium is heavy for two cores, and the timings
/// below are the page's, not the scheduler's.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn on_path(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|p| p.join(name))
        .find(|p| p.is_file())
}

/// `chromium` and `chromedriver`, or `None` after saying SKIPPED (a failure
/// when `SWITCHYARD_REQUIRE_BROWSER` is set).
fn browser_tools(test: &str) -> Option<(PathBuf, PathBuf)> {
    match (on_path("chromium"), on_path("chromedriver")) {
        (Some(chromium), Some(driver)) => Some((chromium, driver)),
        _ => {
            assert!(
                std::env::var_os("SWITCHYARD_REQUIRE_BROWSER").is_none(),
                "{test}: chromium and chromedriver are not installed (apt-get install chromium \
                 chromium-driver; .ci/run installs them) and SWITCHYARD_REQUIRE_BROWSER is set"
            );
            eprintln!(
                "{test}: SKIPPED: chromium/chromedriver not installed; the dashboard's browser \
                 tests need them (apt-get install chromium chromium-driver; \
                 SWITCHYARD_REQUIRE_BROWSER=1 makes this a failure)"
            );
            None
        }
    }
}

/// A headless Chromium session through a chromedriver of its own. Dropping it
/// kills chromedriver's process group (the browser with it); [`Browser::close`]
/// ends the session properly first.
struct Browser {
    client: Option<Client>,
    driver: Child,
    profile: tempfile::TempDir,
}

impl Browser {
    async fn start(test: &str) -> Option<Browser> {
        let (chromium, chromedriver) = browser_tools(test)?;
        let profile = tempfile::tempdir().unwrap();
        let port = support::closed_port().port();
        let log = std::fs::File::create(profile.path().join("chromedriver.log")).unwrap();
        let driver = {
            use std::os::unix::process::CommandExt;
            Command::new(&chromedriver)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                // Its own process group, so that drop can end it and the
                // browser it started together.
                .process_group(0)
                .spawn()
                .unwrap()
        };
        let mut me = Browser {
            client: None,
            driver,
            profile,
        };
        let driver_addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_until(
            "chromedriver to answer /status",
            Duration::from_secs(20),
            || async {
                let r = support::try_get(driver_addr, "/status").await.ok()?;
                let v: Value = serde_json::from_str(&r.body).ok()?;
                (v["value"]["ready"] == true).then_some(())
            },
        )
        .await;
        let user_data = me.profile.path().join("chromium-profile");
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--window-size=1400,900",
                    format!("--user-data-dir={}", user_data.display()),
                ],
            },
        });
        let Value::Object(caps) = caps else {
            unreachable!()
        };
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://{driver_addr}"))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start a Chromium session: {e}\nchromedriver log:\n{}",
                    std::fs::read_to_string(me.profile.path().join("chromedriver.log"))
                        .unwrap_or_default()
                )
            });
        me.client = Some(client);
        Some(me)
    }

    fn c(&self) -> &Client {
        self.client.as_ref().unwrap()
    }

    async fn goto(&self, url: &str) {
        self.c().goto(url).await.unwrap();
    }

    async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.c().execute(script, args).await.unwrap()
    }

    /// Opens the dashboard of `admin` and waits until it has rendered once.
    async fn open_dashboard(&self, admin: SocketAddr) {
        self.goto(&format!("http://{admin}/")).await;
        wait_until(
            "the dashboard's first render",
            Duration::from_secs(10),
            || async {
                let v = self
                    .js("return window.__dash ? window.__dash.ready : null", vec![])
                    .await;
                (v == true).then_some(())
            },
        )
        .await;
    }

    /// The text of `data-field=FIELD` in a server's row, or `None` when there
    /// is no such row (yet).
    async fn field(&self, upstream: &str, server: &str, field: &str) -> Option<String> {
        let v = self
            .js(
                "const [u, s, f] = arguments;
                 const up = document.querySelector(`[data-upstream=\"${CSS.escape(u)}\"]`);
                 const row = up && up.querySelector(`[data-server=\"${CSS.escape(s)}\"]`);
                 const cell = row && row.querySelector(`[data-field=\"${f}\"]`);
                 return cell ? cell.textContent : null;",
                vec![json!(upstream), json!(server), json!(field)],
            )
            .await;
        v.as_str().map(String::from)
    }

    /// Waits until a server's field reads `want`; how long it took.
    async fn wait_field(&self, upstream: &str, server: &str, field: &str, want: &str) -> Duration {
        let start = Instant::now();
        wait_until(
            &format!("{upstream} {server} {field} = {want:?} on the page"),
            Duration::from_secs(5),
            || async {
                (self.field(upstream, server, field).await.as_deref() == Some(want)).then_some(())
            },
        )
        .await;
        start.elapsed()
    }

    /// The whole text of a server's row.
    async fn row_text(&self, upstream: &str, server: &str) -> String {
        let v = self
            .js(
                "const [u, s] = arguments;
                 const up = document.querySelector(`[data-upstream=\"${CSS.escape(u)}\"]`);
                 const row = up && up.querySelector(`[data-server=\"${CSS.escape(s)}\"]`);
                 return row ? row.textContent : '';",
                vec![json!(upstream), json!(server)],
            )
            .await;
        v.as_str().unwrap_or("").to_string()
    }

    /// A field of the fleet panel, or `None` while the panel is hidden.
    async fn fleet(&self, field: &str) -> Option<String> {
        let v = self
            .js(
                "const f = document.getElementById('fleet');
                 const d = f.querySelector(`[data-field=\"fleet_${arguments[0]}\"]`);
                 return f.hidden || !d ? null : d.textContent;",
                vec![json!(field)],
            )
            .await;
        v.as_str().map(String::from)
    }

    /// The page's own timings (`window.__dash.perf`).
    async fn perf(&self) -> Value {
        self.js("return window.__dash.perf", vec![]).await
    }

    async fn count(&self, css: &str) -> usize {
        self.c().find_all(Locator::Css(css)).await.unwrap().len()
    }

    async fn click(&self, css: &str) {
        self.c()
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css} on the page: {e}"))
            .click()
            .await
            .unwrap();
    }

    /// What the page's error handlers caught: script errors, unhandled
    /// rejections, content security policy violations.
    async fn errors(&self) -> Vec<String> {
        let v = self
            .js(
                "return window.__dash ? window.__dash.errors : ['no __dash']",
                vec![],
            )
            .await;
        serde_json::from_value(v).unwrap()
    }

    async fn assert_no_errors(&self) {
        let errors = self.errors().await;
        assert!(
            errors.is_empty(),
            "JavaScript errors on the page: {errors:#?}"
        );
    }

    async fn close(mut self) {
        if let Some(c) = self.client.take() {
            let _ = c.close().await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The group chromedriver leads: chromedriver and the browser it started.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Polls `check` every 25 ms until it gives a value; panics after `within`.
async fn wait_until<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "waited {within:?} for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---------------------------------------------------------------------------
// Little servers of the tests' own
// ---------------------------------------------------------------------------

type Handler = Arc<dyn Fn(Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync>;

/// Serves `handler` over HTTP/1.1 on `listener` until the test's runtime ends.
fn serve(listener: TcpListener, handler: Handler) {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = Arc::clone(&handler);
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let resp = handler(req);
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
}

/// A backend that answers a request only when told: in-flight requests the
/// test holds as long as it wants, without a timer.
struct Gate {
    addr: SocketAddr,
    open: Arc<Notify>,
}

async fn gate() -> Gate {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let open = Arc::new(Notify::new());
    let release = Arc::clone(&open);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let release = Arc::clone(&release);
            tokio::spawn(async move {
                let svc = service_fn(move |_req: Request<Incoming>| {
                    let release = Arc::clone(&release);
                    async move {
                        release.notified().await;
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from("released"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Gate { addr, open }
}

// ---------------------------------------------------------------------------
// The API, for checking what the page did
// ---------------------------------------------------------------------------

async fn server_json(admin: SocketAddr, upstream: &str, server: &str) -> Option<Value> {
    let r = Call::get(&format!("/api/v1/upstreams/{upstream}/servers/{server}"))
        .send(admin)
        .await;
    (r.status == StatusCode::OK).then_some(r.json)
}

async fn upstream_json(admin: SocketAddr, upstream: &str) -> Value {
    let r = Call::get(&format!("/api/v1/upstreams/{upstream}"))
        .send(admin)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r}");
    r.json
}

fn app_config(servers: &[SocketAddr], admin_extra: &str) -> String {
    let list: Vec<String> = servers
        .iter()
        .map(|a| format!("{{ addr = \"{a}\" }}"))
        .collect();
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{admin_extra}\n\
         [[listener]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ path_prefix = \"/\", upstream = \"app\" }}]\n\
         [upstream.app]\nservers = [{}]\n",
        list.join(", ")
    )
}

fn screenshot_to(png: &[u8]) {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&tmp, png).unwrap();
    eprintln!("dashboard screenshot: {}", tmp.display());
    if let Some(path) = std::env::var_os("SWITCHYARD_SCREENSHOT") {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
        std::fs::write(&path, png).unwrap();
        eprintln!("dashboard screenshot: {}", path.display());
    }
}

// ---------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------

/// The page shows every server, follows changes made through the API without a
/// reload, and its buttons change the table: drain (watching the in-flight
/// request finish), weight, add, remove.
#[tokio::test]
async fn the_page_follows_the_table_and_its_buttons_change_it() {
    let _turn = ONE_BROWSER.lock().await;
    let Some(browser) =
        Browser::start("the_page_follows_the_table_and_its_buttons_change_it").await
    else {
        return;
    };
    let alpha = support::named("alpha").await;
    let bravo = support::named("bravo").await;
    let dead = support::closed_port();
    let held = gate().await;
    let text = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[listener]]\nlisten = \"127.0.0.1:0\"\n\
         routes = [{{ path_prefix = \"/held\", upstream = \"held\" }}, {{ path_prefix = \"/\", upstream = \"app\" }}]\n\
         [upstream.app]\nservers = [{{ addr = \"{}\", weight = 2 }}, {{ addr = \"{}\" }}, {{ addr = \"{dead}\" }}]\n\
         health_check = {{ type = \"tcp\", interval = \"300ms\", timeout = \"200ms\", fall = 1, rise = 1 }}\n\
         [upstream.held]\nservers = [{{ addr = \"{}\" }}]\n",
        alpha.addr, bravo.addr, held.addr
    );
    let sy = Switchyard::run_config_with_admin(&text, 1);
    let (admin, proxy) = (sy.admin(), sy.addr());
    let (a, b, d, h) = (
        alpha.addr.to_string(),
        bravo.addr.to_string(),
        dead.to_string(),
        held.addr.to_string(),
    );

    // Some traffic, so that rates and sparklines have something to show.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            // A rate that swings between about 15 and 60 a second.
            let start = Instant::now();
            for _ in 0..4000u32 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let _ = support::try_get(proxy, "/").await;
                let phase = (start.elapsed().as_secs_f64() / 2.0).sin();
                tokio::time::sleep(Duration::from_secs_f64(0.04 + 0.025 * phase)).await;
            }
        })
    };

    browser.open_dashboard(admin).await;
    for s in [&a, &b, &d] {
        browser.wait_field("app", s, "state", "up").await;
    }
    browser.wait_field("held", &h, "state", "up").await;
    browser.wait_field("app", &a, "health", "healthy").await;
    browser.wait_field("app", &d, "health", "unhealthy").await;
    assert_eq!(
        browser.field("app", &d, "eligible").await.as_deref(),
        Some("no")
    );
    // Out of traffic stands out: the row is marked and says so.
    let out = browser
        .js(
            "return [...document.querySelectorAll('[data-upstream=\"app\"] .srv.out')].map(r => r.dataset.server)",
            vec![],
        )
        .await;
    assert_eq!(
        out,
        json!([d]),
        "only the unhealthy server is marked out of traffic"
    );
    browser
        .js("window.__no_reload = 42; return null", vec![])
        .await;
    assert_eq!(
        browser
            .js("return document.getElementById('fleet').hidden", vec![])
            .await,
        json!(true),
        "no [cluster]: no fleet panel"
    );

    // A change made elsewhere shows within 2 s, without a reload.
    let r = Call::patch(
        &format!("/api/v1/upstreams/app/servers/{b}"),
        r#"{"state":"down"}"#,
    )
    .send(admin)
    .await;
    assert_eq!(r.status, StatusCode::OK, "{r}");
    let took = browser.wait_field("app", &b, "state", "down").await;
    assert!(
        took < Duration::from_secs(2),
        "the page showed down after {took:?}"
    );
    eprintln!("a state change made through the API showed on the page after {took:?}");
    assert_eq!(
        browser.field("app", &b, "eligible").await.as_deref(),
        Some("no")
    );
    let r = Call::patch(
        &format!("/api/v1/upstreams/app/servers/{a}"),
        r#"{"weight":3}"#,
    )
    .send(admin)
    .await;
    assert_eq!(r.status, StatusCode::OK, "{r}");
    let took = browser.wait_field("app", &a, "weight", "3").await;
    assert!(
        took < Duration::from_secs(2),
        "the page showed weight 3 after {took:?}"
    );
    // The log says who changed what.
    wait_until(
        "the event log to show the change",
        Duration::from_secs(3),
        || async {
            let log = browser
                .js(
                    "return document.getElementById('events').textContent",
                    vec![],
                )
                .await;
            let log = log.as_str().unwrap_or("").to_string();
            (log.contains(&format!("app {b} state: up → down"))
                && log.contains(&format!("app {a} weight: 2 → 3")))
            .then_some(())
        },
    )
    .await;
    assert_eq!(
        browser
            .js("return document.querySelector('[data-upstream=\"app\"] [data-field=\"eligible_servers\"]').textContent", vec![])
            .await,
        json!("1 of 3 eligible")
    );

    // Drain, with a request in flight on the server: the page shows it
    // draining with 1 in flight, then drained at 0 once the request ends.
    let request = tokio::spawn(async move { support::try_get(proxy, "/held").await });
    browser.wait_field("held", &h, "active", "1").await;
    browser
        .click(&format!(
            "[data-upstream=\"held\"] [data-server=\"{h}\"] button[data-action=\"drain\"]"
        ))
        .await;
    wait_until(
        "the API to report drain",
        Duration::from_secs(3),
        || async {
            let s = server_json(admin, "held", &h).await?;
            (s["state"] == "drain").then_some(())
        },
    )
    .await;
    browser.wait_field("held", &h, "state", "drain").await;
    assert_eq!(
        browser.field("held", &h, "active").await.as_deref(),
        Some("1"),
        "the held request is still in flight"
    );
    assert!(browser.row_text("held", &h).await.contains("draining"));
    held.open.notify_one();
    let answer = request.await.unwrap().unwrap();
    assert_eq!(answer.body, "released");
    browser.wait_field("held", &h, "active", "0").await;
    assert!(browser.row_text("held", &h).await.contains("drained"));

    // Weight edit: the pencil, a number, Enter.
    browser
        .click(&format!(
            "[data-upstream=\"app\"] [data-server=\"{a}\"] button[data-action=\"weight\"]"
        ))
        .await;
    let input = browser
        .c()
        .find(Locator::Css(&format!(
            "[data-upstream=\"app\"] [data-server=\"{a}\"] input[data-field=\"weight_input\"]"
        )))
        .await
        .unwrap();
    // Control-A, release, 5, Enter (WebDriver's key codes; `clear` would
    // blur the field, which cancels the edit).
    input.send_keys("\u{E009}a\u{E000}5\u{E007}").await.unwrap();
    wait_until(
        "the API to report weight 5",
        Duration::from_secs(3),
        || async {
            let s = server_json(admin, "app", &a).await?;
            (s["weight"] == 5).then_some(())
        },
    )
    .await;
    browser.wait_field("app", &a, "weight", "5").await;

    // Add a server through the form, then remove it (two clicks).
    let extra = support::closed_port().to_string();
    let form = "[data-upstream=\"app\"] form.add-server";
    browser
        .c()
        .find(Locator::Css(&format!("{form} input[name=\"addr\"]")))
        .await
        .unwrap()
        .send_keys(&extra)
        .await
        .unwrap();
    browser
        .c()
        .find(Locator::Css(&format!("{form} input[name=\"down\"]")))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .click(&format!("{form} button[data-action=\"add\"]"))
        .await;
    wait_until(
        "the API to list the added server",
        Duration::from_secs(3),
        || async {
            let s = server_json(admin, "app", &extra).await?;
            (s["state"] == "down").then_some(())
        },
    )
    .await;
    browser.wait_field("app", &extra, "state", "down").await;
    let remove =
        format!("[data-upstream=\"app\"] [data-server=\"{extra}\"] button[data-action=\"remove\"]");
    browser.click(&remove).await;
    // One click only arms it.
    assert!(server_json(admin, "app", &extra).await.is_some());
    browser.click(&remove).await;
    wait_until(
        "the API to drop the removed server",
        Duration::from_secs(3),
        || async {
            server_json(admin, "app", &extra)
                .await
                .is_none()
                .then_some(())
        },
    )
    .await;
    wait_until("the row to go", Duration::from_secs(3), || async {
        browser
            .field("app", &extra, "state")
            .await
            .is_none()
            .then_some(())
    })
    .await;

    // Up again, from the page.
    browser
        .click(&format!(
            "[data-upstream=\"app\"] [data-server=\"{b}\"] button[data-action=\"up\"]"
        ))
        .await;
    wait_until(
        "the API to report bravo up",
        Duration::from_secs(3),
        || async {
            let s = server_json(admin, "app", &b).await?;
            (s["state"] == "up").then_some(())
        },
    )
    .await;
    browser.wait_field("app", &b, "state", "up").await;

    // A server down for the picture, and rates on the page.
    let r = Call::patch(
        &format!("/api/v1/upstreams/app/servers/{b}"),
        r#"{"state":"down"}"#,
    )
    .send(admin)
    .await;
    assert_eq!(r.status, StatusCode::OK, "{r}");
    wait_until(
        "a request rate on the page",
        Duration::from_secs(5),
        || async {
            let rps = browser.field("app", &a, "rps").await?;
            (rps.parse::<f64>().ok()? > 0.0).then_some(())
        },
    )
    .await;
    assert_eq!(
        browser.js("return window.__no_reload", vec![]).await,
        json!(42),
        "the page was reloaded"
    );
    if std::env::var_os("SWITCHYARD_SCREENSHOT").is_some() {
        // For the README's picture: sparklines with some history.
        wait_until("60 s of history", Duration::from_secs(90), || async {
            let n = browser
                .js("return document.querySelector('[data-field=\"sparkline\"] polyline').getAttribute('points').trim().split(' ').length", vec![])
                .await;
            (n.as_u64()? >= 60).then_some(())
        })
        .await;
    }
    browser.assert_no_errors().await;
    screenshot_to(&browser.c().screenshot().await.unwrap());
    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();
    browser.close().await;
}

/// With a token, the page asks for it once (kept for the tab's session), shows
/// no buttons until it has a good one, and sends it with its changes.
#[tokio::test]
async fn with_a_token_the_page_asks_once_and_sends_it() {
    const TOKEN: &str = "dashboard-test-token-0123";
    let _turn = ONE_BROWSER.lock().await;
    let Some(browser) = Browser::start("with_a_token_the_page_asks_once_and_sends_it").await else {
        return;
    };
    let alpha = support::named("alpha").await;
    let a = alpha.addr.to_string();
    let sy = Switchyard::run_config_with_admin(
        &app_config(&[alpha.addr], &format!("token = \"{TOKEN}\"")),
        1,
    );
    let admin = sy.admin();
    browser.open_dashboard(admin).await;
    browser.wait_field("app", &a, "state", "up").await;
    assert!(
        browser
            .c()
            .find(Locator::Id("token-form"))
            .await
            .unwrap()
            .is_displayed()
            .await
            .unwrap()
    );
    assert_eq!(browser.count("button[data-action]").await, 0);

    let input = browser.c().find(Locator::Id("token-input")).await.unwrap();
    input.send_keys("not-the-token\u{E007}").await.unwrap();
    wait_until(
        "the page to refuse a wrong token",
        Duration::from_secs(3),
        || async {
            let note = browser
                .js(
                    "return document.getElementById('token-note').textContent",
                    vec![],
                )
                .await;
            note.as_str()?.contains("not accepted").then_some(())
        },
    )
    .await;
    assert_eq!(browser.count("button[data-action]").await, 0);

    input.clear().await.unwrap();
    input.send_keys(TOKEN).await.unwrap();
    input.send_keys("\u{E007}").await.unwrap();
    let down =
        format!("[data-upstream=\"app\"] [data-server=\"{a}\"] button[data-action=\"down\"]");
    wait_until("the buttons to appear", Duration::from_secs(3), || async {
        (browser.count(&down).await == 1).then_some(())
    })
    .await;
    assert!(
        !browser
            .c()
            .find(Locator::Id("token-form"))
            .await
            .unwrap()
            .is_displayed()
            .await
            .unwrap()
    );
    browser.click(&down).await;
    wait_until("the API to report down", Duration::from_secs(3), || async {
        let s = server_json(admin, "app", &a).await?;
        (s["state"] == "down").then_some(())
    })
    .await;
    browser.wait_field("app", &a, "state", "down").await;

    // Asked once: a new load of the page in the same tab has it.
    browser.open_dashboard(admin).await;
    wait_until(
        "the buttons without asking again",
        Duration::from_secs(3),
        || async { (browser.count(&down).await == 1).then_some(()) },
    )
    .await;
    assert!(
        !browser
            .c()
            .find(Locator::Id("token-form"))
            .await
            .unwrap()
            .is_displayed()
            .await
            .unwrap()
    );
    browser.assert_no_errors().await;
    browser.close().await;
}

/// `read_only`, and a client the write rules do not let change anything: the
/// page shows the table and no button.
#[tokio::test]
async fn read_only_and_readers_get_no_buttons() {
    let _turn = ONE_BROWSER.lock().await;
    let Some(browser) = Browser::start("read_only_and_readers_get_no_buttons").await else {
        return;
    };
    let alpha = support::named("alpha").await;
    let a = alpha.addr.to_string();
    for (admin_extra, says) in [
        ("read_only = true", "read-only (read_only = true)"),
        (
            "write_allow = [\"127.0.0.2\"]",
            "127.0.0.1 may read but not change the table",
        ),
    ] {
        let sy = Switchyard::run_config_with_admin(&app_config(&[alpha.addr], admin_extra), 1);
        browser.open_dashboard(sy.admin()).await;
        browser.wait_field("app", &a, "state", "up").await;
        assert_eq!(
            browser.count("button[data-action]").await,
            0,
            "{admin_extra}"
        );
        assert_eq!(browser.count("form.add-server").await, 0, "{admin_extra}");
        let access = browser
            .js(
                "return document.getElementById('access').textContent",
                vec![],
            )
            .await;
        assert!(
            access.as_str().unwrap().contains(says),
            "{admin_extra}: {access}"
        );
        browser.assert_no_errors().await;
    }
    browser.close().await;
}

/// A page of another site (served by the test on 127.0.0.2) tries every way a
/// browser lets it send a change to the admin API: forms to the three doors,
/// a no-cors fetch, a CORS fetch with JSON; and it frames the dashboard to
/// trick a click. Nothing changes, and the refusals are in the log.
#[tokio::test]
async fn a_cross_site_page_cannot_change_anything() {
    let _turn = ONE_BROWSER.lock().await;
    let Some(browser) = Browser::start("a_cross_site_page_cannot_change_anything").await else {
        return;
    };
    let alpha = support::named("alpha").await;
    let bravo = support::named("bravo").await;
    let a = alpha.addr.to_string();
    let sy = Switchyard::run_config_with_admin(&app_config(&[alpha.addr, bravo.addr], ""), 1);
    let admin = sy.admin();
    let before = upstream_json(admin, "app").await;

    let target = format!("http://{admin}");
    let attacker = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let attacker_addr = attacker.local_addr().unwrap();
    let page = format!(
        r#"<!doctype html><html><body>
<form id="ups" method="POST" action="{target}/ups_api?ups=app&act=down">
  <input name="server" value="{a}"></form>
<form id="batch" method="POST" enctype="text/plain" action="{target}/api/v1/batch">
  <input name='{{"operations":[{{"op":"patch","upstream":"app","server":0,"set":{{"state":"down"}}}}],"x":"' value='"}}'></form>
<form id="nginx" method="POST" enctype="text/plain" action="{target}/api/9/http/upstreams/app/servers">
  <input name='{{"server":"127.0.0.1:9","x":"' value='"}}'></form>
<iframe id="framed" src="{target}/" width="600" height="200"></iframe>
<script>
window.__attack = {{ done: false, results: [] }};
const go = new URLSearchParams(location.search).get('submit');
if (go) {{
  document.getElementById(go).submit();
}} else {{
  (async () => {{
    const tries = [
      ['no-cors POST', `{target}/api/v1/upstreams/app/servers`, {{ method: 'POST', mode: 'no-cors',
        headers: {{ 'Content-Type': 'text/plain' }}, body: JSON.stringify({{ addr: '127.0.0.1:9' }}) }}],
      ['cors PATCH', `{target}/api/v1/upstreams/app/servers/0`, {{ method: 'PATCH', mode: 'cors',
        headers: {{ 'Content-Type': 'application/json' }}, body: JSON.stringify({{ state: 'down' }}) }}],
      ['cors DELETE', `{target}/api/v1/upstreams/app/servers/1`, {{ method: 'DELETE', mode: 'cors' }}],
    ];
    for (const [name, url, init] of tries) {{
      try {{
        const r = await fetch(url, init);
        window.__attack.results.push(name + ': ' + r.type + ' ' + r.status);
      }} catch (e) {{
        window.__attack.results.push(name + ': ' + e.name);
      }}
    }}
    window.__attack.done = true;
  }})();
}}
</script></body></html>"#
    );
    let page: &'static str = Box::leak(page.into_boxed_str());
    serve(
        attacker,
        Arc::new(move |_req| {
            let mut r = Response::new(Full::new(Bytes::from_static(page.as_bytes())));
            r.headers_mut()
                .insert("content-type", "text/html; charset=utf-8".parse().unwrap());
            r
        }),
    );
    let evil = format!("http://{attacker_addr}/");

    browser.goto(&evil).await;
    let results = wait_until("the page's fetches", Duration::from_secs(10), || async {
        let v = browser
            .js(
                "return window.__attack && window.__attack.done ? window.__attack.results : null",
                vec![],
            )
            .await;
        (!v.is_null()).then_some(v)
    })
    .await;
    eprintln!("cross-site fetches: {results}");
    // The framed dashboard did not load: the browser refused to frame it and
    // shows its error page there instead.
    let framed = wait_until("the frame to settle", Duration::from_secs(10), || async {
        browser.c().enter_frame(0).await.ok()?;
        let v = browser
            .js(
                "return [location.href, typeof window.__dash, document.readyState]",
                vec![],
            )
            .await;
        browser.c().enter_parent_frame().await.ok()?;
        (v[0] != "about:blank" && v[2] == "complete").then_some(v)
    })
    .await;
    assert!(
        !framed[0].as_str().unwrap().starts_with(&target) && framed[1] == "undefined",
        "the dashboard loaded inside another site's frame: {framed}"
    );

    // Each form, submitted: the browser goes to the admin API's answer.
    for form in ["ups", "batch", "nginx"] {
        browser.goto(&format!("{evil}?submit={form}")).await;
        let body = wait_until(
            "the admin API's answer to the form",
            Duration::from_secs(10),
            || async {
                let url = browser.c().current_url().await.ok()?;
                if !url.as_str().starts_with(&target) {
                    return None;
                }
                let text = browser
                    .js(
                        "return document.body ? document.body.textContent : ''",
                        vec![],
                    )
                    .await;
                let text = text.as_str()?.to_string();
                (!text.is_empty()).then_some(text)
            },
        )
        .await;
        assert!(
            body.contains("another site"),
            "form {form}: the admin API answered {body}"
        );
    }

    let after = upstream_json(admin, "app").await;
    let shape = |v: &Value| -> Vec<(Value, Value, Value)> {
        v["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["addr"].clone(), s["state"].clone(), s["weight"].clone()))
            .collect()
    };
    assert_eq!(
        shape(&after),
        shape(&before),
        "a cross-site page changed the table"
    );
    assert_eq!(shape(&after).len(), 2);
    // The three forms and the no-cors POST reached the API and were refused
    // there (the CORS ones the browser did not send: their preflight failed).
    let refused = sy
        .stderr()
        .lines()
        .filter(|l| l.contains("admin request refused") && l.contains("another site"))
        .count();
    assert!(
        refused >= 4,
        "{refused} refusals logged; stderr:\n{}",
        sy.stderr()
    );
    browser.close().await;
}

/// With `[cluster]`, the fleet panel shows the store and whether this instance
/// is connected to it, and says so when it is not any more.
#[tokio::test]
async fn the_fleet_panel_follows_the_cluster() {
    let _turn = ONE_BROWSER.lock().await;
    if !support::etcd::available() {
        return;
    }
    let Some(browser) = Browser::start("the_fleet_panel_follows_the_cluster").await else {
        return;
    };
    let mut etcd = support::etcd::Etcd::start();
    let alpha = support::named("alpha").await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\nstate_file = \"{state}\"\n\
         [cluster]\nstore = \"etcd\"\nendpoints = [\"{endpoint}\"]\nprefix = \"/dash\"\ntimeout = \"1s\"\n\
         [[listener]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ upstream = \"app\" }}]\n\
         [upstream.app]\nservers = [{{ addr = \"{a}\" }}]\n",
        state = dir.path().join("state.json").display(),
        endpoint = etcd.endpoint(),
        a = alpha.addr,
    );
    let sy = Switchyard::run_config_with_admin(&text, 1);
    browser.open_dashboard(sy.admin()).await;
    wait_until(
        "the fleet panel, connected",
        Duration::from_secs(10),
        || async { (browser.fleet("connected").await.as_deref() == Some("yes")).then_some(()) },
    )
    .await;
    let store = browser.fleet("store").await.unwrap();
    assert!(
        store.contains(&etcd.endpoint()) && store.contains("/dash"),
        "{store}"
    );
    etcd.stop();
    wait_until(
        "the fleet panel to say disconnected",
        Duration::from_secs(20),
        || async { (browser.fleet("connected").await.as_deref() == Some("no")).then_some(()) },
    )
    .await;
    browser.assert_no_errors().await;
    browser.close().await;
}

/// 1,000 servers in one upstream: how long the first render and each update
/// take in the page (script, style and layout, by `performance.now()`), and how
/// soon a change to every server shows.
#[tokio::test]
async fn a_thousand_servers_render_and_update_in_time() {
    let _turn = ONE_BROWSER.lock().await;
    let Some(browser) = Browser::start("a_thousand_servers_render_and_update_in_time").await else {
        return;
    };
    let alpha = support::named("alpha").await;
    let sy = Switchyard::run_config_with_admin(&app_config(&[alpha.addr], ""), 1);
    let admin = sy.admin();
    // Addresses that nothing sends to: no health check, no route to them.
    let addrs: Vec<String> = (0..1000)
        .map(|i| format!("127.0.0.1:{}", 20000 + i))
        .collect();
    let servers: Vec<Value> = addrs.iter().map(|a| json!({ "addr": a })).collect();
    let r = Call::post(
        "/api/v1/upstreams",
        &json!({ "name": "big", "servers": servers }).to_string(),
    )
    .send(admin)
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r}");

    browser.open_dashboard(admin).await;
    let rows = browser.count("[data-upstream=\"big\"] [data-server]").await;
    assert_eq!(rows, 1000);
    // A few quiet updates (nothing changes but the clocks).
    let renders0 = browser.perf().await["renders"].as_u64().unwrap();
    wait_until("three more polls", Duration::from_secs(6), || async {
        (browser.perf().await["renders"].as_u64()? >= renders0 + 3).then_some(())
    })
    .await;
    let quiet = browser.perf().await;

    // One change.
    let last = addrs.last().unwrap().clone();
    let start = Instant::now();
    let r = Call::patch(
        &format!("/api/v1/upstreams/big/servers/{last}"),
        r#"{"state":"drain"}"#,
    )
    .send(admin)
    .await;
    assert_eq!(r.status, StatusCode::OK, "{r}");
    browser.wait_field("big", &last, "state", "drain").await;
    let one = start.elapsed();

    // Every server at once: one batch, 1,000 events on the stream.
    let ops: Vec<Value> = addrs
        .iter()
        .map(|a| json!({ "op": "patch", "upstream": "big", "server": a, "set": { "weight": 7 } }))
        .collect();
    let start = Instant::now();
    let r = Call::post("/api/v1/batch", &json!({ "operations": ops }).to_string())
        .send(admin)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{r}");
    wait_until("every weight to read 7", Duration::from_secs(5), || async {
        let n = browser
            .js(
                "return [...document.querySelectorAll('[data-upstream=\"big\"] [data-field=\"weight\"]')]
                   .filter(c => c.textContent === '7').length",
                vec![],
            )
            .await;
        (n == 1000).then_some(())
    })
    .await;
    let all = start.elapsed();
    let after = browser.perf().await;
    let log_lines = browser.count("#events li").await;

    let ms = |v: &Value, k: &str| v[k].as_f64().unwrap();
    let first = ms(&quiet, "firstRenderMs");
    let avg_quiet = ms(&quiet, "totalRenderMs") - first;
    let avg_quiet = avg_quiet / (quiet["renders"].as_f64().unwrap() - 1.0);
    let max_update = ms(&after, "maxRenderMs");
    eprintln!(
        "dashboard, 1,000 servers in one upstream: first render {first:.0} ms; an update \
         {avg_quiet:.0} ms on average when nothing changed; slowest update {max_update:.0} ms; \
         one change on screen {one:?} after the API answered; 1,000 changes on screen {all:?} \
         after the batch answered ({log_lines} lines in the log)"
    );
    assert!(first < 3000.0, "first render took {first} ms");
    assert!(max_update < 1000.0, "an update took {max_update} ms");
    assert!(
        one < Duration::from_secs(2),
        "one change showed after {one:?}"
    );
    assert!(
        all < Duration::from_secs(3),
        "1,000 changes showed after {all:?}"
    );
    assert_eq!(log_lines, 200, "the log keeps the last 200 events");
    browser.assert_no_errors().await;
    browser.close().await;
}

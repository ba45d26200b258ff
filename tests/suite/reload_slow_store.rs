//! A hot reload that waits on a slow state store must not stall the data plane.
//!
//! With one worker the main runtime *is* the data plane (worker 0), and it also
//! runs reloads. The reload's table change is saved before it is published; a
//! store that takes long to save (fsync on a busy disk, etcd far away) must
//! only hold up the reload, never the requests on the same thread. This test
//! holds the store's `save` open and sends requests meanwhile; when the writer
//! ran on the runtime's thread (the synchronous `Table::apply_as` called from
//! `Reloader::reload`), not one of them was answered until the store let go.

use crate::support;

use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::StatusCode;
use switchyard::proxy::Proxy;
use switchyard::reload::Reloader;
use switchyard::state::{StateDoc, StateError, StateStore};
use switchyard::upstream::Table;

/// Requests that must all be answered while the reload waits on the store.
const REQUESTS: usize = 50;
/// Each request's bound: generous for a loaded machine, far below how long the
/// store holds the reload.
const PER_REQUEST: Duration = Duration::from_secs(3);
/// How long the store holds a save at most, should the test never release it.
const HOLD_AT_MOST: Duration = Duration::from_secs(60);

/// A store whose `save` tells when it is entered, then waits for the test to
/// release it (at most [`HOLD_AT_MOST`]).
#[derive(Debug)]
struct GateStore {
    entered: Mutex<mpsc::Sender<()>>,
    release: Mutex<mpsc::Receiver<()>>,
    saved: Mutex<Vec<StateDoc>>,
}

impl StateStore for GateStore {
    fn load(&self) -> Result<Option<StateDoc>, StateError> {
        Ok(None)
    }

    fn save(&self, doc: &StateDoc) -> Result<(), StateError> {
        let _ = self.entered.lock().unwrap().send(());
        let _ = self.release.lock().unwrap().recv_timeout(HOLD_AT_MOST);
        self.saved.lock().unwrap().push(doc.clone());
        Ok(())
    }

    fn describe(&self) -> String {
        "a store that waits for the test".into()
    }
}

fn config_text(servers: &[SocketAddr]) -> String {
    let list = servers
        .iter()
        .map(|a| format!("{{ addr = \"{a}\" }}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[[listener]]\nlisten = \"127.0.0.1:0\"\nroutes = [{{ upstream = \"app\" }}]\n\n\
         [upstream.app]\nservers = [{list}]\n"
    )
}

/// What the client thread saw while the store held the reload.
#[derive(Debug)]
struct Outcome {
    answered: usize,
    /// Whether the store was still holding the reload once every request was
    /// answered (else the requests did not overlap the wait).
    reload_still_waiting: bool,
    slowest: Duration,
    failure: Option<String>,
}

/// From the moment the store's `save` is entered: [`REQUESTS`] GETs, one after
/// the other; then the store is released.
fn clients(
    addr: SocketAddr,
    entered: mpsc::Receiver<()>,
    release: mpsc::Sender<()>,
    store: &GateStore,
) -> Outcome {
    let mut outcome = Outcome {
        answered: 0,
        reload_still_waiting: false,
        slowest: Duration::ZERO,
        failure: None,
    };
    if entered.recv_timeout(Duration::from_secs(30)).is_err() {
        outcome.failure = Some("the reload never reached the store".into());
        let _ = release.send(());
        return outcome;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for i in 0..REQUESTS {
            let started = Instant::now();
            match tokio::time::timeout(PER_REQUEST, support::try_get(addr, "/")).await {
                Ok(Ok(r)) if r.status == StatusCode::OK => outcome.answered += 1,
                Ok(Ok(r)) => outcome.failure = Some(format!("request {i}: {}", r.status)),
                Ok(Err(e)) => outcome.failure = Some(format!("request {i}: {e}")),
                Err(_) => {
                    outcome.failure = Some(format!("request {i}: no answer in {PER_REQUEST:?}"))
                }
            }
            outcome.slowest = outcome.slowest.max(started.elapsed());
            if outcome.failure.is_some() {
                break;
            }
        }
    });
    // `saved` grows only once released: empty means the reload is still held.
    outcome.reload_still_waiting = store.saved.lock().unwrap().is_empty();
    let _ = release.send(());
    outcome
}

#[test]
fn requests_keep_flowing_while_a_reload_waits_on_a_slow_state_store() {
    // Backends on a runtime of their own, so that only the proxy shares the
    // data-plane thread with the reload.
    let backends = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (a, b) =
        backends.block_on(async { (support::named("a").await, support::named("b").await) });

    // The data plane with one worker, as `run --workers 1` has it: one
    // current-thread runtime that also runs the reloader.
    let main = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let outcome = main.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchyard.toml");
        std::fs::write(&path, config_text(&[a.addr])).unwrap();
        let config = switchyard::config::load(&path).unwrap();

        let (entered_tx, entered_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        let store = Arc::new(GateStore {
            entered: Mutex::new(entered_tx),
            release: Mutex::new(release_rx),
            saved: Mutex::new(Vec::new()),
        });
        let table = Arc::new(
            Table::open(&config, Some(Arc::clone(&store) as Arc<dyn StateStore>)).unwrap(),
        );
        let proxy = Proxy::bind(&config, Arc::clone(&table)).await.unwrap();
        let addr = proxy.local_addrs()[0];
        let reloader = Reloader::new(path.clone(), config, Arc::clone(&table), proxy.handle());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(proxy.run(async move {
            let _ = stopped.await;
        }));
        assert_eq!(support::get(addr, "/").await.body, "a");

        // The file adds b: the reload has a change to save, and the store holds it.
        std::fs::write(&path, config_text(&[a.addr, b.addr])).unwrap();
        let reloading = tokio::spawn(async move { reloader.reload().await });
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let held = Arc::clone(&store);
        let client = std::thread::spawn(move || {
            let _ = done_tx.send(clients(addr, entered_rx, release_tx, &held));
        });
        let outcome = done_rx.await.unwrap();
        client.join().unwrap();

        let report = reloading.await.unwrap().unwrap();
        assert_eq!(
            report.applied,
            vec![format!("add server {} to app", b.addr)]
        );
        assert_eq!(store.saved.lock().unwrap().len(), 1);
        let servers = table.upstream("app").unwrap().snapshot().servers.len();
        assert_eq!(servers, 2);
        let _ = stop.send(());
        let _ = serving.await;
        outcome
    });
    eprintln!("{outcome:?}");
    assert_eq!(
        outcome.answered, REQUESTS,
        "requests answered while the reload waited on the store: {outcome:?}"
    );
    assert!(outcome.reload_still_waiting, "{outcome:?}");
}

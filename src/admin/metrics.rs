//! `GET /metrics`: Prometheus metrics, encoded by `prometheus-client` in the
//! format the scraper asks for ([`negotiate`]): the OpenMetrics text format
//! (`application/openmetrics-text; version=1.0.0; charset=utf-8`, ending in
//! `# EOF`) when `Accept` names it, as Prometheus' does; else the classic
//! Prometheus text format 0.0.4 (`text/plain; version=0.0.4`), which `curl`,
//! `promtool check metrics` and older scrapers read (counters typed under
//! their `_total` name, no `# EOF`, no `_created`).
//!
//! Nothing is counted twice: custom [`Collector`]s read the servers' own
//! atomics (`ServerStats`), the table's change counter, the listeners' counters
//! (`proxy::stats`) and `/proc/self` at scrape time. Every name starts with
//! `switchyard_`, except the process metrics' standard `process_` names:
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `switchyard_server_requests_total` | counter | `upstream`, `server` |
//! | `switchyard_server_responses_total` | counter | + `code_class` (`1xx`..`5xx`) |
//! | `switchyard_server_active` | gauge | |
//! | `switchyard_server_fails_total` | counter | |
//! | `switchyard_server_unavail_total` | counter | (times it became `unavail`) |
//! | `switchyard_server_health_checks_total` | counter | |
//! | `switchyard_server_health_check_fails_total` | counter | |
//! | `switchyard_server_unhealthy_total` | counter | (times it became `unhealthy`) |
//! | `switchyard_server_state` | gauge | + `state` (`up`, `down`, `drain`, `unhealthy`, `checking`, `unavail`): 1 for the current one |
//! | `switchyard_server_header_time_seconds` | histogram | (time to response headers) |
//! | `switchyard_server_response_time_seconds` | histogram | (time to the end of the response) |
//! | `switchyard_server_sent_bytes_total` | counter | |
//! | `switchyard_server_received_bytes_total` | counter | |
//! | `switchyard_upstream_eligible_servers` | gauge | `upstream` |
//! | `switchyard_upstream_panic_total` | counter | `upstream` (times it went into panic mode) |
//! | `switchyard_upstream_in_panic` | gauge | `upstream` (1 while in panic mode) |
//! | `switchyard_dns_resolutions_total` | counter | `upstream`, `name` (lookups of a `resolve = true` entry) |
//! | `switchyard_dns_resolution_failures_total` | counter | `upstream`, `name` (failed or empty: the last good set stayed) |
//! | `switchyard_dns_addresses` | gauge | `upstream`, `name` (addresses in the last good answer) |
//! | `switchyard_admin_changes_total` | counter | (table changes published) |
//! | `switchyard_uptime_seconds` | gauge | |
//! | `switchyard_cluster_store_up` | gauge | (fleet mode only: 1 while etcd answers) |
//! | `switchyard_cluster_applied_revision` | gauge | (fleet mode: revision applied here) |
//! | `switchyard_cluster_store_revision` | gauge | (fleet mode: newest revision seen) |
//! | `switchyard_cluster_lag_seconds` | gauge | (fleet mode: 0 while in step) |
//! | `switchyard_cluster_store_errors_total` | counter | `kind` (fleet mode: failed etcd calls and looked-up writes) |
//! | `switchyard_listener_requests_total` | counter | `listener` (bound address), `code` (`1xx`..`5xx`): answered requests |
//! | `switchyard_listener_request_duration_seconds` | histogram | `listener` (from the request's head to its response's head) |
//! | `switchyard_listener_connections` | gauge | `listener` (open now) |
//! | `switchyard_listener_connections_accepted_total` | counter | `listener` |
//! | `switchyard_tls_handshakes_total` | counter | `listener`, `result` (`ok`, `failed`); TLS listeners only |
//! | `switchyard_build_info` | gauge (info) | `version`, `commit`: 1 |
//! | `switchyard_access_log_dropped_total` | counter | (lines of every access log dropped: queue full, file not writable) |
//! | `process_cpu_seconds_total` | counter | (Linux only, as the four below) |
//! | `process_resident_memory_bytes` | gauge | |
//! | `process_open_fds` | gauge | |
//! | `process_start_time_seconds` | gauge | (Unix time) |

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::proxy::stats::{ListenerCounts, ListenerStats};
use crate::upstream::histogram::{BUCKETS, Histogram};
use crate::upstream::{AdminState, Server, ServerStats, Table, Upstream};

/// What `/metrics` answers with when OpenMetrics is asked for.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// What `/metrics` answers with otherwise: the classic text format.
pub const CLASSIC_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The version in `switchyard_build_info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The commit in `switchyard_build_info`: `SWITCHYARD_COMMIT` in the build's
/// environment (`SWITCHYARD_COMMIT=$(git rev-parse --short HEAD) cargo build`),
/// else `unknown`.
pub const COMMIT: &str = match option_env!("SWITCHYARD_COMMIT") {
    Some(c) if !c.is_empty() => c,
    _ => "unknown",
};

/// The text formats `/metrics` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0.0 text.
    OpenMetrics,
    /// The Prometheus text format 0.0.4.
    Classic,
}

/// The format for a request's `Accept` header: OpenMetrics when it names
/// `application/openmetrics-text` (with a `q` above 0, and not below that of
/// an explicit `text/plain`), else the classic format — for no `Accept`,
/// `*/*` and `text/plain` alike.
pub fn negotiate(accept: Option<&str>) -> Format {
    let Some(accept) = accept else {
        return Format::Classic;
    };
    let (mut openmetrics, mut text) = (0.0_f64, 0.0_f64);
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim();
        // A `q` that does not parse is taken as the default, 1.
        let q = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .and_then(|(_, v)| v.trim().parse::<f64>().ok())
            .filter(|q| (0.0..=1.0).contains(q))
            .unwrap_or(1.0);
        if media.eq_ignore_ascii_case("application/openmetrics-text") {
            openmetrics = openmetrics.max(q);
        } else if media.eq_ignore_ascii_case("text/plain") {
            text = text.max(q);
        }
    }
    if openmetrics > 0.0 && openmetrics >= text {
        Format::OpenMetrics
    } else {
        Format::Classic
    }
}

/// The states of `switchyard_server_state`, in output order.
pub const STATES: [&str; 6] = ["up", "down", "drain", "unhealthy", "checking", "unavail"];

/// The registry `/metrics` encodes: the table, the listeners and build under
/// `switchyard_`, and the process.
pub fn registry(table: Arc<Table>) -> Registry {
    let mut registry = Registry::default();
    let ours = registry.sub_registry_with_prefix("switchyard");
    ours.register_collector(Box::new(TableCollector {
        table,
        started: Instant::now(),
    }));
    ours.register_collector(Box::new(ListenerCollector));
    ours.register_collector(Box::new(DnsCollector));
    registry.register_collector(Box::new(ProcessCollector));
    registry
}

/// Encodes `registry` as the OpenMetrics `/metrics` answer.
pub fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    render_as(registry, Format::OpenMetrics)
}

/// Encodes `registry` in `format`.
pub fn render_as(registry: &Registry, format: Format) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    match format {
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, registry)?,
        Format::Classic => {
            prometheus_client::encoding::prometheus_text::encode(&mut out, registry)?
        }
    }
    Ok(out)
}

/// `GET /metrics`, in the format `Accept` asks for.
pub async fn handle(registry: Arc<Registry>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = negotiate(accept);
    let content_type = match format {
        Format::OpenMetrics => CONTENT_TYPE,
        Format::Classic => CLASSIC_CONTENT_TYPE,
    };
    match render_as(&registry, format) {
        Ok(body) => (
            [
                (header::CONTENT_TYPE, content_type),
                (header::VARY, "Accept"),
            ],
            body,
        )
            .into_response(),
        Err(_) => super::error::ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "MetricsError",
            "cannot encode the metrics",
        )
        .into_response(),
    }
}

/// A server's current state for `switchyard_server_state`.
pub fn server_state(s: &Server, now_ms: u64) -> &'static str {
    match super::views::peer_state(s, now_ms) {
        "draining" => "drain",
        other => other,
    }
}

/// Reads the table at scrape time.
#[derive(Debug)]
struct TableCollector {
    table: Arc<Table>,
    started: Instant,
}

type Labels<'a> = [(&'static str, &'a str); 2];

/// A per-server counter: one family, one sample per server.
fn counter(
    enc: &mut DescriptorEncoder,
    servers: &[(Labels<'_>, &Arc<Server>)],
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    read: impl Fn(&ServerStats) -> u64,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (labels, s) in servers {
        m.encode_family(labels)?
            .encode_counter::<NoExemplar, _, f64>(&read(&s.runtime.stats), None)?;
    }
    Ok(())
}

fn histogram(
    enc: &mut DescriptorEncoder,
    servers: &[(Labels<'_>, &Arc<Server>)],
    name: &str,
    help: &str,
    read: impl Fn(&ServerStats) -> &Histogram,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    for (labels, s) in servers {
        let (sum, count, counts) = read(&s.runtime.stats).read();
        let buckets: Vec<(f64, u64)> = BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(counts)
            .collect();
        m.encode_family(labels)?
            .encode_histogram::<NoExemplar>(sum, count, &buckets, None)?;
    }
    Ok(())
}

/// No exemplars are ever attached; this names their (unused) label type.
type NoExemplar = NoLabelSet;

/// Every kind `switchyard_cluster_store_errors_total` counts, each shown from
/// zero so that a rate can be taken before the first error.
const STORE_ERROR_KINDS: [&str; 8] = [
    "connect",
    "timeout",
    "transport",
    "status",
    "decode",
    "conflict",
    "outcome_looked_up",
    "outcome_unknown",
];

/// The per-server label pairs of every family, with the server they describe.
type ServerRows<'a> = [(Labels<'a>, &'a Arc<Server>)];

impl Collector for TableCollector {
    // The families are written in the order the module's table lists them;
    // each step below writes a run of them, so the order is the steps' order.
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now = crate::clock::now_ms();
        let table = self.table.load();
        let ups: Vec<_> = table.upstreams.values().collect();
        let servers: Vec<(Labels<'_>, &Arc<Server>)> = ups
            .iter()
            .flat_map(|u| {
                u.snapshot().servers.iter().map(move |s| {
                    (
                        [("upstream", u.name.as_str()), ("server", s.addr.as_str())],
                        s,
                    )
                })
            })
            .collect();
        let e = &mut enc;
        server_traffic(e, &servers)?;
        server_failures(e, &servers)?;
        server_states(e, &servers, now)?;
        server_timing_and_bytes(e, &servers)?;
        eligible_servers(e, &ups, now)?;
        panic_mode(e, &ups, now)?;
        self.admin_changes(e)?;
        self.cluster(e)?;
        self.uptime(e)
    }
}

/// `server_requests`, `server_responses` (by status class) and `server_active`.
fn server_traffic(
    e: &mut DescriptorEncoder,
    servers: &ServerRows<'_>,
) -> Result<(), std::fmt::Error> {
    counter(
        e,
        servers,
        "server_requests",
        "Requests sent to the server.",
        None,
        |st| st.requests.load(Relaxed),
    )?;
    {
        let mut m = e.encode_descriptor(
            "server_responses",
            "Responses from the server, by status class.",
            None,
            MetricType::Counter,
        )?;
        for (labels, s) in servers {
            for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].into_iter().enumerate() {
                let ls: [(&str, &str); 3] = [labels[0], labels[1], ("code_class", class)];
                let v = s.runtime.stats.responses[i].load(Relaxed);
                m.encode_family(&ls)?
                    .encode_counter::<NoExemplar, _, f64>(&v, None)?;
            }
        }
    }
    let mut m = e.encode_descriptor(
        "server_active",
        "Requests in flight on the server.",
        None,
        MetricType::Gauge,
    )?;
    for (labels, s) in servers {
        m.encode_family(labels)?
            .encode_gauge(&s.runtime.stats.pick.active.load(Relaxed))?;
    }
    Ok(())
}

/// The failure counters: failed attempts, `unavail` episodes, active checks
/// and their failures, `unhealthy` episodes.
fn server_failures(
    e: &mut DescriptorEncoder,
    servers: &ServerRows<'_>,
) -> Result<(), std::fmt::Error> {
    counter(
        e,
        servers,
        "server_fails",
        "Failed attempts (connect errors, resets, timeouts).",
        None,
        |st| st.fails_total.load(Relaxed),
    )?;
    counter(
        e,
        servers,
        "server_unavail",
        "Times the server became unavail (max_fails within fail_timeout).",
        None,
        |st| st.unavail_total.load(Relaxed),
    )?;
    counter(
        e,
        servers,
        "server_health_checks",
        "Active health checks done.",
        None,
        |st| st.checks_total.load(Relaxed),
    )?;
    counter(
        e,
        servers,
        "server_health_check_fails",
        "Active health checks failed.",
        None,
        |st| st.checks_failed.load(Relaxed),
    )?;
    counter(
        e,
        servers,
        "server_unhealthy",
        "Times the server became unhealthy.",
        None,
        |st| st.unhealthy_total.load(Relaxed),
    )
}

/// `server_state`: one sample per state in [`STATES`], 1 for the current one.
fn server_states(
    e: &mut DescriptorEncoder,
    servers: &ServerRows<'_>,
    now: u64,
) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(
        "server_state",
        "The server's current state: 1 for it, 0 for the others.",
        None,
        MetricType::Gauge,
    )?;
    for (labels, s) in servers {
        let current = server_state(s, now);
        for state in STATES {
            let ls: [(&str, &str); 3] = [labels[0], labels[1], ("state", state)];
            m.encode_family(&ls)?
                .encode_gauge(&u64::from(state == current))?;
        }
    }
    Ok(())
}

/// The two latency histograms, then the byte counters.
fn server_timing_and_bytes(
    e: &mut DescriptorEncoder,
    servers: &ServerRows<'_>,
) -> Result<(), std::fmt::Error> {
    histogram(
        e,
        servers,
        "server_header_time",
        "Time to the response headers.",
        |st| &st.header_time,
    )?;
    histogram(
        e,
        servers,
        "server_response_time",
        "Time to the end of the response.",
        |st| &st.response_time,
    )?;
    counter(
        e,
        servers,
        "server_sent",
        "Bytes written to the server.",
        Some(&Unit::Bytes),
        |st| st.bytes_sent.load(Relaxed),
    )?;
    counter(
        e,
        servers,
        "server_received",
        "Bytes read from the server.",
        Some(&Unit::Bytes),
        |st| st.bytes_received.load(Relaxed),
    )
}

/// `upstream_eligible_servers`: per upstream, the servers that are up and
/// available now.
fn eligible_servers(
    e: &mut DescriptorEncoder,
    ups: &[&Arc<Upstream>],
    now: u64,
) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(
        "upstream_eligible_servers",
        "Servers of the upstream that take new requests now.",
        None,
        MetricType::Gauge,
    )?;
    for u in ups {
        let n = u
            .snapshot()
            .servers
            .iter()
            .filter(|s| s.state == AdminState::Up && s.available(now))
            .count();
        m.encode_family(&[("upstream", u.name.as_str())])?
            .encode_gauge(&(n as u64))?;
    }
    Ok(())
}

/// `upstream_panic` (entries into panic mode) and `upstream_in_panic`, for
/// every upstream (0 for those without a `panic_threshold`). Reading the
/// state counts it afresh when it is stale, so an idle upstream's gauge is
/// current too.
fn panic_mode(
    e: &mut DescriptorEncoder,
    ups: &[&Arc<Upstream>],
    now: u64,
) -> Result<(), std::fmt::Error> {
    let statuses: Vec<_> = ups
        .iter()
        .map(|u| u.snapshot().panic_status(now).is_some_and(|p| p.in_panic))
        .collect();
    {
        let mut m = e.encode_descriptor(
            "upstream_panic",
            "Times the upstream went into panic mode (too few healthy primaries).",
            None,
            MetricType::Counter,
        )?;
        for u in ups {
            m.encode_family(&[("upstream", u.name.as_str())])?
                .encode_counter::<NoExemplar, _, f64>(&u.panic_entries(), None)?;
        }
    }
    let mut m = e.encode_descriptor(
        "upstream_in_panic",
        "Whether the upstream is in panic mode now: 1 or 0.",
        None,
        MetricType::Gauge,
    )?;
    for (u, in_panic) in ups.iter().zip(statuses) {
        m.encode_family(&[("upstream", u.name.as_str())])?
            .encode_gauge(&u64::from(in_panic))?;
    }
    Ok(())
}

impl TableCollector {
    fn admin_changes(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut m = e.encode_descriptor(
            "admin_changes",
            "Table changes published (admin API, batch).",
            None,
            MetricType::Counter,
        )?;
        m.encode_counter::<NoExemplar, _, f64>(&self.table.admin_changes(), None)
    }

    /// The fleet's gauges; nothing at all when the table has no cluster store.
    fn cluster(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(c) = self.table.store().and_then(|s| s.cluster_status()) else {
            return Ok(());
        };
        let gauges: [(&str, &str, Option<&Unit>, f64); 4] = [
            (
                "cluster_store_up",
                "Whether the cluster store (etcd) answers: 1 or 0.",
                None,
                f64::from(u8::from(c.connected)),
            ),
            (
                "cluster_applied_revision",
                "The cluster store revision this instance's table reflects.",
                None,
                c.applied_revision as f64,
            ),
            (
                "cluster_store_revision",
                "The newest revision under the cluster prefix, as last seen.",
                None,
                c.store_revision as f64,
            ),
            (
                "cluster_lag",
                "How long this instance has not been known to be in step with the cluster store (0 while it is).",
                Some(&Unit::Seconds),
                c.lag_seconds,
            ),
        ];
        for (name, help, unit, value) in gauges {
            let mut m = e.encode_descriptor(name, help, unit, MetricType::Gauge)?;
            m.encode_gauge(&value)?;
        }
        let mut m = e.encode_descriptor(
            "cluster_store_errors",
            "Failed calls to the cluster store by kind (connect, timeout, transport, status, decode), writes refused by a concurrent change (conflict), and writes whose outcome had to be looked up (outcome_looked_up) or stayed unknown (outcome_unknown).",
            None,
            MetricType::Counter,
        )?;
        for kind in STORE_ERROR_KINDS {
            let n = c.errors.get(kind).copied().unwrap_or(0);
            m.encode_family(&[("kind", kind)])?
                .encode_counter::<NoExemplar, _, f64>(&n, None)?;
        }
        Ok(())
    }

    fn uptime(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut m = e.encode_descriptor(
            "uptime",
            "Seconds since switchyard started (its admin API was built).",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        m.encode_gauge(&self.started.elapsed().as_secs_f64())
    }
}

/// The listeners' counters (`proxy::stats`), and the build.
#[derive(Debug)]
struct ListenerCollector;

/// One listener's counters; listeners sharing a name (one a reload removed and
/// another on its address since, while the first finishes) are added up, so a
/// series is never written twice.
struct ListenerSample {
    name: String,
    counts: ListenerCounts,
    sum: f64,
    count: u64,
    buckets: [u64; BUCKETS.len() + 1],
    tls: bool,
    handshakes: (u64, u64),
}

fn listener_samples(listeners: &[Arc<ListenerStats>]) -> Vec<ListenerSample> {
    let mut out: Vec<ListenerSample> = Vec::with_capacity(listeners.len());
    for l in listeners {
        let name = l.addr().to_string();
        let counts = l.counts();
        let (sum, count, buckets) = l.durations().read();
        let handshakes = l.handshakes();
        match out.iter_mut().find(|s| s.name == name) {
            Some(s) => {
                let c = &mut s.counts;
                c.accepted += counts.accepted;
                c.open += counts.open;
                for (a, b) in c.responses.iter_mut().zip(counts.responses) {
                    *a += b;
                }
                s.sum += sum;
                s.count += count;
                for (a, b) in s.buckets.iter_mut().zip(buckets) {
                    *a += b;
                }
                s.tls |= l.is_tls();
                s.handshakes.0 += handshakes.0;
                s.handshakes.1 += handshakes.1;
            }
            None => out.push(ListenerSample {
                name,
                counts,
                sum,
                count,
                buckets,
                tls: l.is_tls(),
                handshakes,
            }),
        }
    }
    out
}

impl Collector for ListenerCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let listeners = listener_samples(&crate::proxy::stats::listeners());
        {
            let mut m = enc.encode_descriptor(
                "listener_requests",
                "Requests answered by the listener, by status class (health_uri probes are not counted).",
                None,
                MetricType::Counter,
            )?;
            for l in &listeners {
                for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].into_iter().enumerate() {
                    m.encode_family(&[("listener", l.name.as_str()), ("code", class)])?
                        .encode_counter::<NoExemplar, _, f64>(&l.counts.responses[i], None)?;
                }
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "listener_request_duration",
                "Time from a request's head to its response's head (upstream tries included, body streaming not).",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for l in &listeners {
                let buckets: Vec<(f64, u64)> = BUCKETS
                    .iter()
                    .copied()
                    .chain([f64::INFINITY])
                    .zip(l.buckets)
                    .collect();
                m.encode_family(&[("listener", l.name.as_str())])?
                    .encode_histogram::<NoExemplar>(l.sum, l.count, &buckets, None)?;
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "listener_connections",
                "Client connections open now (idle keep-alive ones included).",
                None,
                MetricType::Gauge,
            )?;
            for l in &listeners {
                m.encode_family(&[("listener", l.name.as_str())])?
                    .encode_gauge(&l.counts.open)?;
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "listener_connections_accepted",
                "Client connections accepted.",
                None,
                MetricType::Counter,
            )?;
            for l in &listeners {
                m.encode_family(&[("listener", l.name.as_str())])?
                    .encode_counter::<NoExemplar, _, f64>(&l.counts.accepted, None)?;
            }
        }
        let tls: Vec<&ListenerSample> = listeners
            .iter()
            .filter(|l| l.tls || l.handshakes != (0, 0))
            .collect();
        // Only with TLS listeners: no family without samples.
        if !tls.is_empty() {
            let mut m = enc.encode_descriptor(
                "tls_handshakes",
                "TLS handshakes with clients, done (ok) or failed (including timed out).",
                None,
                MetricType::Counter,
            )?;
            for l in tls {
                for (result, n) in [("ok", l.handshakes.0), ("failed", l.handshakes.1)] {
                    m.encode_family(&[("listener", l.name.as_str()), ("result", result)])?
                        .encode_counter::<NoExemplar, _, f64>(&n, None)?;
                }
            }
        }
        {
            let mut m = enc.encode_descriptor(
                "build",
                "The version and commit of this switchyard: 1.",
                None,
                MetricType::Info,
            )?;
            m.encode_info(&[("version", VERSION), ("commit", COMMIT)])?;
        }
        Ok(())
    }
}

/// `process_*`, the names every Prometheus client library gives them, read
/// from `/proc/self` at scrape time (Linux; elsewhere there are none).
#[derive(Debug)]
struct ProcessCollector;

/// What `/proc/self` says of the process.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct ProcessStats {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<u64>,
    open_fds: Option<u64>,
    start_time_seconds: Option<f64>,
}

/// Clock ticks per second of `/proc/PID/stat`'s times: `USER_HZ`, 100 on every
/// Linux architecture Prometheus' own procfs reader supports (it assumes the
/// same).
const USER_HZ: f64 = 100.0;

/// From `/proc/self/stat`: user plus system CPU time, and the start time in
/// ticks since boot.
fn parse_stat(stat: &str) -> Option<(f64, u64)> {
    // The command name, in parentheses, may hold spaces and parentheses: the
    // fields start after the last `)`. There, field 3 (state) is the first.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let start: u64 = fields.get(19)?.parse().ok()?;
    Some(((utime + stime) as f64 / USER_HZ, start))
}

/// `btime` of `/proc/stat`: the boot time, in Unix seconds.
fn parse_btime(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// `VmRSS` of `/proc/self/status`, in bytes.
fn parse_rss(status: &str) -> Option<u64> {
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

fn read_process() -> ProcessStats {
    if !cfg!(target_os = "linux") {
        return ProcessStats::default();
    }
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let stat = read("/proc/self/stat").as_deref().and_then(parse_stat);
    let btime = read("/proc/stat").as_deref().and_then(parse_btime);
    ProcessStats {
        cpu_seconds: stat.map(|(cpu, _)| cpu),
        resident_bytes: read("/proc/self/status").as_deref().and_then(parse_rss),
        open_fds: std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as u64),
        start_time_seconds: stat
            .zip(btime)
            .map(|((_, start), boot)| boot as f64 + start as f64 / USER_HZ),
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let dropped = crate::proxy::access_log::dropped_total();
        let mut m = enc.encode_descriptor(
            "switchyard_access_log_dropped",
            "Access-log lines dropped: queue full, or the file could not be opened or written.",
            None,
            MetricType::Counter,
        )?;
        m.encode_counter::<NoExemplar, _, u64>(&dropped, None)?;
        let p = read_process();
        if let Some(v) = p.cpu_seconds {
            let mut m = enc.encode_descriptor(
                "process_cpu",
                "Total user and system CPU time spent, in seconds.",
                Some(&Unit::Seconds),
                MetricType::Counter,
            )?;
            m.encode_counter::<NoExemplar, _, f64>(&v, None)?;
        }
        if let Some(v) = p.resident_bytes {
            let mut m = enc.encode_descriptor(
                "process_resident_memory",
                "Resident memory size, in bytes.",
                Some(&Unit::Bytes),
                MetricType::Gauge,
            )?;
            m.encode_gauge(&v)?;
        }
        if let Some(v) = p.open_fds {
            let mut m = enc.encode_descriptor(
                "process_open_fds",
                "Open file descriptors.",
                None,
                MetricType::Gauge,
            )?;
            m.encode_gauge(&v)?;
        }
        if let Some(v) = p.start_time_seconds {
            let mut m = enc.encode_descriptor(
                "process_start_time",
                "Start time of the process since the Unix epoch, in seconds.",
                Some(&Unit::Seconds),
                MetricType::Gauge,
            )?;
            m.encode_gauge(&v)?;
        }
        Ok(())
    }
}

/// One DNS metric family: name, help, type, and its value per entry.
type DnsFamily = (
    &'static str,
    &'static str,
    MetricType,
    fn(&crate::discovery::NameReading) -> u64,
);

/// The resolver's counters per DNS entry (`discovery`); nothing without
/// `resolve = true` entries.
#[derive(Debug)]
struct DnsCollector;

impl Collector for DnsCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let names = crate::discovery::readings();
        if names.is_empty() {
            return Ok(());
        }
        let families: [DnsFamily; 3] = [
            (
                "dns_resolutions",
                "Lookups of a DNS entry's name (resolve = true).",
                MetricType::Counter,
                |r| r.resolutions,
            ),
            (
                "dns_resolution_failures",
                "Lookups that failed or found nothing; the last good set stayed.",
                MetricType::Counter,
                |r| r.failures,
            ),
            (
                "dns_addresses",
                "Addresses in the entry's last good answer.",
                MetricType::Gauge,
                |r| r.addresses,
            ),
        ];
        for (name, help, kind, value) in families {
            let counter = matches!(kind, MetricType::Counter);
            let mut m = enc.encode_descriptor(name, help, None, kind)?;
            for r in &names {
                let labels = [("upstream", r.upstream.as_str()), ("name", r.name.as_str())];
                let mut f = m.encode_family(&labels)?;
                if counter {
                    f.encode_counter::<NoExemplar, _, u64>(&value(r), None)?;
                } else {
                    f.encode_gauge(&value(r))?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ServerConfig};
    use crate::upstream::{Command, ServerRef};
    use std::time::Duration;

    #[test]
    fn scrape_reads_the_servers_atomics() {
        let config = Config::single_upstream(
            "127.0.0.1:0".parse().unwrap(),
            vec![
                ServerConfig::new("127.0.0.1:1"),
                ServerConfig::new("127.0.0.1:2"),
            ],
        );
        let table = Arc::new(Table::from_config(&config).unwrap());
        let reg = registry(Arc::clone(&table));
        {
            let snap = table.load();
            let s = &snap.upstreams["default"].snapshot().servers[0];
            let st = &s.runtime.stats;
            st.requests.fetch_add(3, Relaxed);
            st.count_response(200);
            st.count_response(503);
            st.header_time.observe(Duration::from_millis(3));
        }
        table
            .apply_blocking(&[Command::SetState {
                upstream: "default".into(),
                server: ServerRef::Id(1),
                state: AdminState::Drain,
            }])
            .unwrap();
        let text = render(&reg).unwrap();
        let s1 = r#"upstream="default",server="127.0.0.1:1""#;
        let s2 = r#"upstream="default",server="127.0.0.1:2""#;
        for line in [
            "# TYPE switchyard_server_requests counter".to_string(),
            format!("switchyard_server_requests_total{{{s1}}} 3"),
            format!("switchyard_server_requests_total{{{s2}}} 0"),
            format!("switchyard_server_responses_total{{{s1},code_class=\"2xx\"}} 1"),
            format!("switchyard_server_responses_total{{{s1},code_class=\"5xx\"}} 1"),
            format!("switchyard_server_state{{{s1},state=\"up\"}} 1"),
            format!("switchyard_server_state{{{s2},state=\"drain\"}} 1"),
            format!("switchyard_server_state{{{s2},state=\"up\"}} 0"),
            format!("switchyard_server_header_time_seconds_bucket{{le=\"0.002\",{s1}}} 0"),
            format!("switchyard_server_header_time_seconds_bucket{{le=\"0.005\",{s1}}} 1"),
            format!("switchyard_server_header_time_seconds_bucket{{le=\"+Inf\",{s1}}} 1"),
            format!("switchyard_server_header_time_seconds_count{{{s1}}} 1"),
            "switchyard_upstream_eligible_servers{upstream=\"default\"} 1".to_string(),
            "switchyard_admin_changes_total 1".to_string(),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn accept_picks_the_format() {
        use Format::{Classic, OpenMetrics};
        for (accept, want) in [
            (None, Classic),
            (Some(""), Classic),
            (Some("*/*"), Classic),
            (Some("text/plain"), Classic),
            (Some("text/plain; version=0.0.4"), Classic),
            (Some("application/json"), Classic),
            (Some("application/openmetrics-text"), OpenMetrics),
            (
                Some("Application/OpenMetrics-Text; version=1.0.0"),
                OpenMetrics,
            ),
            // Prometheus 2's scrape header.
            (
                Some(
                    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
                ),
                OpenMetrics,
            ),
            (
                Some("text/plain;q=0.9, application/openmetrics-text;q=0.5"),
                Classic,
            ),
            (Some("application/openmetrics-text;q=0"), Classic),
            (Some("application/openmetrics-text;q=nonsense"), OpenMetrics),
            (
                Some("text/plain;q=0.2,application/openmetrics-text;q=0.2"),
                OpenMetrics,
            ),
        ] {
            assert_eq!(negotiate(accept), want, "{accept:?}");
        }
    }

    #[test]
    fn the_classic_format_types_counters_under_their_total_name() {
        let config = Config::single_upstream(
            "127.0.0.1:0".parse().unwrap(),
            vec![ServerConfig::new("127.0.0.1:1")],
        );
        let table = Arc::new(Table::from_config(&config).unwrap());
        let reg = registry(table);
        let text = render_as(&reg, Format::Classic).unwrap();
        assert!(!text.contains("# EOF"), "{text}");
        assert!(!text.contains("_created"), "{text}");
        assert!(!text.contains("# UNIT"), "{text}");
        for line in [
            "# TYPE switchyard_server_requests_total counter",
            "# TYPE switchyard_admin_changes_total counter",
            "# TYPE switchyard_server_header_time_seconds histogram",
            "# TYPE switchyard_build_info gauge",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        let build = format!("switchyard_build_info{{version=\"{VERSION}\",commit=\"{COMMIT}\"}} 1");
        assert!(
            text.lines().any(|l| l == build),
            "missing {build:?} in\n{text}"
        );
        // Every sample's family has its HELP and TYPE first.
        let mut typed = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.insert(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
                    .unwrap_or(name);
                assert!(typed.contains(family), "{line:?} has no TYPE before it");
            }
        }
        if cfg!(target_os = "linux") {
            for line in [
                "# TYPE process_cpu_seconds_total counter",
                "# TYPE process_resident_memory_bytes gauge",
                "# TYPE process_open_fds gauge",
                "# TYPE process_start_time_seconds gauge",
            ] {
                assert!(text.lines().any(|l| l == line), "missing {line:?}");
            }
        }
        // OpenMetrics keeps its shape.
        let om = render(&reg).unwrap();
        assert!(om.ends_with("# EOF\n"));
        assert!(
            om.lines().any(|l| l == "# TYPE switchyard_build info"),
            "{om}"
        );
        assert!(
            om.lines()
                .any(|l| l == "# TYPE process_cpu_seconds counter")
                || !cfg!(target_os = "linux")
        );
    }

    #[test]
    fn proc_files_are_read_as_procfs_writes_them() {
        // A command name with a space and a parenthesis.
        let stat = "4242 (switch yard)) S 1 4242 4242 0 -1 4194560 1523 0 0 0 250 125 0 0 20 0 3 0 987654 123456789 2048 18446744073709551615";
        assert_eq!(parse_stat(stat), Some((3.75, 987654)));
        assert_eq!(parse_stat("4242 (x) S 1 2"), None);
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(
            parse_btime("cpu  1 2 3\nintr 5\nbtime 1700000000\nprocesses 9\n"),
            Some(1_700_000_000)
        );
        assert_eq!(parse_btime("cpu 1\n"), None);
        assert_eq!(
            parse_rss("Name:\tswitchyard\nVmHWM:\t   9000 kB\nVmRSS:\t   8192 kB\n"),
            Some(8192 * 1024)
        );
        assert_eq!(parse_rss("VmRSS: lots\n"), None);
        if cfg!(target_os = "linux") {
            let p = read_process();
            assert!(p.cpu_seconds.is_some() && p.resident_bytes.unwrap() > 0);
            assert!(p.open_fds.unwrap() >= 3);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64();
            let start = p.start_time_seconds.unwrap();
            assert!(
                start <= now + 1.0 && start > now - 86_400.0 * 365.0,
                "{start}"
            );
        }
    }

    #[test]
    fn listeners_on_one_address_make_one_series() {
        let addr: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let a = Arc::new(ListenerStats::new(addr, 10));
        let b = Arc::new(ListenerStats::new(addr, 10));
        let c = Arc::new(ListenerStats::new("127.0.0.1:8081".parse().unwrap(), 10));
        for s in [&a, &b, &c] {
            s.test_answer(200);
        }
        a.test_answer(502);
        let samples = listener_samples(&[a, b, c]);
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].name, "127.0.0.1:8080");
        assert_eq!(samples[0].counts.responses, [0, 2, 0, 0, 1]);
        assert_eq!(samples[0].count, 3);
        assert_eq!(samples[0].buckets.iter().sum::<u64>(), 3);
        assert_eq!(samples[1].counts.responses, [0, 1, 0, 0, 0]);
    }
}

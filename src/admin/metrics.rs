//! `GET /metrics`: Prometheus metrics, encoded by `prometheus-client` in the
//! OpenMetrics text format (`application/openmetrics-text; version=1.0.0;
//! charset=utf-8`, ending in `# EOF`), which Prometheus scrapes natively.
//!
//! Nothing is counted twice: a custom [`Collector`] reads the servers' own
//! atomics (`ServerStats`) and the table's change counter at scrape time, from
//! one table snapshot. Every name starts with `switchyard_`:
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
//! | `switchyard_admin_changes_total` | counter | (table changes published) |
//! | `switchyard_uptime_seconds` | gauge | |
//! | `switchyard_cluster_store_up` | gauge | (fleet mode only: 1 while etcd answers) |
//! | `switchyard_cluster_applied_revision` | gauge | (fleet mode: revision applied here) |
//! | `switchyard_cluster_store_revision` | gauge | (fleet mode: newest revision seen) |
//! | `switchyard_cluster_lag_seconds` | gauge | (fleet mode: 0 while in step) |

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::upstream::histogram::{BUCKETS, Histogram};
use crate::upstream::{AdminState, Server, ServerStats, Table};

/// What `/metrics` answers with.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The states of `switchyard_server_state`, in output order.
pub const STATES: [&str; 6] = ["up", "down", "drain", "unhealthy", "checking", "unavail"];

/// The registry `/metrics` encodes: one collector over `table`.
pub fn registry(table: Arc<Table>) -> Registry {
    let mut registry = Registry::with_prefix("switchyard");
    registry.register_collector(Box::new(TableCollector {
        table,
        started: Instant::now(),
    }));
    registry
}

/// Encodes `registry` as the `/metrics` answer.
pub fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

/// `GET /metrics`.
pub async fn handle(registry: Arc<Registry>) -> Response {
    match render(&registry) {
        Ok(body) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        Err(_) => super::ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "MetricsError",
            "cannot encode the metrics",
        )
        .into_response(),
    }
}

/// A server's current state for `switchyard_server_state`.
pub fn server_state(s: &Server, now_ms: u64) -> &'static str {
    match super::nginx::peer_state(s, now_ms) {
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

impl Collector for TableCollector {
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

        counter(
            e,
            &servers,
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
            for (labels, s) in &servers {
                for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].into_iter().enumerate() {
                    let ls: [(&str, &str); 3] = [labels[0], labels[1], ("code_class", class)];
                    let v = s.runtime.stats.responses[i].load(Relaxed);
                    m.encode_family(&ls)?
                        .encode_counter::<NoExemplar, _, f64>(&v, None)?;
                }
            }
        }
        {
            let mut m = e.encode_descriptor(
                "server_active",
                "Requests in flight on the server.",
                None,
                MetricType::Gauge,
            )?;
            for (labels, s) in &servers {
                m.encode_family(labels)?
                    .encode_gauge(&s.runtime.stats.pick.active.load(Relaxed))?;
            }
        }
        counter(
            e,
            &servers,
            "server_fails",
            "Failed attempts (connect errors, resets, timeouts).",
            None,
            |st| st.fails_total.load(Relaxed),
        )?;
        counter(
            e,
            &servers,
            "server_unavail",
            "Times the server became unavail (max_fails within fail_timeout).",
            None,
            |st| st.unavail_total.load(Relaxed),
        )?;
        counter(
            e,
            &servers,
            "server_health_checks",
            "Active health checks done.",
            None,
            |st| st.checks_total.load(Relaxed),
        )?;
        counter(
            e,
            &servers,
            "server_health_check_fails",
            "Active health checks failed.",
            None,
            |st| st.checks_failed.load(Relaxed),
        )?;
        counter(
            e,
            &servers,
            "server_unhealthy",
            "Times the server became unhealthy.",
            None,
            |st| st.unhealthy_total.load(Relaxed),
        )?;
        {
            let mut m = e.encode_descriptor(
                "server_state",
                "The server's current state: 1 for it, 0 for the others.",
                None,
                MetricType::Gauge,
            )?;
            for (labels, s) in &servers {
                let current = server_state(s, now);
                for state in STATES {
                    let ls: [(&str, &str); 3] = [labels[0], labels[1], ("state", state)];
                    m.encode_family(&ls)?
                        .encode_gauge(&u64::from(state == current))?;
                }
            }
        }
        histogram(
            e,
            &servers,
            "server_header_time",
            "Time to the response headers.",
            |st| &st.header_time,
        )?;
        histogram(
            e,
            &servers,
            "server_response_time",
            "Time to the end of the response.",
            |st| &st.response_time,
        )?;
        counter(
            e,
            &servers,
            "server_sent",
            "Bytes written to the server.",
            Some(&Unit::Bytes),
            |st| st.bytes_sent.load(Relaxed),
        )?;
        counter(
            e,
            &servers,
            "server_received",
            "Bytes read from the server.",
            Some(&Unit::Bytes),
            |st| st.bytes_received.load(Relaxed),
        )?;
        {
            let mut m = e.encode_descriptor(
                "upstream_eligible_servers",
                "Servers of the upstream that take new requests now.",
                None,
                MetricType::Gauge,
            )?;
            for u in &ups {
                let n = u
                    .snapshot()
                    .servers
                    .iter()
                    .filter(|s| s.state == AdminState::Up && s.available(now))
                    .count();
                m.encode_family(&[("upstream", u.name.as_str())])?
                    .encode_gauge(&(n as u64))?;
            }
        }
        {
            let mut m = e.encode_descriptor(
                "admin_changes",
                "Table changes published (admin API, batch).",
                None,
                MetricType::Counter,
            )?;
            m.encode_counter::<NoExemplar, _, f64>(&self.table.admin_changes(), None)?;
        }
        if let Some(c) = self.table.store().and_then(|s| s.cluster_status()) {
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
        }
        {
            let mut m = e.encode_descriptor(
                "uptime",
                "Seconds since switchyard started (its admin API was built).",
                Some(&Unit::Seconds),
                MetricType::Gauge,
            )?;
            m.encode_gauge(&self.started.elapsed().as_secs_f64())?;
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
            .apply(&[Command::SetState {
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
}

//! The status page, `GET /healthcheck`, in the forms that existing tools read.
//!
//! - Default: plain text, the layout of lua-resty-upstream-healthcheck's
//!   `status_page()`: one block per upstream (sorted by name), a blank line
//!   between blocks, `Upstream NAME` (with ` (NO checkers)` when the upstream has
//!   no active health check), then `    Primary Peers` and `    Backup Peers`
//!   (both always printed, even when empty), one `        ADDR UP|DOWN` line per
//!   server. No `Nginx Worker PID:` line: that came from the seed's location, not
//!   from the library's function.
//! - `?verbose=1`: the same layout, each server line followed by
//!   ` key=value` columns (admin state, health, passive state, consecutive
//!   passes and fails, checks and failed checks, last check time and result).
//! - `?format=prometheus`: the library's `prometheus_status_page()` form:
//!   `# HELP`/`# TYPE` lines, then per server one
//!   `nginx_upstream_status_info{name,endpoint,status,role}` line for `UP` and
//!   one for `DOWN` (the current one is 1, the other 0), then per upstream the
//!   summary lines `{name,status="UP|DOWN|UNKNOWN"}` (`UNKNOWN` 1 when it has no
//!   checker). Unlike the library, servers of an upstream without a checker are
//!   listed too: our `DOWN` also reflects operator and passive states.
//! - `?format=json`: everything above per server, as JSON.
//!
//! In fleet mode (`[cluster]`) every form also shows the shared store: whether
//! it answers, the revision applied here and the lag (text: a `Cluster store`
//! block after the upstreams; JSON: `cluster`; Prometheus: two gauges).
//!
//! `DOWN` means "takes no new requests": admin `down` or `drain`, `unhealthy`,
//! `checking`, or passive `unavail`.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::app::AppState;
use super::error::{ApiError, ApiQuery};
use super::views::{ChecksView, health};
use crate::cluster::ClusterStatus;
use crate::upstream::{Server, Upstream};

/// One server as the status page shows it.
#[derive(Debug, Serialize)]
pub struct PeerStatus {
    pub id: u32,
    pub addr: String,
    /// `UP` or `DOWN`.
    pub status: &'static str,
    /// Admin state: `up`, `down`, `drain`.
    pub state: &'static str,
    /// `healthy`, `unhealthy`, `checking` or `unavail`.
    pub health: &'static str,
    /// Passive accounting on its own: `ok` or `unavail`.
    pub passive: &'static str,
    pub health_checks: ChecksView,
}

/// One upstream as the status page shows it.
#[derive(Debug, Serialize)]
pub struct UpstreamStatus {
    pub name: String,
    /// Whether the upstream has an active health check.
    pub checkers: bool,
    pub primary: Vec<PeerStatus>,
    pub backup: Vec<PeerStatus>,
}

impl PeerStatus {
    pub fn of(s: &Server, now_ms: u64) -> PeerStatus {
        let up = super::views::peer_state(s, now_ms) == "up";
        PeerStatus {
            id: s.id,
            addr: s.addr.clone(),
            status: if up { "UP" } else { "DOWN" },
            state: s.state.as_str(),
            health: health(s, now_ms),
            passive: if s.runtime.stats.is_unavail(now_ms) {
                "unavail"
            } else {
                "ok"
            },
            health_checks: ChecksView::of(s),
        }
    }

    fn is_up(&self) -> bool {
        self.status == "UP"
    }
}

impl UpstreamStatus {
    pub fn of(u: &Upstream, now_ms: u64) -> UpstreamStatus {
        let (backup, primary): (Vec<_>, Vec<_>) =
            u.snapshot().servers.iter().partition(|s| s.backup);
        let peers = |v: Vec<&std::sync::Arc<Server>>| -> Vec<PeerStatus> {
            v.into_iter().map(|s| PeerStatus::of(s, now_ms)).collect()
        };
        UpstreamStatus {
            name: u.name.clone(),
            checkers: u.settings.health_check.is_some(),
            primary: peers(primary),
            backup: peers(backup),
        }
    }
}

/// Every upstream of the current table, sorted by name.
pub fn collect(app: &AppState) -> Vec<UpstreamStatus> {
    let now = crate::clock::now_ms();
    let table = app.table.load();
    // The snapshot's map is ordered by name already.
    table
        .upstreams
        .values()
        .map(|u| UpstreamStatus::of(u, now))
        .collect()
}

/// The plain-text page; with `verbose`, extra `key=value` columns per server.
pub fn render_text(ups: &[UpstreamStatus], verbose: bool) -> String {
    let mut out = String::new();
    for (i, u) in ups.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str("Upstream ");
        out.push_str(&u.name);
        if !u.checkers {
            out.push_str(" (NO checkers)");
        }
        out.push_str("\n    Primary Peers\n");
        peer_lines(&mut out, &u.primary, verbose);
        out.push_str("    Backup Peers\n");
        peer_lines(&mut out, &u.backup, verbose);
    }
    out
}

fn peer_lines(out: &mut String, peers: &[PeerStatus], verbose: bool) {
    for p in peers {
        out.push_str("        ");
        out.push_str(&p.addr);
        out.push(' ');
        out.push_str(p.status);
        if verbose {
            let c = &p.health_checks;
            let last = match (&c.last_check, c.last_check_passed) {
                (None, _) => "never".to_string(),
                (Some(t), true) => format!("{t} passed"),
                (Some(t), false) => format!("{t} failed"),
            };
            out.push_str(&format!(
                " id={} admin={} health={} passive={} passes={} fails={} checks={} checks_failed={} last_check={}",
                p.id,
                p.state,
                p.health,
                p.passive,
                c.consecutive_passes,
                c.consecutive_fails,
                c.checks,
                c.fails,
                last.replace(' ', ",")
            ));
        }
        out.push('\n');
    }
}

/// A Prometheus label value, escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The library's Prometheus form (see the module doc).
pub fn render_prometheus(ups: &[UpstreamStatus]) -> String {
    let mut out = String::from(
        "# HELP nginx_upstream_status_info The running status of nginx upstream\n\
         # TYPE nginx_upstream_status_info gauge\n",
    );
    for u in ups {
        let name = label(&u.name);
        for (role, peers) in [("PRIMARY", &u.primary), ("BACKUP", &u.backup)] {
            for p in peers {
                let endpoint = label(&p.addr);
                for status in ["UP", "DOWN"] {
                    let v = u8::from(p.status == status);
                    out.push_str(&format!(
                        "nginx_upstream_status_info{{name=\"{name}\",endpoint=\"{endpoint}\",status=\"{status}\",role=\"{role}\"}} {v}\n"
                    ));
                }
            }
        }
        let any_up = u.primary.iter().chain(&u.backup).any(PeerStatus::is_up);
        let summary = if !u.checkers {
            "UNKNOWN"
        } else if any_up {
            "UP"
        } else {
            "DOWN"
        };
        for status in ["UP", "DOWN", "UNKNOWN"] {
            let v = u8::from(summary == status);
            out.push_str(&format!(
                "nginx_upstream_status_info{{name=\"{name}\",status=\"{status}\"}} {v}\n"
            ));
        }
    }
    out
}

/// The fleet's store, after the upstream blocks (only in fleet mode).
pub fn render_cluster_text(c: &ClusterStatus) -> String {
    let state = if c.connected {
        "connected"
    } else {
        "UNREACHABLE"
    };
    let mut out = format!(
        "\nCluster store {} {} {}\n    applied revision {} of {}, lag {:.1}s\n",
        c.store,
        c.endpoints.join(","),
        state,
        c.applied_revision,
        c.store_revision,
        c.lag_seconds
    );
    if let Some(e) = &c.last_error {
        out.push_str(&format!("    last error: {e}\n"));
    }
    out
}

fn render_cluster_prometheus(c: &ClusterStatus) -> String {
    format!(
        "# HELP switchyard_cluster_store_up Whether the cluster store answers (1) or not (0)\n\
         # TYPE switchyard_cluster_store_up gauge\n\
         switchyard_cluster_store_up {}\n\
         # HELP switchyard_cluster_lag_seconds How long this instance has not been known to be in step with the store\n\
         # TYPE switchyard_cluster_lag_seconds gauge\n\
         switchyard_cluster_lag_seconds {}\n",
        u8::from(c.connected),
        c.lag_seconds
    )
}

#[derive(Debug, Default, Deserialize)]
pub struct StatusQuery {
    format: Option<String>,
    verbose: Option<String>,
}

fn truthy(v: Option<&str>) -> bool {
    matches!(v.map(str::trim), Some("1" | "true" | "yes" | "on" | ""))
}

/// `GET /healthcheck[?format=text|prometheus|json][&verbose=1]`.
pub async fn handle(State(app): State<AppState>, ApiQuery(q): ApiQuery<StatusQuery>) -> Response {
    let ups = collect(&app);
    let verbose = truthy(q.verbose.as_deref());
    let cluster = app.table.store().and_then(|s| s.cluster_status());
    match q.format.as_deref().map(str::trim).unwrap_or("text") {
        "text" | "" => {
            let mut text = render_text(&ups, verbose);
            if let Some(c) = &cluster {
                text.push_str(&render_cluster_text(c));
            }
            ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
        }
        "prometheus" => {
            let mut text = render_prometheus(&ups);
            if let Some(c) = &cluster {
                text.push_str(&render_cluster_prometheus(c));
            }
            (
                [(
                    header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                text,
            )
                .into_response()
        }
        "json" => match &cluster {
            Some(c) => axum::Json(serde_json::json!({ "upstreams": ups, "cluster": c })),
            None => axum::Json(serde_json::json!({ "upstreams": ups })),
        }
        .into_response(),
        other => ApiError::new(
            StatusCode::BAD_REQUEST,
            "BadFormat",
            format!("unknown format {other:?} (expected text, prometheus or json)"),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: u32, addr: &str, up: bool) -> PeerStatus {
        PeerStatus {
            id,
            addr: addr.into(),
            status: if up { "UP" } else { "DOWN" },
            state: if up { "up" } else { "down" },
            health: "healthy",
            passive: "ok",
            health_checks: ChecksView {
                checks: 0,
                fails: 0,
                unhealthy: 0,
                consecutive_passes: 0,
                consecutive_fails: 0,
                last_check: None,
                last_check_passed: false,
                last_passed: None,
            },
        }
    }

    fn sample() -> Vec<UpstreamStatus> {
        vec![
            UpstreamStatus {
                name: "bar.com".into(),
                checkers: false,
                primary: vec![peer(0, "127.0.0.1:1", true)],
                backup: vec![],
            },
            UpstreamStatus {
                name: "foo.com".into(),
                checkers: true,
                primary: vec![
                    peer(0, "192.168.2.145:8080", true),
                    peer(1, "192.168.2.109:8080", false),
                ],
                backup: vec![peer(2, "127.0.0.1:12356", true)],
            },
        ]
    }

    #[test]
    fn text_matches_the_library_layout() {
        let expected = "\
Upstream bar.com (NO checkers)
    Primary Peers
        127.0.0.1:1 UP
    Backup Peers

Upstream foo.com
    Primary Peers
        192.168.2.145:8080 UP
        192.168.2.109:8080 DOWN
    Backup Peers
        127.0.0.1:12356 UP
";
        assert_eq!(render_text(&sample(), false), expected);
        assert_eq!(render_text(&[], false), "");
    }

    #[test]
    fn verbose_text_adds_columns_on_the_same_lines() {
        let text = render_text(&sample(), true);
        assert_eq!(
            text.lines().count(),
            render_text(&sample(), false).lines().count()
        );
        assert!(text.contains(
            "        192.168.2.109:8080 DOWN id=1 admin=down health=healthy passive=ok passes=0 fails=0 checks=0 checks_failed=0 last_check=never\n"
        ), "{text}");
    }

    #[test]
    fn prometheus_form_has_one_line_per_peer_and_status() {
        let text = render_prometheus(&sample());
        let expected = "\
# HELP nginx_upstream_status_info The running status of nginx upstream
# TYPE nginx_upstream_status_info gauge
nginx_upstream_status_info{name=\"bar.com\",endpoint=\"127.0.0.1:1\",status=\"UP\",role=\"PRIMARY\"} 1
nginx_upstream_status_info{name=\"bar.com\",endpoint=\"127.0.0.1:1\",status=\"DOWN\",role=\"PRIMARY\"} 0
nginx_upstream_status_info{name=\"bar.com\",status=\"UP\"} 0
nginx_upstream_status_info{name=\"bar.com\",status=\"DOWN\"} 0
nginx_upstream_status_info{name=\"bar.com\",status=\"UNKNOWN\"} 1
nginx_upstream_status_info{name=\"foo.com\",endpoint=\"192.168.2.145:8080\",status=\"UP\",role=\"PRIMARY\"} 1
nginx_upstream_status_info{name=\"foo.com\",endpoint=\"192.168.2.145:8080\",status=\"DOWN\",role=\"PRIMARY\"} 0
nginx_upstream_status_info{name=\"foo.com\",endpoint=\"192.168.2.109:8080\",status=\"UP\",role=\"PRIMARY\"} 0
nginx_upstream_status_info{name=\"foo.com\",endpoint=\"192.168.2.109:8080\",status=\"DOWN\",role=\"PRIMARY\"} 1
nginx_upstream_status_info{name=\"foo.com\",endpoint=\"127.0.0.1:12356\",status=\"UP\",role=\"BACKUP\"} 1
nginx_upstream_status_info{name=\"foo.com\",endpoint=\"127.0.0.1:12356\",status=\"DOWN\",role=\"BACKUP\"} 0
nginx_upstream_status_info{name=\"foo.com\",status=\"UP\"} 1
nginx_upstream_status_info{name=\"foo.com\",status=\"DOWN\"} 0
nginx_upstream_status_info{name=\"foo.com\",status=\"UNKNOWN\"} 0
";
        assert_eq!(text, expected);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn verbose_flag_values() {
        assert!(truthy(Some("1")));
        assert!(truthy(Some("")));
        assert!(!truthy(Some("0")));
        assert!(!truthy(None));
    }
}

//! Human output of `switchyard ctl`: the parts of the API's views it shows
//! (read leniently: unknown fields are ignored) and the padded text table.

use serde::Deserialize;

/// A server as `ctl` reads it from the API (`ServerView`).
#[derive(Debug, Clone, Deserialize)]
pub struct Server {
    pub id: u32,
    pub addr: String,
    pub weight: u32,
    #[serde(default)]
    pub backup: bool,
    pub state: String,
    pub health: String,
    pub eligible: bool,
    pub active: u64,
    pub requests: u64,
    pub fails: u64,
}

/// An upstream as `ctl` reads it from the API (`UpstreamView`).
#[derive(Debug, Clone, Deserialize)]
pub struct Upstream {
    pub name: String,
    #[serde(default)]
    pub servers: Vec<Server>,
}

const HEADER: [&str; 11] = [
    "UPSTREAM", "ID", "ADDR", "WEIGHT", "STATE", "HEALTH", "ELIGIBLE", "ACTIVE", "REQUESTS",
    "FAILS", "ROLE",
];

/// Columns holding numbers are right-aligned.
const NUMERIC: [bool; 11] = [
    false, true, false, true, false, false, false, true, true, true, false,
];

fn row(upstream: &str, s: &Server) -> [String; 11] {
    [
        upstream.to_string(),
        s.id.to_string(),
        s.addr.clone(),
        s.weight.to_string(),
        s.state.clone(),
        s.health.clone(),
        if s.eligible { "yes" } else { "no" }.to_string(),
        s.active.to_string(),
        s.requests.to_string(),
        s.fails.to_string(),
        if s.backup { "backup" } else { "" }.to_string(),
    ]
}

/// The table of every server of `upstreams`, one line each, columns padded with
/// spaces; an upstream without servers gets a line of its own. Ends in a newline.
pub fn render(upstreams: &[Upstream]) -> String {
    let mut rows: Vec<[String; 11]> = vec![HEADER.map(str::to_string)];
    for u in upstreams {
        if u.servers.is_empty() {
            let mut r: [String; 11] = Default::default();
            r[0] = u.name.clone();
            r[1] = "-".into();
            r[2] = "(no servers)".into();
            rows.push(r);
        }
        for s in &u.servers {
            rows.push(row(&u.name, s));
        }
    }
    let mut widths = [0usize; 11];
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = widths[i].saturating_sub(cell.chars().count());
            if NUMERIC[i] {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `127.0.0.1:9001 (id 1)`
pub fn server_name(s: &Server) -> String {
    format!("{} (id {})", s.addr, s.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(id: u32, addr: &str, backup: bool, state: &str) -> Server {
        Server {
            id,
            addr: addr.into(),
            weight: if id == 1 { 2 } else { 1 },
            backup,
            state: state.into(),
            health: "healthy".into(),
            eligible: state == "up",
            active: 0,
            requests: 1234 * u64::from(id),
            fails: 0,
        }
    }

    #[test]
    fn renders_padded_columns() {
        let ups = vec![Upstream {
            name: "demo".into(),
            servers: vec![
                server(1, "127.0.0.1:9001", false, "up"),
                server(2, "127.0.0.1:9002", false, "down"),
                server(3, "127.0.0.1:9003", true, "up"),
            ],
        }];
        let want = "\
UPSTREAM  ID  ADDR            WEIGHT  STATE  HEALTH   ELIGIBLE  ACTIVE  REQUESTS  FAILS  ROLE
demo       1  127.0.0.1:9001       2  up     healthy  yes            0      1234      0
demo       2  127.0.0.1:9002       1  down   healthy  no             0      2468      0
demo       3  127.0.0.1:9003       1  up     healthy  yes            0      3702      0  backup
";
        assert_eq!(render(&ups), want);
    }

    #[test]
    fn empty_upstream_has_a_line() {
        let ups = vec![Upstream {
            name: "empty".into(),
            servers: vec![],
        }];
        let text = render(&ups);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[1].starts_with("empty      -  (no servers)"), "{text}");
        assert!(!lines[1].ends_with(' '));
    }

    #[test]
    fn reads_the_api_view() {
        let json = r#"{"name":"demo","balance":"round_robin","keepalive":32,"eligible_servers":1,
            "servers":[{"id":7,"addr":"10.0.0.1:80","weight":3,"max_conns":0,"max_fails":1,
            "fail_timeout":"10s","slow_start":"0s","backup":false,"state":"drain",
            "health":"unavail","eligible":false,"active":4,"requests":9,
            "responses":{"1xx":0,"2xx":9,"3xx":0,"4xx":0,"5xx":0},"fails":2,"unavail":1,
            "downtime":0,"idle_connections":0}]}"#;
        let u: Upstream = serde_json::from_str(json).unwrap();
        assert_eq!(u.servers[0].state, "drain");
        assert_eq!(server_name(&u.servers[0]), "10.0.0.1:80 (id 7)");
        assert!(render(&[u]).contains("drain  unavail  no"));
    }
}

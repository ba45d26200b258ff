//! nginx and OpenResty configurations into switchyard's.
//!
//! What maps, and to what:
//! - `upstream NAME { server ADDR params; ... }` → `[upstream.NAME]`, with
//!   `weight`, `max_fails`, `fail_timeout`, `backup`, `down`, `max_conns`,
//!   `slow_start`; `least_conn`, `ip_hash`, `hash KEY [consistent]`, `random two`,
//!   `keepalive`, `keepalive_timeout`. An address without a port gets port 80.
//! - `server { listen ...; server_name ...; location ... { proxy_pass ...; } }` →
//!   a `[[listener]]` per address, with a route per name and location prefix;
//!   `ssl` listeners take the block's `ssl_certificate`/`ssl_certificate_key`;
//!   `proxy_connect/read/send_timeout` and `proxy_next_upstream_tries` go to the
//!   upstream the location proxies to, `client_max_body_size` to the route.
//! - The locations that serve the seed's status page (`hc.status_page()`) and
//!   `/ups_api`, or NGINX Plus's `api`, → `[admin]`: their server's address, and
//!   their `allow`/`deny` rules, which then guard the whole admin API.
//! - lua-resty-upstream-healthcheck's `spawn_checker{...}` and NGINX Plus's
//!   `health_check` (with its `match` block where it maps) → `health_check`.
//!
//! Everything else is reported with its place and why; nothing is dropped silently.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use super::emit::{self, Fields, string};
use super::lexer::{self, Directive};
use super::lua::{self, Value};
use super::{ImportError, Imported, Note};
use crate::config::with_default_port;

/// Deeper than this, an `include` is taken for a loop.
const MAX_INCLUDE_DEPTH: usize = 16;

/// Reads `path` (and what it includes) and translates it.
pub fn import(path: &Path) -> Result<Imported, ImportError> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    let parent = parent.unwrap_or(Path::new("."));
    // Absolute, so that certificate paths in the output hold wherever it is written.
    let base = std::path::absolute(parent).unwrap_or_else(|_| parent.to_path_buf());
    let base = base.as_path();
    let shown = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let mut notes = Vec::new();
    let tree = read(path, &shown, base, 0, &mut notes)?;
    let mut t = Translator {
        notes,
        ..Translator::default()
    };
    // nginx lets a server name an upstream defined further down: read them all first.
    t.upstreams(&tree);
    t.context(&tree, &Inherited::default(), base);
    t.finish()?;
    Ok(Imported {
        toml: t.out.write(&shown),
        notes: t.notes,
    })
}

/// One file, with its includes spliced in where they stand.
fn read(
    path: &Path,
    shown: &str,
    base: &Path,
    depth: usize,
    notes: &mut Vec<Note>,
) -> Result<Vec<Directive>, ImportError> {
    let text = std::fs::read_to_string(path).map_err(|e| ImportError::Read {
        path: path.display().to_string(),
        source: e,
    })?;
    expand(lexer::parse(&text, shown)?, base, depth, notes)
}

/// How a file is named in places: relative to the main file's directory.
fn shown_name(path: &Path, base: &Path) -> String {
    path.strip_prefix(base)
        .unwrap_or(path)
        .display()
        .to_string()
}

fn expand(
    list: Vec<Directive>,
    base: &Path,
    depth: usize,
    notes: &mut Vec<Note>,
) -> Result<Vec<Directive>, ImportError> {
    let mut out = Vec::new();
    for mut d in list {
        if d.name == "include" && d.block.is_none() && d.args.len() == 1 {
            if depth >= MAX_INCLUDE_DEPTH {
                return Err(ImportError::Include {
                    place: d.place(),
                    message: format!("includes nested deeper than {MAX_INCLUDE_DEPTH} (a loop?)"),
                });
            }
            // nginx resolves a relative include against its configuration
            // directory: the main file's.
            let pattern = &d.args[0];
            let full = if Path::new(pattern).is_absolute() {
                PathBuf::from(pattern)
            } else {
                base.join(pattern)
            };
            let paths: Vec<PathBuf> = if pattern.contains(['*', '?', '[']) {
                let text = full.to_string_lossy();
                let mut found: Vec<PathBuf> = glob::glob(&text)
                    .map_err(|e| ImportError::Include {
                        place: d.place(),
                        message: e.to_string(),
                    })?
                    .filter_map(Result::ok)
                    .filter(|p| p.is_file())
                    .collect();
                found.sort();
                found
            } else if full.is_file() {
                vec![full]
            } else {
                notes.push(note(&d, "the included file is not there; skipped"));
                Vec::new()
            };
            for p in paths {
                let shown = shown_name(&p, base);
                out.extend(read(&p, &shown, base, depth + 1, notes)?);
            }
            continue;
        }
        if let Some(block) = d.block.take() {
            d.block = Some(expand(block, base, depth, notes)?);
        }
        out.push(d);
    }
    Ok(out)
}

fn note(d: &Directive, why: &str) -> Note {
    let mut text = d.name.clone();
    for a in &d.args {
        text.push(' ');
        text.push_str(a);
    }
    if d.block.is_some() || d.lua.is_some() {
        text.push_str(" { ... }");
    }
    Note {
        place: d.place(),
        directive: text,
        why: why.to_string(),
    }
}

/// Why common directives have no translation.
fn reason(name: &str) -> &'static str {
    match name {
        "user"
        | "pid"
        | "daemon"
        | "master_process"
        | "worker_rlimit_nofile"
        | "worker_cpu_affinity"
        | "worker_priority"
        | "working_directory" => "not needed: process settings of nginx's master and workers",
        "events" | "worker_connections" | "use" | "multi_accept" | "accept_mutex" => {
            "not needed: switchyard's event loop has no settings (see [[listener]] max_connections)"
        }
        "error_log" => "switchyard logs to stderr (--log-format, --log-level, [log])",
        "access_log" | "log_format" => "no access log in switchyard yet",
        "lua_shared_dict"
        | "lua_package_path"
        | "lua_package_cpath"
        | "lua_socket_log_errors"
        | "lua_code_cache" => {
            "not needed: health and state live in switchyard's own table, shared by every worker"
        }
        "zone" => "not needed: the table is shared by every worker already",
        "sendfile"
        | "tcp_nopush"
        | "tcp_nodelay"
        | "types"
        | "default_type"
        | "charset"
        | "server_tokens"
        | "types_hash_max_size"
        | "server_names_hash_bucket_size" => "not needed: serving files is not switchyard's job",
        "gzip" | "gzip_types" | "gzip_vary" | "gzip_proxied" | "gzip_comp_level" => {
            "no compression in switchyard"
        }
        "root" | "index" | "try_files" | "alias" | "autoindex" | "expires" => {
            "switchyard does not serve files"
        }
        "return" | "rewrite" | "if" | "set" | "map" | "error_page" => {
            "no rewriting or scripted answers in switchyard"
        }
        "add_header" | "proxy_set_header" | "proxy_hide_header" | "more_set_headers" => {
            "headers are not rewritten: switchyard passes the client's Host and adds X-Forwarded-For/-Proto"
        }
        "proxy_http_version" => "switchyard speaks HTTP/1.1 with keep-alive to servers already",
        "proxy_buffering" | "proxy_buffers" | "proxy_buffer_size" | "proxy_busy_buffers_size" => {
            "switchyard streams responses; there are no buffers to size"
        }
        "proxy_request_buffering" | "client_body_buffer_size" => {
            "request bodies up to the listener's request_buffer_size are read whole first (a route's request_buffering = false streams them); not translated"
        }
        "proxy_next_upstream" => {
            "switchyard retries on connect errors and timeouts (see retry); the conditions are not configurable"
        }
        "keepalive_timeout"
        | "keepalive_requests"
        | "client_header_timeout"
        | "send_timeout"
        | "client_body_timeout"
        | "client_header_buffer_size"
        | "large_client_header_buffers" => {
            "client-side keep-alive and header settings are [[listener]] keys; not translated"
        }
        "ssl_protocols"
        | "ssl_ciphers"
        | "ssl_prefer_server_ciphers"
        | "ssl_session_cache"
        | "ssl_session_timeout"
        | "ssl_session_tickets"
        | "ssl_dhparam"
        | "ssl_ecdh_curve" => {
            "TLS settings: switchyard offers TLS 1.2 and 1.3 with rustls' safe defaults (min_version to change it)"
        }
        "stream" => "TCP/UDP proxying (stream) is not supported",
        "resolver" | "resolver_timeout" => {
            "names are resolved at start-up; re-resolution is not built yet"
        }
        "limit_req" | "limit_req_zone" | "limit_conn" | "limit_conn_zone" => {
            "no rate limiting in switchyard"
        }
        "auth_basic" | "auth_basic_user_file" | "auth_request" => {
            "no authentication of proxied traffic"
        }
        _ => "no switchyard equivalent",
    }
}

/// Settings that nginx inherits from `http` to `server` to `location`.
#[derive(Debug, Clone, Default)]
/// Values are as they go into the TOML, except the certificate paths, which
/// are kept as written (they are resolved against the configuration directory).
struct Inherited {
    connect_timeout: Option<(String, String)>,
    read_timeout: Option<(String, String)>,
    send_timeout: Option<(String, String)>,
    tries: Option<(String, String)>,
    max_body_size: Option<(String, String)>,
    certificate: Option<(String, String)>,
    certificate_key: Option<(String, String)>,
}

/// Directives read by [`Inherited::take`] (so not reported).
const INHERITED: &[&str] = &[
    "proxy_connect_timeout",
    "proxy_read_timeout",
    "proxy_send_timeout",
    "proxy_next_upstream_tries",
    "client_max_body_size",
    "ssl_certificate",
    "ssl_certificate_key",
];

impl Inherited {
    /// This level's own settings on top of the outer ones; a value that cannot
    /// be read is reported and the outer one kept.
    fn take(&self, list: &[Directive], notes: &mut Vec<Note>) -> Inherited {
        let mut next = self.clone();
        for d in list {
            let Some(arg) = d.args.first() else { continue };
            let place = d.place();
            let slot = match d.name.as_str() {
                "proxy_connect_timeout" => &mut next.connect_timeout,
                "proxy_read_timeout" => &mut next.read_timeout,
                "proxy_send_timeout" => &mut next.send_timeout,
                "proxy_next_upstream_tries" => &mut next.tries,
                "client_max_body_size" => &mut next.max_body_size,
                "ssl_certificate" => &mut next.certificate,
                "ssl_certificate_key" => &mut next.certificate_key,
                _ => continue,
            };
            let value = match d.name.as_str() {
                "proxy_connect_timeout" | "proxy_read_timeout" | "proxy_send_timeout" => {
                    duration(arg).map(|ms| string(&format_ms(ms)))
                }
                "proxy_next_upstream_tries" => arg.parse::<u64>().ok().map(|n| n.to_string()),
                "client_max_body_size" => size(arg).map(|n| n.to_string()),
                _ => Some(arg.clone()),
            };
            match value {
                Some(v) => *slot = Some((v, place)),
                None => notes.push(note(d, "cannot read this value; not translated")),
            }
        }
        next
    }
}

/// An nginx time (`10s`, `500ms`, `1m`, `30`: seconds) in milliseconds.
fn duration(text: &str) -> Option<u64> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().ok()?;
    let ms = match unit {
        "" | "s" => 1000,
        "ms" => 1,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(ms)
}

fn format_ms(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// An nginx size (`1m`, `512k`, `10`: bytes) in bytes.
fn size(text: &str) -> Option<u64> {
    let lower = text.to_ascii_lowercase();
    let (n, mult) = match lower.as_bytes().last()? {
        b'k' => (&lower[..lower.len() - 1], 1024),
        b'm' => (&lower[..lower.len() - 1], 1024 * 1024),
        b'g' => (&lower[..lower.len() - 1], 1024 * 1024 * 1024),
        _ => (lower.as_str(), 1),
    };
    n.parse::<u64>().ok()?.checked_mul(mult)
}

/// A `listen` value as a socket address, or why not.
fn listen_addr(value: &str) -> Result<(String, Option<&'static str>), &'static str> {
    if value.starts_with("unix:") {
        return Err("UNIX sockets are not supported");
    }
    if value.chars().all(|c| c.is_ascii_digit()) {
        return Ok((format!("0.0.0.0:{value}"), None));
    }
    if let Some(port) = value.strip_prefix("*:") {
        return Ok((format!("0.0.0.0:{port}"), None));
    }
    let full = with_default_port(value);
    if full.parse::<std::net::SocketAddr>().is_ok() {
        return Ok((full, None));
    }
    if let Some(port) = full.strip_prefix("localhost:") {
        return Ok((
            format!("127.0.0.1:{port}"),
            Some("localhost taken as 127.0.0.1"),
        ));
    }
    Err("a listen address must be an IP address and port")
}

/// What a location turned out to be.
enum Served {
    Route {
        prefix: String,
        upstream: String,
        max_body_size: Option<(String, String)>,
        place: String,
    },
    Admin {
        rules: Vec<String>,
        rules_place: Option<String>,
        read_only: bool,
        place: String,
    },
}

/// One usable `listen` of a server block.
struct Listen {
    addr: String,
    ssl: bool,
    place: String,
}

/// A location's `proxy_pass`: the upstream (or address) it names, whether
/// it is `https://`, and where it stands.
struct ProxyPass {
    upstream: String,
    https: bool,
    place: String,
}

/// What a location's directives say, read before deciding what it serves.
#[derive(Default)]
struct LocationBlock {
    proxy: Option<ProxyPass>,
    /// `allow`/`deny` rules as written, and where the first stands.
    rules: Vec<String>,
    rules_place: Option<String>,
    /// `Some(read_only)` when the location serves the admin API.
    admin: Option<bool>,
    /// NGINX Plus `health_check` directives.
    checks: Vec<Directive>,
}

#[derive(Default)]
struct Translator {
    out: emit::Config,
    notes: Vec<Note>,
    /// `match` blocks of NGINX Plus, by name.
    matches: BTreeMap<String, Directive>,
    /// Health checks to attach once every upstream is known.
    checkers: Vec<(lua::Checker, String)>,
    plus_checks: Vec<(String, Directive, Option<String>)>,
    /// Upstreams some proxy_pass names, and those it names with https.
    proxied: HashSet<String>,
    https: HashSet<String>,
    workers: Option<(String, String)>,
}

impl Translator {
    fn report(&mut self, d: &Directive, why: &str) {
        self.notes.push(note(d, why));
    }

    /// Every `upstream` block of the main and `http` contexts.
    fn upstreams(&mut self, list: &[Directive]) {
        for d in list {
            match (d.name.as_str(), &d.block) {
                ("upstream", _) => self.upstream(d),
                ("http", Some(block)) => self.upstreams(block),
                _ => {}
            }
        }
    }

    /// The main and `http` contexts (a file that is only an `http`-level
    /// include, as the seed's status.conf, reads the same). Relative file
    /// names are taken from `base`, as nginx takes them from its configuration
    /// directory.
    fn context(&mut self, list: &[Directive], outer: &Inherited, base: &Path) {
        let inh = outer.take(list, &mut self.notes);
        for d in list
            .iter()
            .filter(|d| d.name == "match" && d.block.is_some())
        {
            if let Some(name) = d.args.first() {
                self.matches.insert(name.clone(), d.clone());
            }
        }
        for d in list {
            match d.name.as_str() {
                "http" => match &d.block {
                    Some(block) => self.context(block, &inh, base),
                    None => self.report(d, "http without a block"),
                },
                "upstream" => {}
                "server" => self.server(d, &inh, base),
                "match" => {}
                "init_worker_by_lua_block" => self.lua_checkers(d),
                "init_worker_by_lua" => self.lua_checkers(d),
                "init_worker_by_lua_file" => self.report(
                    d,
                    "Lua files are not read: write the health_check of each upstream by hand",
                ),
                "worker_processes" => match d.args.first().map(String::as_str) {
                    Some("auto") => {}
                    Some(n) if n.parse::<u32>().is_ok_and(|n| n > 0) => {
                        self.workers = Some((n.to_string(), d.place()));
                    }
                    _ => self.report(d, "cannot read this value; not translated"),
                },
                name if INHERITED.contains(&name) => {}
                name => {
                    let why = reason(name);
                    self.report(d, why);
                }
            }
        }
    }

    fn upstream(&mut self, d: &Directive) {
        let (Some(name), Some(block)) = (d.args.first(), &d.block) else {
            self.report(d, "an upstream needs a name and a block");
            return;
        };
        if self.out.upstreams.iter().any(|u| &u.name == name) {
            self.report(
                d,
                "an upstream of this name came earlier; this one is left out",
            );
            return;
        }
        let mut u = emit::Upstream::new(name, &d.place());
        for x in block {
            let place = x.place();
            let arg = x.args.first().map(String::as_str);
            match (x.name.as_str(), arg) {
                ("server", Some(_)) => {
                    if let Some(s) = self.server_line(x) {
                        u.servers.push(s);
                    }
                }
                ("least_conn", None) => u.set("balance", string("least_conn"), &place),
                ("ip_hash", None) => u.set("balance", string("ip_hash"), &place),
                ("hash", Some(key)) => match hash_key(key) {
                    Some(k) => {
                        u.set("balance", string("hash"), &place);
                        u.set("hash_key", string(&k), &place);
                        if x.args.get(1).map(String::as_str) != Some("consistent") {
                            self.report(
                                x,
                                "switchyard's hash is always consistent (ketama, as `consistent`): keys move only when their server comes or goes",
                            );
                        }
                    }
                    None => self.report(
                        x,
                        "hash keys are $request_uri, $remote_addr, $http_NAME or $cookie_NAME; not translated",
                    ),
                },
                ("random", _) => {
                    u.set("balance", string("random_two"), &place);
                    if x.args.first().map(String::as_str) != Some("two")
                        || x.args.get(1).is_some_and(|m| m != "least_conn")
                    {
                        self.report(x, "translated as random_two (two random choices, the less loaded wins)");
                    }
                }
                ("keepalive", Some(n)) if n.parse::<u64>().is_ok() => {
                    u.set("keepalive", n.to_string(), &place);
                }
                ("keepalive_timeout", Some(t)) if duration(t).is_some() => {
                    let ms = duration(t).unwrap_or_default();
                    u.set("keepalive_timeout", string(&format_ms(ms)), &place);
                }
                ("keepalive_requests" | "keepalive_time", _) => self.report(
                    x,
                    "switchyard keeps an upstream connection until it idles out or the server closes it",
                ),
                (name, _) => {
                    let why = reason(name);
                    self.report(x, why);
                }
            }
        }
        if u.servers.is_empty() {
            self.report(
                d,
                "no server could be translated: the upstream has none (502 until some are added)",
            );
        }
        self.out.upstreams.push(u);
    }

    /// `server ADDR params;` inside an upstream.
    fn server_line(&mut self, x: &Directive) -> Option<emit::Server> {
        let addr = &x.args[0];
        if addr.starts_with("unix:") {
            self.report(x, "UNIX sockets are not supported; server left out");
            return None;
        }
        let mut fields: Fields = vec![("addr", string(&with_default_port(addr)))];
        for p in &x.args[1..] {
            let (k, v) = p.split_once('=').unwrap_or((p.as_str(), ""));
            let value = match k {
                "weight" | "max_fails" | "max_conns" => {
                    v.parse::<u64>().ok().map(|n| n.to_string())
                }
                "fail_timeout" | "slow_start" => duration(v).map(|ms| string(&format_ms(ms))),
                "backup" | "down" if v.is_empty() => Some("true".to_string()),
                _ => None,
            };
            match (value, k) {
                (Some(v), "weight") => fields.push(("weight", v)),
                (Some(v), "max_fails") => fields.push(("max_fails", v)),
                (Some(v), "max_conns") => fields.push(("max_conns", v)),
                (Some(v), "fail_timeout") => fields.push(("fail_timeout", v)),
                (Some(v), "slow_start") => fields.push(("slow_start", v)),
                (Some(v), "backup") => fields.push(("backup", v)),
                (Some(v), "down") => fields.push(("down", v)),
                (_, "resolve" | "service") => self.report(
                    x,
                    &format!("`{p}`: re-resolution and SRV records are not built yet; the name is resolved once at start-up"),
                ),
                _ => self.report(x, &format!("server parameter `{p}` is not translated")),
            }
        }
        Some(emit::Server {
            fields,
            place: x.place(),
        })
    }

    fn server(&mut self, d: &Directive, outer: &Inherited, base: &Path) {
        let Some(block) = &d.block else {
            self.report(d, "a server needs a block");
            return;
        };
        let inh = outer.take(block, &mut self.notes);
        let mut listens: Vec<Listen> = Vec::new();
        let mut names: Vec<Option<String>> = Vec::new();
        let mut served = Vec::new();
        for x in block {
            match x.name.as_str() {
                "listen" => {
                    if let Some(l) = self.listen(x) {
                        listens.push(l);
                    }
                }
                "server_name" => {
                    for n in &x.args {
                        match server_name(n) {
                            Ok(hosts) => names.extend(hosts),
                            Err(why) => self.report(x, &format!("`{n}`: {why}")),
                        }
                    }
                }
                "location" => self.location(x, &inh, &mut served),
                "http2" => {}
                name if INHERITED.contains(&name) => {}
                name => {
                    let why = reason(name);
                    self.report(x, why);
                }
            }
        }
        if listens.is_empty() {
            self.report(d, "no listen: nginx's default, 0.0.0.0:80, is used");
            listens.push(Listen {
                addr: "0.0.0.0:80".into(),
                ssl: false,
                place: d.place(),
            });
        }
        if names.is_empty() {
            names.push(None);
        }
        let routes = self.served(served, &listens[0].addr, &names);
        if routes.is_empty() {
            return;
        }
        for listen in &listens {
            self.listener(d, listen, &inh, base, &routes);
        }
    }

    /// One `listen` directive, with what of its parameters does not translate
    /// reported; `None` when its address cannot be used.
    fn listen(&mut self, x: &Directive) -> Option<Listen> {
        let value = x.args.first()?;
        match listen_addr(value) {
            Ok((addr, why)) => {
                if let Some(why) = why {
                    self.report(x, why);
                }
                let ssl = x.args[1..].iter().any(|a| a == "ssl");
                for extra in &x.args[1..] {
                    match extra.as_str() {
                        "ssl" | "default_server" | "default" | "reuseport" => {}
                        "http2" => self.report(
                            x,
                            "`http2`: every TLS listener offers HTTP/2 through ALPN already",
                        ),
                        other => {
                            self.report(x, &format!("listen parameter `{other}` is not translated"))
                        }
                    }
                }
                Some(Listen {
                    addr,
                    ssl,
                    place: x.place(),
                })
            }
            Err(why) => {
                self.report(x, why);
                None
            }
        }
    }

    /// What a server's locations serve: the admin ones go to `[admin]` on the
    /// server's first address; the proxied ones become a route per server
    /// name, returned in order for every listener of the server.
    fn served(
        &mut self,
        served: Vec<Served>,
        first_addr: &str,
        names: &[Option<String>],
    ) -> Vec<(Fields, String)> {
        let mut routes = Vec::new();
        for s in served {
            match s {
                Served::Admin {
                    rules,
                    rules_place,
                    read_only,
                    place,
                } => self.admin(first_addr, rules, rules_place, read_only, &place),
                Served::Route {
                    prefix,
                    upstream,
                    max_body_size,
                    place,
                } => {
                    for host in names {
                        let mut fields: Fields = Vec::new();
                        if let Some(h) = host {
                            fields.push(("host", string(h)));
                        }
                        fields.push(("path_prefix", string(&prefix)));
                        fields.push(("upstream", string(&upstream)));
                        if let Some((n, _)) = &max_body_size
                            && n != "0"
                        {
                            fields.push(("max_body_size", n.clone()));
                        }
                        routes.push((fields, place.clone()));
                    }
                }
            }
        }
        routes
    }

    /// Puts a server's `routes` on the `[[listener]]` for `listen`, made or
    /// found (several server blocks may share an address), with its
    /// certificate when it is `ssl`. A listener without a certificate to use
    /// is left out, reported.
    fn listener(
        &mut self,
        d: &Directive,
        listen: &Listen,
        inh: &Inherited,
        base: &Path,
        routes: &[(Fields, String)],
    ) {
        let Listen { addr, ssl, place } = listen;
        let cert = match (ssl, &inh.certificate, &inh.certificate_key) {
            (false, _, _) => None,
            (true, Some((c, _)), Some((k, _))) => {
                let file = |v: &str| base.join(v).display().to_string();
                Some((file(c), file(k)))
            }
            (true, _, _) => {
                self.notes.push(Note {
                    place: place.clone(),
                    directive: format!("listen {addr} ssl"),
                    why: "no ssl_certificate and ssl_certificate_key for it; listener left out"
                        .into(),
                });
                return;
            }
        };
        let listener = match self
            .out
            .listeners
            .iter_mut()
            .position(|l| &l.listen == addr)
        {
            Some(i) => &mut self.out.listeners[i],
            None => {
                self.out.listeners.push(emit::Listener {
                    listen: addr.clone(),
                    place: place.clone(),
                    certificates: Vec::new(),
                    routes: Vec::new(),
                });
                let last = self.out.listeners.len() - 1;
                &mut self.out.listeners[last]
            }
        };
        if let Some((c, k)) = cert
            && !listener.certificates.iter().any(|(x, _, _)| *x == c)
        {
            listener.certificates.push((c, k, d.place()));
        }
        for (fields, rplace) in routes {
            let key = |f: &Fields| {
                f.iter()
                    .filter(|(k, _)| *k == "host" || *k == "path_prefix")
                    .cloned()
                    .collect::<Vec<_>>()
            };
            if listener
                .routes
                .iter()
                .any(|r| key(&r.fields) == key(fields))
            {
                self.notes.push(Note {
                    place: rplace.clone(),
                    directive: format!("location on {addr}"),
                    why: "an earlier server block already routes this host and path here; left out"
                        .into(),
                });
                continue;
            }
            listener.routes.push(emit::Route {
                fields: fields.clone(),
                place: rplace.clone(),
            });
        }
    }

    fn admin(
        &mut self,
        listen: &str,
        rules: Vec<String>,
        rules_place: Option<String>,
        read_only: bool,
        place: &str,
    ) {
        match &mut self.out.admin {
            None => {
                self.out.admin = Some(emit::Admin {
                    listen: listen.to_string(),
                    place: place.to_string(),
                    rules,
                    rules_place,
                    read_only,
                });
            }
            Some(a) => {
                if a.listen != listen {
                    self.notes.push(Note {
                        place: place.to_string(),
                        directive: format!("admin location on {listen}"),
                        why: format!(
                            "the admin API listens on one address, {} (first found)",
                            a.listen
                        ),
                    });
                }
                if a.rules.is_empty() != rules.is_empty() {
                    self.notes.push(Note {
                        place: place.to_string(),
                        directive: "allow/deny".into(),
                        why: "one admin location has access rules and another has none: the rules now guard the whole admin API (status page, /ups_api and the rest)".into(),
                    });
                }
                if a.rules.is_empty() && !rules.is_empty() {
                    a.rules = rules;
                    a.rules_place = rules_place;
                } else if !rules.is_empty() && a.rules != rules {
                    self.notes.push(Note {
                        place: place.to_string(),
                        directive: "allow/deny".into(),
                        why: "the admin API has one set of rules: the first location's are kept"
                            .into(),
                    });
                }
                a.read_only &= read_only;
            }
        }
    }

    fn location(&mut self, d: &Directive, outer: &Inherited, served: &mut Vec<Served>) {
        let Some(block) = &d.block else {
            self.report(d, "a location needs a block");
            return;
        };
        let (modifier, path) = match d.args.as_slice() {
            [path] => ("", path.as_str()),
            [m, path] => (m.as_str(), path.as_str()),
            _ => {
                self.report(d, "cannot read this location");
                return;
            }
        };
        let inh = outer.take(block, &mut self.notes);
        let found = self.location_block(block, path, &inh, served);
        if let Some(read_only) = found.admin {
            served.push(Served::Admin {
                rules: found.rules,
                rules_place: found.rules_place,
                read_only,
                place: d.place(),
            });
            return;
        }
        if !found.rules.is_empty() {
            self.report(
                d,
                "allow/deny on proxied traffic is not supported (only on the admin API); not translated",
            );
        }
        let Some(proxy) = found.proxy else {
            if found.checks.is_empty() {
                self.report(d, "no proxy_pass: nothing to route");
            }
            return;
        };
        let Some(prefix) = self.route_prefix(d, modifier, path) else {
            return;
        };
        self.proxied_upstream(&proxy, &inh);
        for c in found.checks {
            self.plus_checks.push((proxy.upstream.clone(), c, None));
        }
        served.push(Served::Route {
            prefix,
            upstream: proxy.upstream,
            max_body_size: inh.max_body_size.clone(),
            place: d.place(),
        });
    }

    /// Reads a location's directives (nested locations are walked, and add
    /// to `served`, as they come); what is not translated is reported.
    fn location_block(
        &mut self,
        block: &[Directive],
        path: &str,
        inh: &Inherited,
        served: &mut Vec<Served>,
    ) -> LocationBlock {
        let mut found = LocationBlock::default();
        for x in block {
            match x.name.as_str() {
                "proxy_pass" => match x.args.first() {
                    Some(url) => match proxy_target(url) {
                        Ok((name, https, rest)) => {
                            if !rest.is_empty() && rest != "/" {
                                self.report(
                                    x,
                                    &format!("the URI part `{rest}` is not applied: switchyard passes the request's path as it came"),
                                );
                            }
                            found.proxy = Some(ProxyPass {
                                upstream: name,
                                https,
                                place: x.place(),
                            });
                        }
                        Err(why) => self.report(x, why),
                    },
                    None => self.report(x, "proxy_pass without a target"),
                },
                "allow" | "deny" => {
                    if let Some(a) = x.args.first() {
                        found.rules.push(format!("{} {a}", x.name));
                        found.rules_place.get_or_insert_with(|| x.place());
                    }
                }
                "api" => {
                    found.admin = Some(!x.args.iter().any(|a| a == "write=on"));
                }
                "content_by_lua_block" | "content_by_lua" => {
                    let text = x
                        .lua
                        .clone()
                        .or_else(|| x.args.first().cloned())
                        .unwrap_or_default();
                    if text.contains("status_page")
                        || text.contains("set_server")
                        || text.contains("api_func")
                        || path == "/ups_api"
                    {
                        found.admin = Some(false);
                    } else {
                        self.report(x, "Lua content handlers are not translated");
                    }
                }
                "health_check" => found.checks.push(x.clone()),
                "location" => self.location(x, inh, served),
                name if INHERITED.contains(&name) => {}
                name => {
                    let why = reason(name);
                    self.report(x, why);
                }
            }
        }
        found
    }

    /// The path prefix a location routes, or `None` (reported) when its
    /// modifier cannot be routed as a prefix.
    fn route_prefix(&mut self, d: &Directive, modifier: &str, path: &str) -> Option<String> {
        match modifier {
            "" | "^~" => Some(path.to_string()),
            "=" => {
                self.report(d, "an exact match is routed as a path prefix");
                Some(path.to_string())
            }
            _ => {
                self.report(
                    d,
                    "regular-expression locations are not supported; not routed",
                );
                None
            }
        }
    }

    /// The upstream a `proxy_pass` names (made, when it names an address),
    /// with the location's inherited proxy settings. The first location to set
    /// a value wins; a later one that differs is reported.
    fn proxied_upstream(&mut self, proxy: &ProxyPass, inh: &Inherited) {
        let ProxyPass {
            upstream: name,
            https,
            place: pplace,
        } = proxy;
        let https = *https;
        if self.out.upstream_mut(name).is_none() {
            // proxy_pass to an address: nginx makes an implicit upstream of it.
            let mut u = emit::Upstream::new(name, pplace);
            let port = if https { 443 } else { 80 };
            let addr = if name.contains(':') && !name.ends_with(']') {
                name.clone()
            } else {
                format!("{name}:{port}")
            };
            u.servers.push(emit::Server {
                fields: vec![("addr", string(&addr))],
                place: pplace.clone(),
            });
            self.out.upstreams.push(u);
        }
        self.proxied.insert(name.clone());
        if https {
            self.https.insert(name.clone());
        }
        let mut conflicts = Vec::new();
        if let Some(u) = self.out.upstream_mut(name) {
            if https {
                u.set("scheme", string("https"), pplace);
            }
            let settings = [
                ("connect_timeout", &inh.connect_timeout),
                ("read_timeout", &inh.read_timeout),
                ("send_timeout", &inh.send_timeout),
            ];
            for (key, value) in settings {
                let Some((v, place)) = value else { continue };
                match u.get(key) {
                    None => u.set(key, v.clone(), place),
                    Some(old) if old == v => {}
                    Some(old) => conflicts.push((place.clone(), key, old.to_string())),
                }
            }
            if let Some((n, place)) = &inh.tries {
                if n == "0" {
                    conflicts.push((
                        place.clone(),
                        "retry",
                        "0 (unlimited) has no switchyard equivalent".into(),
                    ));
                } else if u.get("retry").is_none() {
                    u.set("retry", format!("{{ tries = {n} }}"), place);
                }
            }
        }
        for (place, key, old) in conflicts {
            self.notes.push(Note {
                place,
                directive: key.to_string(),
                why: format!("`{name}` is proxied to from several locations: kept {old}"),
            });
        }
    }

    fn lua_checkers(&mut self, d: &Directive) {
        let text = d
            .lua
            .clone()
            .or_else(|| d.args.first().cloned())
            .unwrap_or_default();
        let found = lua::spawn_checkers(&text);
        if found.is_empty() {
            if text.contains("spawn_checker") {
                self.report(
                    d,
                    "a spawn_checker call could not be read; write the health_check by hand",
                );
            }
            return;
        }
        for c in found {
            // The Lua body starts on the directive's line (`{` there).
            let place = format!("{}:{}", d.file, d.line + c.line - 1);
            self.checkers.push((c, place));
        }
    }

    /// After the walk: checks, defaults nginx implies, and whether there is
    /// anything at all.
    fn finish(&mut self) -> Result<(), ImportError> {
        // Upstreams that no proxy_pass names, with every server on 443: nginx's
        // configuration cannot say their scheme; 443 says https.
        let unreferenced: Vec<String> = self
            .out
            .upstreams
            .iter()
            .filter(|u| !self.proxied.contains(&u.name))
            .filter(|u| {
                !u.servers.is_empty()
                    && u.servers
                        .iter()
                        .all(|s| s.fields[0].1.trim_matches('"').ends_with(":443"))
            })
            .map(|u| u.name.clone())
            .collect();
        for name in unreferenced {
            if let Some(u) = self.out.upstream_mut(&name) {
                let place = u.place.clone();
                u.set("scheme", string("https"), &place);
                self.https.insert(name.clone());
                self.notes.push(Note {
                    place,
                    directive: format!("upstream {name}"),
                    why: "no proxy_pass names it and every server is on port 443: taken as https"
                        .into(),
                });
            }
        }
        let checkers = std::mem::take(&mut self.checkers);
        for (c, place) in checkers {
            self.lua_check(&c, &place);
        }
        let plus = std::mem::take(&mut self.plus_checks);
        for (name, d, _) in plus {
            self.plus_check(&name, &d);
        }
        if self.out.upstreams.is_empty()
            && self.out.listeners.is_empty()
            && self.out.admin.is_none()
        {
            return Err(ImportError::Nothing(
                "no upstream, no proxying server and no admin location".into(),
            ));
        }
        if self.out.listeners.is_empty() && !self.out.upstreams.is_empty() {
            let mut routes: Vec<emit::Route> = Vec::new();
            for u in &self.out.upstreams {
                if u.name.contains('.') {
                    routes.push(emit::Route {
                        fields: vec![
                            ("host", string(&u.name)),
                            ("path_prefix", string("/")),
                            ("upstream", string(&u.name)),
                        ],
                        place: u.place.clone(),
                    });
                }
            }
            let first = &self.out.upstreams[0];
            routes.push(emit::Route {
                fields: vec![
                    ("path_prefix", string("/")),
                    ("upstream", string(&first.name)),
                ],
                place: first.place.clone(),
            });
            self.notes.push(Note {
                place: first.place.clone(),
                directive: "(no server block proxies to an upstream)".into(),
                why: "added a listener on 0.0.0.0:8080 that routes each upstream named like a host by Host, and everything else to the first upstream: change it to what your proxying servers do".into(),
            });
            self.out.listeners.push(emit::Listener {
                listen: "0.0.0.0:8080".into(),
                place: "added by the import".into(),
                certificates: Vec::new(),
                routes,
            });
        }
        self.out.workers = self.workers.take();
        Ok(())
    }

    fn lua_check(&mut self, c: &lua::Checker, place: &str) {
        if c.upstreams.is_empty() {
            self.notes.push(Note {
                place: place.to_string(),
                directive: "spawn_checker{...}".into(),
                why: "its upstream could not be read; write the health_check by hand".into(),
            });
            return;
        }
        for name in &c.upstreams {
            let https = self.https.contains(name);
            let mut notes = Vec::new();
            let mut fields: Fields = Vec::new();
            let kind = match c.fields.get("type") {
                Some(Value::Str(t)) if t == "http" && https => {
                    notes.push("type \"http\" against an https upstream would probe a TLS port in cleartext: translated as \"https\"".to_string());
                    "https".to_string()
                }
                Some(Value::Str(t)) => t.clone(),
                _ => "http".to_string(),
            };
            fields.push(("type", string(&kind)));
            for (key, value) in &c.fields {
                match (key.as_str(), value) {
                    ("type" | "shm" | "upstream", _) => {}
                    ("http_req", Value::Str(s)) => fields.push(("http_req", string(s))),
                    ("interval", Value::Num(ms)) => {
                        fields.push(("interval", string(&format_ms(*ms as u64))));
                    }
                    ("timeout", Value::Num(ms)) => {
                        fields.push(("timeout", string(&format_ms(*ms as u64))));
                    }
                    ("fall", Value::Num(n)) => fields.push(("fall", (*n as u64).to_string())),
                    ("rise", Value::Num(n)) => fields.push(("rise", (*n as u64).to_string())),
                    ("concurrency", Value::Num(n)) => {
                        fields.push(("concurrency", (*n as u64).to_string()));
                    }
                    ("valid_statuses", Value::List(items)) => {
                        let codes: Vec<String> = items
                            .iter()
                            .filter_map(|v| match v {
                                Value::Num(n) => Some((*n as u64).to_string()),
                                _ => None,
                            })
                            .collect();
                        fields.push(("valid_statuses", format!("[{}]", codes.join(", "))));
                    }
                    (other, _) => notes.push(format!("field `{other}` is not translated")),
                }
            }
            match self.out.upstream_mut(name) {
                Some(u) => {
                    u.health = Some((fields, format!("{place} (spawn_checker)")));
                }
                None => notes.push(format!("upstream `{name}` is not defined; check left out")),
            }
            for why in notes {
                self.notes.push(Note {
                    place: place.to_string(),
                    directive: format!("spawn_checker{{ upstream = {name} }}"),
                    why,
                });
            }
        }
    }

    /// NGINX Plus `health_check [interval=T] [fails=N] [passes=N] [uri=U] [match=M]`.
    fn plus_check(&mut self, name: &str, d: &Directive) {
        let https = self.https.contains(name);
        let mut fields: Fields = vec![("type", string(if https { "https" } else { "http" }))];
        for p in &d.args {
            let (k, v) = p.split_once('=').unwrap_or((p.as_str(), ""));
            match k {
                "interval" if duration(v).is_some() => {
                    fields.push(("interval", string(&format_ms(duration(v).unwrap_or(5000)))));
                }
                "fails" if v.parse::<u64>().is_ok() => fields.push(("fall", v.to_string())),
                "passes" if v.parse::<u64>().is_ok() => fields.push(("rise", v.to_string())),
                "uri" => fields.push(("path", string(v))),
                "port" if v.parse::<u16>().is_ok() => fields.push(("port", v.to_string())),
                "mandatory" => fields.push(("mandatory", "true".into())),
                "match" => match self.matches.get(v).cloned() {
                    Some(m) => self.plus_match(&m, &mut fields),
                    None => self.report(d, &format!("match `{v}` is not defined")),
                },
                _ => self.report(
                    d,
                    &format!("health_check parameter `{p}` is not translated"),
                ),
            }
        }
        match self.out.upstream_mut(name) {
            Some(u) => u.health = Some((fields, d.place())),
            None => self.report(d, "its location's upstream is not defined"),
        }
    }

    fn plus_match(&mut self, m: &Directive, fields: &mut Fields) {
        for x in m.block.as_deref().unwrap_or_default() {
            match (x.name.as_str(), x.args.as_slice()) {
                ("status", codes) if !codes.is_empty() && !codes[0].starts_with('!') => {
                    let mut list = Vec::new();
                    for c in codes {
                        match c.split_once('-') {
                            Some((a, b)) => match (a.parse::<u16>(), b.parse::<u16>()) {
                                (Ok(a), Ok(b)) if a <= b && b - a <= 200 => {
                                    list.extend((a..=b).map(|n| n.to_string()));
                                }
                                _ => self.report(x, "cannot read this status range"),
                            },
                            None => match c.parse::<u16>() {
                                Ok(n) => list.push(n.to_string()),
                                Err(_) => self.report(x, "cannot read this status"),
                            },
                        }
                    }
                    fields.push(("valid_statuses", format!("[{}]", list.join(", "))));
                }
                ("body", [op, re]) if op == "~" => fields.push(("body_regex", string(re))),
                _ => self.report(x, "this match condition is not translated"),
            }
        }
    }
}

/// `proxy_pass` target: the upstream (or address) named, whether https, and
/// the URI part.
fn proxy_target(url: &str) -> Result<(String, bool, String), &'static str> {
    let (https, rest) = if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else {
        return Err("only http:// and https:// targets are translated");
    };
    if rest.contains('$') {
        return Err("a proxy_pass with variables cannot be translated");
    }
    if rest.starts_with("unix:") {
        return Err("UNIX sockets are not supported");
    }
    let (host, uri) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if host.is_empty() {
        return Err("proxy_pass without a host");
    }
    Ok((host.to_string(), https, uri.to_string()))
}

/// `server_name` value → route hosts (`None`: any host).
fn server_name(name: &str) -> Result<Vec<Option<String>>, &'static str> {
    if name.is_empty() || name == "_" {
        return Ok(vec![None]);
    }
    if name.starts_with('~') {
        return Err("regular-expression names are not supported");
    }
    if let Some(rest) = name.strip_prefix('.') {
        return Ok(vec![Some(rest.to_string()), Some(format!("*.{rest}"))]);
    }
    if name.ends_with(".*") {
        return Err("a wildcard at the end of a name is not supported");
    }
    Ok(vec![Some(name.to_string())])
}

/// nginx `hash` key → switchyard's `hash_key`.
fn hash_key(key: &str) -> Option<String> {
    match key {
        "$request_uri" | "$uri" => Some("uri".into()),
        "$remote_addr" | "$binary_remote_addr" => Some("remote_addr".into()),
        _ => {
            if let Some(h) = key.strip_prefix("$http_") {
                Some(format!("header:{}", h.replace('_', "-")))
            } else {
                key.strip_prefix("$cookie_").map(|c| format!("cookie:{c}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_times_and_sizes() {
        assert_eq!(duration("10s"), Some(10_000));
        assert_eq!(duration("30"), Some(30_000));
        assert_eq!(duration("500ms"), Some(500));
        assert_eq!(duration("1m"), Some(60_000));
        assert_eq!(duration("1x"), None);
        assert_eq!(format_ms(1500), "1500ms");
        assert_eq!(format_ms(60_000), "60s");
        assert_eq!(size("1m"), Some(1 << 20));
        assert_eq!(size("512K"), Some(512 << 10));
        assert_eq!(size("0"), Some(0));
        assert_eq!(size("lots"), None);
    }

    #[test]
    fn addresses_get_ports_as_nginx_gives_them() {
        assert_eq!(with_default_port("10.0.0.1"), "10.0.0.1:80");
        assert_eq!(with_default_port("10.0.0.1:8080"), "10.0.0.1:8080");
        assert_eq!(with_default_port("[::1]"), "[::1]:80");
        assert_eq!(with_default_port("[::1]:81"), "[::1]:81");
        assert_eq!(with_default_port("app.internal"), "app.internal:80");
        assert_eq!(listen_addr("8080").unwrap().0, "0.0.0.0:8080");
        assert_eq!(listen_addr("*:443").unwrap().0, "0.0.0.0:443");
        assert_eq!(listen_addr("[::]:80").unwrap().0, "[::]:80");
        assert_eq!(listen_addr("127.0.0.1").unwrap().0, "127.0.0.1:80");
        assert_eq!(listen_addr("localhost:81").unwrap().0, "127.0.0.1:81");
        assert!(listen_addr("unix:/run/x.sock").is_err());
        assert!(listen_addr("example.com:80").is_err());
    }

    #[test]
    fn proxy_pass_names_and_hash_keys() {
        assert_eq!(
            proxy_target("http://backend").unwrap(),
            ("backend".into(), false, "".into())
        );
        assert_eq!(
            proxy_target("https://10.0.0.1:8443/api/").unwrap(),
            ("10.0.0.1:8443".into(), true, "/api/".into())
        );
        assert!(proxy_target("http://$backend").is_err());
        assert!(proxy_target("fastcgi://x").is_err());
        assert_eq!(hash_key("$request_uri").as_deref(), Some("uri"));
        assert_eq!(
            hash_key("$http_x_user_id").as_deref(),
            Some("header:x-user-id")
        );
        assert_eq!(hash_key("$cookie_sid").as_deref(), Some("cookie:sid"));
        assert_eq!(hash_key("$args"), None);
        assert_eq!(server_name("_").unwrap(), vec![None]);
        assert_eq!(
            server_name(".a.com").unwrap(),
            vec![Some("a.com".into()), Some("*.a.com".into())]
        );
        assert!(server_name("~^www").is_err());
    }
}

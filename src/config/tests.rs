//! Tests of the config parser: the full example, one broken file per kind of
//! problem (checked for message and place), and the fixture files that the CLI
//! tests share, so those cannot drift from what the parser says.

use std::path::Path;
use std::time::Duration;

use super::*;

fn errors(src: &str) -> Vec<ConfigError> {
    match parse(src, "t.toml") {
        Ok(c) => panic!("expected errors, parsed: {c:#?}"),
        Err(ConfigErrors(e)) => e,
    }
}

/// Asserts `src` yields exactly these errors, each as (line, column, substring).
#[track_caller]
fn assert_errors(src: &str, want: &[(usize, usize, &str)]) {
    let got = errors(src);
    let shown: Vec<String> = got.iter().map(|e| e.to_string()).collect();
    assert_eq!(got.len(), want.len(), "got:\n{}", shown.join("\n"));
    for (e, (line, col, sub)) in got.iter().zip(want) {
        assert!(
            e.line == *line && e.column == *col && e.message.contains(sub),
            "want {line}:{col}: {sub}\ngot:\n{}",
            shown.join("\n")
        );
    }
}

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

#[test]
fn fixtures_match_their_expected_files() {
    let dir = fixtures().join("broken");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    names.sort();
    assert!(names.len() >= 12, "too few fixtures: {names:?}");
    let mut failures = Vec::new();
    for path in names {
        let src = std::fs::read_to_string(&path).unwrap();
        let expected = std::fs::read_to_string(path.with_extension("expected"))
            .unwrap_or_else(|_| panic!("{} has no .expected", path.display()));
        let got = match parse(&src, "f") {
            Ok(_) => vec![],
            Err(ConfigErrors(e)) => e,
        };
        let want: Vec<&str> = expected.lines().filter(|l| !l.is_empty()).collect();
        let ok = got.len() == want.len()
            && got.iter().zip(&want).all(|(e, w)| {
                let (pos, sub) = w.split_once(": ").unwrap();
                pos == format!("{}:{}", e.line, e.column) && e.message.contains(sub)
            });
        if !ok {
            let shown: Vec<String> = got
                .iter()
                .map(|e| format!("{}:{}: {}", e.line, e.column, e.message))
                .collect();
            failures.push(format!("{}:\n{}", path.display(), shown.join("\n")));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

#[test]
fn the_seed_example_parses_with_its_values_and_defaults() {
    let src = std::fs::read_to_string(fixtures().join("good/seed.toml")).unwrap();
    let c = parse(&src, "seed.toml").unwrap_or_else(|e| panic!("{e}"));

    let admin = c.admin.unwrap();
    assert_eq!(admin.listen, "127.0.0.1:18080".parse().unwrap());
    assert_eq!(
        admin.rules,
        vec![
            AccessRule::Deny("10.0.0.5/32".parse().unwrap()),
            AccessRule::Allow("127.0.0.1/32".parse().unwrap()),
            AccessRule::Allow("192.168.2.0/24".parse().unwrap()),
        ]
    );
    assert_eq!(admin.state_file, Some("switchyard.state.json".into()));
    assert_eq!(c.runtime.workers, Some(2));
    assert_eq!(c.runtime.shutdown_grace, Duration::from_secs(30));

    assert_eq!(c.listeners.len(), 1);
    let l = &c.listeners[0];
    assert_eq!(l.listen, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(
        l.routes,
        vec![
            RouteConfig {
                host: Some(HostMatch::Exact("foo.com".into())),
                path_prefix: None,
                upstream: "foo.com".into(),
                max_body_size: None,
                request_buffering: true,
            },
            RouteConfig {
                host: Some(HostMatch::Suffix(".foo.com".into())),
                path_prefix: Some("/api".into()),
                upstream: "x".into(),
                max_body_size: None,
                request_buffering: true,
            },
            RouteConfig {
                host: None,
                path_prefix: Some("/".into()),
                upstream: "foo.com".into(),
                max_body_size: None,
                request_buffering: true,
            },
        ]
    );

    let u = &c.upstreams["foo.com"];
    assert_eq!(u.name, "foo.com");
    assert_eq!(u.balance, Balance::RoundRobin);
    assert_eq!(u.hash_key, None);
    // The seed's nginx config says `keepalive 32`, and so does the fixture.
    assert_eq!(
        u.keepalive,
        KeepaliveConfig {
            max_idle: 32,
            ..KeepaliveConfig::default()
        }
    );
    assert_eq!(u.timeouts, Timeouts::default());
    assert_eq!(u.retry, RetryPolicy::default());
    assert_eq!(u.servers.len(), 3);
    assert_eq!(u.servers[0], ServerConfig::new("192.168.2.145:8080"));
    assert_eq!(
        u.servers[1],
        ServerConfig {
            weight: 2,
            max_fails: 3,
            fail_timeout: Duration::from_secs(30),
            max_conns: 100,
            slow_start: Duration::from_secs(10),
            ..ServerConfig::new("192.168.2.109:8080")
        }
    );
    assert!(u.servers[2].backup);
    let hc = u.health_check.as_ref().unwrap();
    assert_eq!(hc.kind, HealthCheckKind::Http);
    assert_eq!(
        hc.http_req.as_deref(),
        Some("GET / HTTP/1.0\r\nHost: foo.com\r\n\r\n")
    );
    assert_eq!(hc.interval, Duration::from_secs(2));
    assert_eq!(hc.timeout, Duration::from_secs(1));
    assert_eq!((hc.fall, hc.rise, hc.concurrency), (3, 2, 10));
    assert_eq!(hc.valid_statuses, vec![200, 302]);

    let x = &c.upstreams["x"];
    assert_eq!(x.balance, Balance::Hash);
    assert_eq!(x.hash_key, Some(HashKey::Header("x-user".into())));
    assert_eq!(x.servers[0].addr, "backend.internal:9000");
    assert_eq!(x.servers[1].addr, "[::1]:9001");
    assert_eq!(x.servers[1].weight, 5);
}

#[test]
fn defaults_fill_what_is_left_out() {
    let c = parse(
        "[admin]\n[[listener]]\nlisten = \"[::]:80\"\nroutes = [{ upstream = \"a\" }]\n\
         [upstream.a]\nservers = [{ addr = \"a.internal:80\" }]\n\
         health_check = { type = \"tcp\" }\n",
        "t.toml",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let admin = c.admin.unwrap();
    assert_eq!(admin.listen, "127.0.0.1:18080".parse().unwrap());
    assert!(admin.rules.is_empty());
    assert_eq!(c.runtime, RuntimeConfig::default());
    let a = &c.upstreams["a"];
    assert_eq!(a.balance, Balance::RoundRobin);
    assert_eq!(a.servers, vec![ServerConfig::new("a.internal:80")]);
    let hc = a.health_check.as_ref().unwrap();
    assert_eq!(hc.kind, HealthCheckKind::Tcp);
    assert_eq!(hc.interval, Duration::from_secs(2));
    assert_eq!(hc.timeout, Duration::from_secs(1));
    assert_eq!((hc.fall, hc.rise, hc.concurrency), (3, 2, 10));
    assert!(hc.valid_statuses.is_empty());
}

/// A valid listener, for configurations whose problem is elsewhere.
const L: &str = "[[listener]]\nlisten = \"0.0.0.0:80\"\nroutes = [{ upstream = \"a\" }]\n";

fn with_upstream(body: &str) -> String {
    format!("{L}[upstream.a]\n{body}")
}

#[test]
fn unknown_key_in_server() {
    let src = with_upstream("servers = [{ addr = \"10.0.0.1:80\", wieght = 2 }]\n");
    assert_errors(
        &src,
        &[(
            5,
            36,
            "unknown key \"wieght\" in server (expected one of: addr, weight, max_fails",
        )],
    );
}

#[test]
fn syntax_error() {
    assert_errors(
        "[[listener]\nlisten = 1\n",
        &[(1, 12, "TOML syntax error: unclosed array table")],
    );
}

#[test]
fn wrong_type() {
    let src = with_upstream("servers = [{ addr = \"10.0.0.1:80\" }]\nkeepalive = \"32\"\n");
    assert_errors(
        &src,
        &[(
            6,
            13,
            "wrong type for keepalive: expected an integer, found string",
        )],
    );
}

#[test]
fn bad_address() {
    let src = with_upstream("servers = [{ addr = \"1.2.3.4:99999\" }]\n");
    assert_errors(
        &src,
        &[(
            5,
            21,
            "upstream \"a\": server \"1.2.3.4:99999\": bad address: port out of range",
        )],
    );
}

#[test]
fn bad_listen_address() {
    let src = "[[listener]]\nlisten = \"localhost:80\"\nroutes = [{ upstream = \"a\" }]\n\
               [upstream.a]\nservers = [{ addr = \"::1:80\" }]\n";
    assert_errors(
        src,
        &[
            (2, 10, "bad address: \"localhost\" is not an IP address"),
            (5, 21, "bad address: an IPv6 address needs brackets"),
        ],
    );
}

#[test]
fn route_to_missing_upstream() {
    let src = "[[listener]]\nlisten = \"0.0.0.0:80\"\nroutes = [{ upstream = \"bar\" }]\n\
               [upstream.a]\nservers = [{ addr = \"10.0.0.1:80\" }]\n";
    assert_errors(src, &[(3, 24, "route to unknown upstream \"bar\"")]);
}

#[test]
fn duplicate_server() {
    let src = with_upstream(
        "servers = [\n  { addr = \"h.internal:80\" },\n  { addr = \"H.internal:80\" },\n]\n",
    );
    assert_errors(
        &src,
        &[(7, 12, "duplicate server \"H.internal:80\" (also at line 6)")],
    );
}

#[test]
fn upstream_without_servers() {
    assert_errors(&with_upstream(""), &[(4, 1, "upstream has no servers")]);
    assert_errors(
        &with_upstream("servers = []\n"),
        &[(5, 11, "upstream has no servers")],
    );
}

#[test]
fn weight_out_of_range() {
    let src = with_upstream("servers = [{ addr = \"10.0.0.1:80\", weight = 0 }]\n");
    assert_errors(&src, &[(5, 45, "weight 0 out of range 1..=1000")]);
}

#[test]
fn panic_threshold_is_a_percentage_off_when_left_out() {
    let servers = "servers = [{ addr = \"10.0.0.1:80\" }]\n";
    let read = |line: &str| parse(&with_upstream(&format!("{line}{servers}")), "t.toml");
    let threshold = |line: &str| {
        read(line)
            .map(|c| c.upstreams["a"].panic_threshold)
            .map_err(|e| format!("{e:?}"))
    };
    assert_eq!(threshold(""), Ok(None));
    assert_eq!(threshold("panic_threshold = 50\n"), Ok(Some(50)));
    assert_eq!(threshold("panic_threshold = 100\n"), Ok(Some(100)));
    for bad in ["0", "101", "-1"] {
        let src = with_upstream(&format!("panic_threshold = {bad}\n{servers}"));
        let want = format!("upstream \"a\": panic_threshold {bad} out of range 1..=100");
        assert_errors(&src, &[(5, 19, &want)]);
    }
    assert_errors(
        &with_upstream(&format!("panic_threshold = \"50%\"\n{servers}")),
        &[(5, 19, "panic_threshold")],
    );
}

#[test]
fn hash_needs_a_hash_key_and_only_hash_takes_one() {
    let src = with_upstream("balance = \"hash\"\nservers = [{ addr = \"10.0.0.1:80\" }]\n");
    assert_errors(&src, &[(5, 11, "balance \"hash\" needs a hash_key")]);
    let src = with_upstream("hash_key = \"uri\"\nservers = [{ addr = \"10.0.0.1:80\" }]\n");
    assert_errors(
        &src,
        &[(
            5,
            12,
            "hash_key is only used with balance = \"hash\" (balance is \"round_robin\")",
        )],
    );
    let src = with_upstream(
        "balance = \"hash\"\nhash_key = \"header:\"\nservers = [{ addr = \"10.0.0.1:80\" }]\n",
    );
    assert_errors(&src, &[(6, 12, "bad hash_key \"header:\"")]);
}

#[test]
fn backup_with_hashing() {
    let src = with_upstream(
        "balance = \"ip_hash\"\nservers = [{ addr = \"10.0.0.1:80\" }, { addr = \"10.0.0.2:80\", backup = true }]\n",
    );
    assert_errors(
        &src,
        &[(
            6,
            71,
            "backup servers cannot be used with balance \"ip_hash\"",
        )],
    );
}

#[test]
fn bad_duration() {
    let src = with_upstream("read_timeout = \"60 s\"\nservers = [{ addr = \"10.0.0.1:80\" }]\n");
    // humantime accepts "60 s"; "sixty" it does not.
    assert!(parse(&src, "t").is_ok());
    let src = with_upstream("read_timeout = \"sixty\"\nservers = [{ addr = \"10.0.0.1:80\" }]\n");
    assert_errors(&src, &[(5, 16, "bad duration \"sixty\" for read_timeout")]);
}

#[test]
fn bad_cidr() {
    let src = format!(
        "[admin]\ndeny = [\"10.0.0.0/8\", \"300.0.0.0/8\"]\n{}",
        with_upstream("servers = [{ addr = \"10.0.0.1:80\" }]\n")
    );
    assert_errors(&src, &[(2, 23, "bad IP or CIDR \"300.0.0.0/8\" in deny")]);
}

#[test]
fn no_listener_and_no_upstream() {
    assert_errors(
        "",
        &[
            (0, 0, "no upstream: add an [upstream.NAME] section"),
            (0, 0, "no listener: add a [[listener]] section"),
        ],
    );
}

#[test]
fn unknown_balance_method_lists_the_valid_ones() {
    let src = with_upstream("balance = \"rr\"\nservers = [{ addr = \"10.0.0.1:80\" }]\n");
    assert_errors(
        &src,
        &[(
            5,
            11,
            "unknown balance method \"rr\" (expected one of: round_robin, least_conn, ip_hash, hash, random_two)",
        )],
    );
}

#[test]
fn https_upstream_keys_are_read_with_their_defaults() {
    let src = with_upstream(
        "scheme = \"https\"\nprotocol = \"h2\"\ntls_server_name = \"backend.internal\"\n\
         tls_ca = \"ca.pem\"\ntls_client_cert = \"c.pem\"\ntls_client_key = \"c.key\"\n\
         servers = [{ addr = \"10.0.0.1:443\" }]\n\
         health_check = { type = \"https\", path = \"/health\" }\n",
    );
    let c = parse(&src, "t.toml").unwrap_or_else(|e| panic!("{e}"));
    let u = &c.upstreams["a"];
    assert_eq!(u.scheme, Scheme::Https);
    assert_eq!(u.protocol, UpstreamProtocol::H2);
    assert_eq!(u.tls.server_name.as_deref(), Some("backend.internal"));
    assert_eq!(u.tls.ca.as_deref(), Some(Path::new("ca.pem")));
    assert!(u.tls.verify, "verification is on unless turned off");
    assert_eq!(u.tls.client_key.as_deref(), Some(Path::new("c.key")));
    assert_eq!(
        u.health_check.as_ref().map(|h| h.kind),
        Some(HealthCheckKind::Https)
    );
    let plain = parse(
        &with_upstream("servers = [{ addr = \"10.0.0.1:80\" }]\n"),
        "t",
    )
    .unwrap();
    assert_eq!(plain.upstreams["a"].scheme, Scheme::Http);
    assert_eq!(plain.upstreams["a"].protocol, UpstreamProtocol::Http1);
}

#[test]
fn tls_verify_false_with_a_ca_file_is_refused_at_its_place() {
    let src = with_upstream(
        "scheme = \"https\"\ntls_ca = \"ca.pem\"\ntls_verify = false\nservers = [{ addr = \"10.0.0.1:443\" }]\n",
    );
    assert_errors(&src, &[(7, 14, "tls_verify = false ignores tls_ca")]);
}

#[test]
fn a_tls_listener_reads_its_certificates_and_minimum_version() {
    let src = "[[listener]]\nlisten = \"127.0.0.1:8443\"\nroutes = [{ upstream = \"a\" }]\n\
        tls = { min_version = \"1.3\", certificates = [{ cert = \"a.pem\", key = \"a.key\" }, { cert = \"b.pem\", key = \"b.key\" }] }\n\
        [upstream.a]\nservers = [{ addr = \"10.0.0.1:80\" }]\n";
    let mut c = parse(src, "t.toml").unwrap_or_else(|e| panic!("{e}"));
    c.resolve_paths(Path::new("/etc/switchyard"));
    let tls = c.listeners[0].tls.as_ref().unwrap();
    assert_eq!(tls.min_version, TlsVersion::V1_3);
    assert_eq!(tls.certificates.len(), 2);
    assert_eq!(tls.certificates[1].key, Path::new("/etc/switchyard/b.key"));
    let missing_key = src.replace(", key = \"b.key\"", "");
    assert_errors(
        &missing_key,
        &[(4, 81, "missing key \"key\" in certificate")],
    );
}

#[test]
fn unknown_top_level_key() {
    let src = format!(
        "[upstreams.a]\n{}",
        with_upstream("servers = [{ addr = \"10.0.0.1:80\" }]\n")
    );
    assert_errors(
        &src,
        &[(1, 2, "unknown key \"upstreams\" in the top level")],
    );
}

#[test]
fn several_errors_are_all_reported_in_file_order() {
    let src = "\
[runtime]
workers = 0
[[listener]]
listen = \"0.0.0.0:80\"
routes = [{ host = \"a*.com\", upstream = \"a\" }]
[[listener]]
listen = \"0.0.0.0:80\"
[upstream.a]
balance = \"ip_hash\"
servers = [{ addr = \"bad_host:80\", backup = true, max_conns = \"9\" }]
";
    assert_errors(
        src,
        &[
            (2, 11, "runtime: workers 0 out of range 1..=4096"),
            (
                5,
                20,
                "bad host \"a*.com\": a wildcard is only allowed as a leading \"*.\"",
            ),
            (6, 1, "listener has no routes"),
            (
                7,
                10,
                "duplicate listen address 0.0.0.0:80 (also at line 4)",
            ),
            (10, 21, "bad address: bad host name \"bad_host\""),
            (
                10,
                45,
                "backup servers cannot be used with balance \"ip_hash\"",
            ),
            (
                10,
                63,
                "wrong type for max_conns: expected an integer, found string",
            ),
        ],
    );
}

#[test]
fn columns_count_characters_not_bytes() {
    let src = format!(
        "# é€😀\n{}",
        with_upstream("servers = [{ addr = \"10.0.0.1:80\", wéight = 1 }]\n")
    );
    let e = errors(&src);
    assert_eq!((e[0].line, e[0].column), (6, 37), "{e:?}");
    assert_eq!(read::line_col("é\nab€c", 8), (2, 4));
}

#[test]
fn host_names_are_checked_not_resolved() {
    for ok in [
        "a.b:1",
        "[::1]:65535",
        "10.0.0.1:80",
        "xn--bcher-kva.example:8080",
    ] {
        assert_eq!(addr::check_server_addr(ok), Ok(()), "{ok}");
    }
    for bad in [
        "a.b",
        "a.b:0",
        "a..b:80",
        "-a.b:80",
        "1.2.3.999:80",
        "[::1:80",
        "a:b:80",
    ] {
        assert!(addr::check_server_addr(bad).is_err(), "{bad}");
    }
}

#[test]
fn misshapen_sections_are_reported_not_guessed_at() {
    assert_errors(
        "[listener]\nlisten = \"0.0.0.0:80\"\n[upstream.a]\nservers = [\"10.0.0.1:80\", { weight = 2 }]\n",
        &[
            (
                1,
                1,
                "wrong type for listener: expected an array of tables ([[listener]]), found table",
            ),
            (
                4,
                12,
                "upstream \"a\": wrong type for server #1: expected a table, found string",
            ),
            (
                4,
                27,
                "upstream \"a\": server #2: missing key \"addr\" in server",
            ),
        ],
    );
    // An unknown balance is reported once, not again as a hash_key conflict.
    assert_errors(
        &with_upstream("balance = \"rr\"\nhash_key = \"uri\"\nservers = \"x\"\n"),
        &[
            (5, 11, "unknown balance method \"rr\""),
            (
                7,
                11,
                "wrong type for servers: expected an array, found string",
            ),
        ],
    );
}

#[test]
fn every_good_fixture_parses() {
    for entry in std::fs::read_dir(fixtures().join("good")).unwrap() {
        let path = entry.unwrap().path();
        let src = std::fs::read_to_string(&path).unwrap();
        if let Err(e) = parse(&src, &path.display().to_string()) {
            panic!("{e}");
        }
    }
}

#[test]
fn admin_rules_keep_their_order_and_write_rules_token_read_only_are_read() {
    let src = r#"
[admin]
listen = "127.0.0.1:18080"
rules = ["deny 127.0.0.2", "allow 127.0.0.0/8", "allow ::1", "deny all"]
write_allow = ["127.0.0.1"]
read_only = true
token = "0123456789abcdef0123"

[[listener]]
listen = "127.0.0.1:8080"
routes = [{ upstream = "a" }]

[upstream.a]
servers = [{ addr = "127.0.0.1:9000" }]
"#;
    let cfg = super::parse(src, "t.toml").unwrap();
    let admin = cfg.admin.unwrap();
    let net = |s: &str| s.parse::<ipnet::IpNet>().unwrap();
    assert_eq!(
        admin.rules,
        vec![
            AccessRule::Deny(net("127.0.0.2/32")),
            AccessRule::Allow(net("127.0.0.0/8")),
            AccessRule::Allow(net("::1/128")),
            AccessRule::Deny(net("0.0.0.0/0")),
            AccessRule::Deny(net("::/0")),
        ]
    );
    assert_eq!(
        admin.write_rules,
        Some(vec![AccessRule::Allow(net("127.0.0.1/32"))])
    );
    assert!(admin.read_only);
    assert_eq!(admin.token.as_deref(), Some("0123456789abcdef0123"));
}

#[test]
fn bad_admin_rules_and_short_tokens_are_errors_with_places() {
    let src = r#"
[admin]
rules = ["permit 10.0.0.0/8"]
token = "short"

[[listener]]
listen = "127.0.0.1:8080"
routes = [{ upstream = "a" }]

[upstream.a]
servers = [{ addr = "127.0.0.1:9000" }]
"#;
    let errs = super::parse(src, "t.toml").unwrap_err().0;
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert_eq!((errs[0].line, errs[0].column), (3, 10));
    assert!(
        errs[0].message.contains("bad rule in rules"),
        "{}",
        errs[0].message
    );
    assert_eq!(errs[1].line, 4);
    assert!(
        errs[1].message.contains("at least 16"),
        "{}",
        errs[1].message
    );
}

#[test]
fn several_listeners_on_port_0_are_not_duplicates() {
    let src = r#"
[[listener]]
listen = "127.0.0.1:0"
routes = [{ upstream = "a" }]

[[listener]]
listen = "127.0.0.1:0"
routes = [{ upstream = "a" }]

[upstream.a]
servers = [{ addr = "127.0.0.1:9000" }]
"#;
    let c = parse(src, "t.toml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.listeners.len(), 2);
}

#[test]
fn cluster_section_reads_with_defaults() {
    let c = parse(
        r#"
[cluster]
store = "etcd"
endpoints = ["127.0.0.1:2379", "https://10.0.0.2:2379"]
prefix = "/lb/prod/"
username = "sy"
password = "secret"

[[listener]]
listen = "127.0.0.1:8080"
routes = [{ upstream = "app" }]

[upstream.app]
servers = [{ addr = "10.0.0.1:80" }]
"#,
        "t.toml",
    )
    .unwrap();
    let cl = c.cluster.unwrap();
    assert_eq!(cl.endpoints, ["127.0.0.1:2379", "https://10.0.0.2:2379"]);
    assert_eq!(cl.prefix, "/lb/prod", "no trailing slash");
    assert_eq!(cl.timeout, Duration::from_secs(2));
    assert_eq!(cl.username.as_deref(), Some("sy"));
    assert_eq!(cl.tls_ca, None);
}

#[test]
fn cluster_store_must_be_etcd() {
    assert_errors(
        r#"
[cluster]
store = "consul"
endpoints = ["127.0.0.1:2379"]

[[listener]]
listen = "127.0.0.1:8080"
routes = [{ upstream = "app" }]

[upstream.app]
servers = [{ addr = "10.0.0.1:80" }]
"#,
        &[(3, 9, "unknown store \"consul\"")],
    );
}

#[test]
fn log_section_reads_format_and_level_and_defaults_to_neither() {
    let c = parse(
        &format!(
            "[log]\nformat = \"json\"\nlevel = \"warn, switchyard::admin = DEBUG\"\n{}",
            with_upstream("servers = [{ addr = \"10.0.0.1:80\" }]\n")
        ),
        "t.toml",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.log.format, Some(LogFormat::Json));
    assert_eq!(
        c.log.level.as_ref().map(LogLevel::as_str),
        Some("warn,switchyard::admin=DEBUG"),
        "directives are kept, spaces around them dropped"
    );

    let c = parse(
        &with_upstream("servers = [{ addr = \"10.0.0.1:80\" }]\n"),
        "t.toml",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.log, LogConfig::default());
    assert_eq!((c.log.format, c.log.level), (None, None));
}

#[test]
fn bad_log_format_level_and_keys_are_errors_at_their_place() {
    let src = format!(
        "[log]\nformat = \"yaml\"\nlevel = \"verbose\"\ncolour = true\n{}",
        with_upstream("servers = [{ addr = \"10.0.0.1:80\" }]\n")
    );
    assert_errors(
        &src,
        &[
            (
                2,
                10,
                "log: unknown format \"yaml\" (expected \"text\" or \"json\")",
            ),
            (
                3,
                9,
                "log: bad log level \"verbose\": expected one of trace, debug, info, warn, error, off",
            ),
            (
                4,
                1,
                "unknown key \"colour\" in log (expected one of: format, level)",
            ),
        ],
    );
    let src = format!(
        "[log]\nformat = 1\nlevel = \"info,switchyard=loud\"\n{}",
        with_upstream("servers = [{ addr = \"10.0.0.1:80\" }]\n")
    );
    assert_errors(
        &src,
        &[
            (
                2,
                10,
                "wrong type for format: expected a string, found integer",
            ),
            (
                3,
                9,
                "bad log level \"switchyard=loud\" in \"info,switchyard=loud\"",
            ),
        ],
    );
    assert_errors(
        &format!(
            "log = \"debug\"\n{}",
            with_upstream("servers = [{ addr = \"10.0.0.1:80\" }]\n")
        ),
        &[(1, 7, "wrong type for log: expected a table, found string")],
    );
}

#[test]
fn log_levels_are_levels_or_target_directives() {
    for good in [
        "info",
        "WARN",
        "off",
        "info,switchyard=debug",
        "hyper_util::client=trace",
    ] {
        assert!(LogLevel::parse(good).is_ok(), "{good:?} refused");
    }
    for bad in [
        "",
        "verbose",
        "info,",
        "=debug",
        "switchyard=",
        "a b=info",
        "info;debug",
        "[span]=info",
    ] {
        let e = LogLevel::parse(bad).expect_err(bad).to_string();
        assert!(e.starts_with("bad log level"), "{bad:?}: {e}");
    }
}

#[test]
fn the_log_section_is_read_alone_before_the_rest_of_the_file() {
    // The rest of the file is broken; logging still gets its settings.
    let broken_elsewhere = "[log]\nformat = \"json\"\n[upstream.a]\nservers = []\n";
    assert_eq!(
        read::log_section(broken_elsewhere),
        Some(LogConfig {
            format: Some(LogFormat::Json),
            level: None
        })
    );
    assert_eq!(read::log_section("[runtime]\n"), Some(LogConfig::default()));
    assert_eq!(read::log_section("[log]\nlevel = \"loud\"\n"), None);
    assert_eq!(read::log_section("[log\n"), None);
}

#[test]
fn a_route_host_that_is_an_ipv6_literal_is_kept_as_requests_show_it() {
    // The router compares with the request's host without port and brackets
    // (`[::1]:8080` → `::1`): "[::1]" kept as written never matched.
    for written in ["[::1]", "::1", "[0:0::1]", "[::0001]"] {
        assert_eq!(
            addr::host_match(written),
            Ok(HostMatch::Exact("::1".into())),
            "{written}"
        );
    }
    assert_eq!(
        addr::host_match("[FE80::A]"),
        Ok(HostMatch::Exact("fe80::a".into()))
    );
    assert_eq!(
        addr::host_match("10.0.0.1"),
        Ok(HostMatch::Exact("10.0.0.1".into()))
    );
    assert!(addr::host_match("[::1]:80").is_err());
    assert!(addr::host_match("[::1").is_err());
}

#[test]
fn health_uri_is_a_path_and_shutdown_delay_a_duration() {
    let with = |listener: &str, runtime: &str| {
        format!(
            "[runtime]\n{runtime}\n[[listener]]\nlisten = \"127.0.0.1:8080\"\nroutes = [{{ upstream = \"a\" }}]\n{listener}\n\n\
             [upstream.a]\nservers = [{{ addr = \"10.0.0.1:80\" }}]\n"
        )
    };
    let c = parse(&with("", ""), "t.toml").unwrap();
    assert_eq!(c.listeners[0].health_uri, None);
    assert_eq!(c.runtime.shutdown_delay, Duration::ZERO);
    let c = parse(
        &with("health_uri = \"/healthz\"", "shutdown_delay = \"5s\""),
        "t.toml",
    )
    .unwrap();
    assert_eq!(c.listeners[0].health_uri.as_deref(), Some("/healthz"));
    assert_eq!(c.runtime.shutdown_delay, Duration::from_secs(5));
    assert_eq!(
        parse(&with("health_uri = \"/\"", ""), "t.toml")
            .unwrap()
            .listeners[0]
            .health_uri
            .as_deref(),
        Some("/")
    );
    for (bad, says) in [
        ("\"healthz\"", "must start with '/'"),
        ("\"\"", "must start with '/'"),
        ("\"/health?full=1\"", "no '?'"),
        ("\"/health z\"", "no ' '"),
        ("\"/health#x\"", "no '#'"),
        ("\"/santé\"", "non-ASCII"),
        ("42", "health_uri"),
    ] {
        assert_errors(&with(&format!("health_uri = {bad}"), ""), &[(6, 14, says)]);
    }
    assert_errors(
        &with("", "shutdown_delay = \"soon\""),
        &[(2, 18, "shutdown_delay")],
    );
}

#[test]
fn an_https_upstream_with_an_http_check_is_a_warning_not_an_error() {
    let src = with_upstream(
        "scheme = \"https\"\nservers = [{ addr = \"10.0.0.1:443\" }]\nhealth_check = { type = \"http\" }\n",
    );
    let cfg = parse(&src, "t.toml").unwrap();
    let w = cfg.warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("upstream \"a\""), "{w:?}");
    let tcp = parse(&src.replace("\"http\"", "\"tcp\""), "t.toml").unwrap();
    assert!(tcp.warnings().is_empty());
}

#[test]
fn access_log_formats_and_their_mistakes() {
    let with = |v: &str| {
        format!(
            "[[listener]]\nlisten = \"127.0.0.1:8080\"\nroutes = [{{ upstream = \"a\" }}]\naccess_log = {v}\n\n\
             [upstream.a]\nservers = [{{ addr = \"10.0.0.1:80\" }}]\n"
        )
    };
    let c = parse(&with("{ path = \"/var/log/a.log\" }"), "t.toml").unwrap();
    let l = &c.listeners[0];
    assert_eq!(
        l.access_log,
        Some(AccessLogConfig {
            path: AccessLogTarget::File("/var/log/a.log".into()),
            format: AccessLogFormat::Combined,
        })
    );
    assert!(l.request_id && !l.forwarded);
    let c = parse(
        &with("{ path = \"-\", format = \"$status ${request_time}\" }"),
        "t.toml",
    )
    .unwrap();
    assert_eq!(
        c.listeners[0].access_log.as_ref().map(|a| &a.path),
        Some(&AccessLogTarget::Stdout)
    );
    let errs = |v: &str| match parse(&with(v), "t.toml") {
        Ok(_) => panic!("{v} accepted"),
        Err(e) => e.to_string(),
    };
    assert!(errs("{ path = \"a\", format = \"$nope\" }").contains("unknown variable $nope"));
    assert!(errs("{ path = \"a\", format = \"xml\" }").contains("access_log format \"xml\""));
    assert!(errs("{ format = \"json\" }").contains("path"));
    assert!(errs("{ path = \"a\", colour = true }").contains("colour"));
}

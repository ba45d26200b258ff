//! Admin hardening, the config parser: `config::parse` never panics, on arbitrary
//! text and on mutations of the fixtures (the good seed config and every broken
//! one), and every error it reports is placed (line ≥ 1, column ≥ 1, within the
//! text) with a non-empty message — line 0 only for the documented "no listener"
//! / "no upstream" kind, which has no place in the file.
//!
//! proptest, with the case count bounded so that CI stays fast (800 + 1200
//! parses, about 2 s in a debug build); `PROPTEST_CASES=N` raises it locally
//! (each property then runs N cases). A failure is shrunk and printed as its
//! minimal input.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::{TestCaseError, TestRunner};

use switchyard::config::{Config, ConfigErrors, parse};

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn runner(default_cases: u32) -> TestRunner {
    TestRunner::new(ProptestConfig {
        cases: cases(default_cases),
        failure_persistence: None,
        ..ProptestConfig::default()
    })
}

/// The good seed config first, then every broken fixture.
fn corpus() -> &'static [String] {
    static CORPUS: OnceLock<Vec<String>> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
        let mut out = vec![std::fs::read_to_string(format!("{dir}/good/seed.toml")).unwrap()];
        let mut broken: Vec<_> = std::fs::read_dir(format!("{dir}/broken"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        broken.sort();
        out.extend(broken.iter().map(|p| std::fs::read_to_string(p).unwrap()));
        out
    })
}

const KEYS: &[&str] = &[
    "admin",
    "runtime",
    "listener",
    "upstream",
    "listen",
    "allow",
    "deny",
    "rules",
    "write_allow",
    "write_deny",
    "read_only",
    "token",
    "state_file",
    "workers",
    "shutdown_grace",
    "shutdown_delay",
    "routes",
    "health_uri",
    "host",
    "path_prefix",
    "balance",
    "hash_key",
    "keepalive",
    "keepalive_timeout",
    "connect_timeout",
    "read_timeout",
    "send_timeout",
    "retry",
    "scheme",
    "servers",
    "health_check",
    "addr",
    "weight",
    "max_fails",
    "fail_timeout",
    "max_conns",
    "slow_start",
    "backup",
    "down",
    "tries",
    "timeout",
    "non_idempotent",
    "type",
    "http_req",
    "method",
    "path",
    "headers",
    "interval",
    "jitter",
    "fall",
    "rise",
    "valid_statuses",
    "body",
    "body_regex",
    "port",
    "concurrency",
    "mandatory",
];

const VALUES: &[&str] = &[
    "0",
    "1",
    "-1",
    "1001",
    "4096",
    "4097",
    "65535",
    "65536",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "99999999999999999999999",
    "0x10",
    "0o17",
    "0b101",
    "1.5",
    "1e400",
    "nan",
    "-inf",
    "true",
    "false",
    "\"\"",
    "\"x\"",
    "\"0s\"",
    "\"1s\"",
    "\"-1s\"",
    "\"1.5s\"",
    "\"584942417355y\"",
    "\"99999999999999999999s\"",
    "\"all\"",
    "\"allow all\"",
    "\"deny 10.0.0.0/8\"",
    "\"10.0.0.0/33\"",
    "\"::1\"",
    "\"127.0.0.1:0\"",
    "\"127.0.0.1:65536\"",
    "\"[::1]:80\"",
    "\"[::1\"",
    "\":80\"",
    "\"a:b:c\"",
    "\"localhost:8080\"",
    "\"*.foo.com\"",
    "\"*\"",
    "\"foo.com\"",
    "\"x\"",
    "\"/\"",
    "\"hash\"",
    "\"uri\"",
    "\"header:\"",
    "\"cookie:c\"",
    "\"http\"",
    "\"tcp\"",
    "\"https\"",
    "\"(\"",
    "\"GET / HTTP/1.0\\r\\n\\r\\n\"",
    "[]",
    "[1, \"a\"]",
    "[[]]",
    "{}",
    "{ addr = \"127.0.0.1:1\" }",
    "{ upstream = \"x\" }",
    "[{ addr = \"127.0.0.1:1\", weight = 0 }]",
    "1979-05-27T07:32:00Z",
    "'''\nx'''",
    "\"\"\"\n\"\"\"",
];

const TOKENS: &[&str] = &[
    "\"", "'", "[", "]", "[[", "]]", "{", "}", "=", ",", ".", "\n", "\r\n", "\r", "#", "\\", "\\u",
    "\"\"\"", "'''", " ", "\t", "-", "+", "_", ":", "\0", "\u{FEFF}", "é", "😀", "\u{7f}",
    "\u{2028}",
];

const HEADERS: &[&str] = &[
    "[admin]",
    "[runtime]",
    "[[listener]]",
    "[listener]",
    "[[upstream]]",
    "[upstream]",
    "[upstream.z]",
    "[upstream.\"foo.com\"]",
    "[upstream.x.retry]",
    "[upstream.x.health_check]",
    "[upstream.\"foo.com\".health_check.headers]",
    "[[upstream.x.servers]]",
    "[[listener.routes]]",
    "[admin.listen]",
];

/// One change to a text.
#[derive(Debug, Clone)]
enum Edit {
    Delete(Index, usize),
    Insert(Index, String),
    DeleteLine(Index),
    DuplicateLine(Index),
    SwapLines(Index, Index),
    InsertLine(Index, String),
    /// Replaces what follows the `=` of a line.
    ReplaceValue(Index, String),
}

fn boundary(s: &str, i: Index) -> usize {
    let mut p = i.index(s.len() + 1);
    while !s.is_char_boundary(p) {
        p -= 1;
    }
    p
}

fn apply(src: &str, edits: &[Edit]) -> String {
    let mut s = src.to_string();
    for e in edits {
        match e {
            Edit::Delete(at, len) => {
                let a = boundary(&s, *at);
                let mut b = (a + len).min(s.len());
                while !s.is_char_boundary(b) {
                    b += 1;
                }
                s.replace_range(a..b, "");
            }
            Edit::Insert(at, t) => {
                let a = boundary(&s, *at);
                s.insert_str(a, t);
            }
            _ => {
                let mut lines: Vec<String> = s.split('\n').map(String::from).collect();
                let n = lines.len();
                match e {
                    Edit::DeleteLine(i) => {
                        lines.remove(i.index(n));
                    }
                    Edit::DuplicateLine(i) => {
                        let l = lines[i.index(n)].clone();
                        lines.insert(i.index(n), l);
                    }
                    Edit::SwapLines(i, j) => lines.swap(i.index(n), j.index(n)),
                    Edit::InsertLine(i, l) => lines.insert(i.index(n + 1), l.clone()),
                    Edit::ReplaceValue(i, v) => {
                        let l = &mut lines[i.index(n)];
                        if let Some(eq) = l.find('=') {
                            l.replace_range(eq + 1.., &format!(" {v}"));
                        }
                    }
                    _ => unreachable!(),
                }
                s = lines.join("\n");
            }
        }
    }
    s
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(VALUES).prop_map(String::from),
        1 => "\\PC{0,12}".prop_map(|s| format!("{s:?}")),
        1 => "[0-9]{1,25}",
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    let token = prop_oneof![
        select(TOKENS).prop_map(String::from),
        select(KEYS).prop_map(String::from),
        value(),
        "\\PC{1,4}",
    ];
    let line = prop_oneof![
        (select(KEYS), value()).prop_map(|(k, v)| format!("{k} = {v}")),
        select(HEADERS).prop_map(String::from),
    ];
    prop_oneof![
        (any::<Index>(), 1usize..40).prop_map(|(i, n)| Edit::Delete(i, n)),
        (any::<Index>(), token).prop_map(|(i, t)| Edit::Insert(i, t)),
        any::<Index>().prop_map(Edit::DeleteLine),
        any::<Index>().prop_map(Edit::DuplicateLine),
        (any::<Index>(), any::<Index>()).prop_map(|(i, j)| Edit::SwapLines(i, j)),
        (any::<Index>(), line).prop_map(|(i, l)| Edit::InsertLine(i, l)),
        (any::<Index>(), value()).prop_map(|(i, v)| Edit::ReplaceValue(i, v)),
    ]
}

/// The properties of one parse: no panic (the runner catches one and fails the
/// case), and placed, non-empty errors.
fn check(src: &str, result: &Result<Config, ConfigErrors>) -> Result<(), TestCaseError> {
    let Err(ConfigErrors(errors)) = result else {
        return Ok(());
    };
    prop_assert!(!errors.is_empty(), "an Err with no error");
    let last_line = src.matches('\n').count() + 1;
    for e in errors {
        prop_assert_eq!(&e.file, "fuzz.toml");
        prop_assert!(!e.message.trim().is_empty(), "empty message: {:?}", e);
        if e.line == 0 {
            prop_assert!(
                e.message.starts_with("no listener") || e.message.starts_with("no upstream"),
                "an error with no place that is not of the no-listener/no-upstream kind: {:?}",
                e
            );
            prop_assert_eq!(e.column, 0);
        } else {
            prop_assert!(e.line <= last_line, "line past the end: {:?}", e);
            prop_assert!(e.column >= 1, "column 0: {:?}", e);
        }
    }
    Ok(())
}

fn run(name: &str, default_cases: u32, strategy: impl Strategy<Value = String>) {
    let start = Instant::now();
    let (parses, rejected) = (AtomicU64::new(0), AtomicU64::new(0));
    let mut runner = runner(default_cases);
    let result = runner.run(&strategy, |src| {
        parses.fetch_add(1, Ordering::Relaxed);
        let result = parse(&src, "fuzz.toml");
        if result.is_err() {
            rejected.fetch_add(1, Ordering::Relaxed);
        }
        check(&src, &result)
    });
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
    // Executions include the runner's shrinking, if any.
    eprintln!(
        "{name}: {} executions ({} rejected) in {:.2?}",
        parses.load(Ordering::Relaxed),
        rejected.load(Ordering::Relaxed),
        start.elapsed()
    );
}

#[test]
fn arbitrary_text_never_panics_and_errors_are_placed() {
    run(
        "config/arbitrary",
        800,
        prop_oneof![
            any::<String>(),
            // Text made of TOML's own pieces gets past the tokenizer more often.
            prop::collection::vec(
                prop_oneof![
                    select(TOKENS).prop_map(String::from),
                    select(KEYS).prop_map(String::from),
                    select(HEADERS).prop_map(String::from),
                    value(),
                ],
                0..40
            )
            .prop_map(|t| t.concat()),
        ],
    );
}

#[test]
fn mutated_fixtures_never_panic_and_errors_are_placed() {
    let corpus = corpus();
    // The seed config (index 0) twice as often as each broken fixture.
    let seed = prop_oneof![
        2 => Just(0usize),
        1 => 0..corpus.len(),
    ];
    run(
        "config/mutated",
        1200,
        (seed, prop::collection::vec(edit(), 1..6))
            .prop_map(move |(i, edits)| apply(&corpus[i], &edits)),
    );
}

#[test]
fn the_fixtures_themselves_are_checked() {
    for src in corpus() {
        if let Err(e) = check(src, &parse(src, "fuzz.toml")) {
            panic!("{e}\n{src}");
        }
    }
    assert!(parse(&corpus()[0], "fuzz.toml").is_ok());
}

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

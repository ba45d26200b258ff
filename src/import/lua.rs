//! The one piece of OpenResty Lua the import understands: the table given to
//! lua-resty-upstream-healthcheck's `hc.spawn_checker{ ... }`, as the seed
//! article and most OpenResty setups write it.
//!
//! This is not a Lua interpreter. It finds each `spawn_checker` call, reads its
//! table of `key = value` fields (strings with Lua escapes, numbers, names and
//! `{...}` lists), and, when `upstream = v` names a loop variable, the list of
//! upstream names that loop walks (`for _, v in ipairs(ups)` over
//! `local ups = {"a", "b"}`). Anything else is left for the report.
//!
//! Owns: reading checker settings out of Lua text. Does not decide what they
//! become in switchyard's configuration (see `nginx`).

use std::collections::BTreeMap;

/// A field's value in the checker's table.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Num(f64),
    /// A bare name (a variable, `true`, `false`).
    Name(String),
    List(Vec<Value>),
}

/// One `spawn_checker{...}` call: its fields, and the upstreams it applies to.
#[derive(Debug, Clone, PartialEq)]
pub struct Checker {
    pub fields: BTreeMap<String, Value>,
    /// The upstream names: the literal `upstream = "name"`, or every name of the
    /// list a loop variable walks; empty when neither could be read.
    pub upstreams: Vec<String>,
    /// 1-based line of the call inside the Lua text.
    pub line: usize,
}

/// Every checker spawned in `lua`.
pub fn spawn_checkers(lua: &str) -> Vec<Checker> {
    let clean = strip_comments(lua);
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = clean[from..].find("spawn_checker") {
        let at = from + i + "spawn_checker".len();
        from = at;
        let rest = clean[at..].trim_start();
        let rest = rest.strip_prefix('(').map_or(rest, str::trim_start);
        if !rest.starts_with('{') {
            continue;
        }
        let start = clean.len() - rest.len();
        let mut p = Parser {
            s: clean.as_bytes(),
            at: start,
        };
        let Some(fields) = p.table() else { continue };
        from = p.at;
        let line = clean[..start].matches('\n').count() + 1;
        let upstreams = match fields.get("upstream") {
            Some(Value::Str(name)) => vec![name.clone()],
            Some(Value::Name(var)) => loop_list(&clean, var),
            _ => Vec::new(),
        };
        out.push(Checker {
            fields,
            upstreams,
            line,
        });
    }
    out
}

/// The strings of the list that `for _, VAR in ipairs(LIST)` walks, where
/// `LIST = { "a", "b" }` is written in the same text.
fn loop_list(lua: &str, var: &str) -> Vec<String> {
    let words: Vec<&str> = lua
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .collect();
    // `for k , v in pairs ( ups )` → words: for k v in pairs ups
    let mut list_name = None;
    for w in words.windows(6) {
        if w[0] == "for" && w[3] == "in" && (w[4] == "pairs" || w[4] == "ipairs") && w[2] == var {
            list_name = Some(w[5]);
            break;
        }
        if w[0] == "for" && w[2] == "in" && (w[3] == "pairs" || w[3] == "ipairs") && w[1] == var {
            list_name = Some(w[4]);
            break;
        }
    }
    let Some(list) = list_name else {
        return Vec::new();
    };
    // `list = {` ... `}`
    let mut from = 0;
    while let Some(i) = lua[from..].find(list) {
        let at = from + i;
        from = at + list.len();
        let before_ok = at == 0
            || !lua[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_');
        let rest = lua[from..].trim_start();
        if !before_ok || !rest.starts_with('=') || rest.starts_with("==") {
            continue;
        }
        let rest = rest[1..].trim_start();
        if !rest.starts_with('{') {
            continue;
        }
        let mut p = Parser {
            s: lua.as_bytes(),
            at: lua.len() - rest.len(),
        };
        if let Some(Value::List(items)) = p.value() {
            return items
                .into_iter()
                .filter_map(|v| match v {
                    Value::Str(s) => Some(s),
                    _ => None,
                })
                .collect();
        }
    }
    Vec::new()
}

/// The text with `--` comments (and the `#` lines the seed article writes as
/// comments) blanked out, strings untouched; line breaks stay where they were.
fn strip_comments(lua: &str) -> String {
    let b = lua.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            q @ (b'"' | b'\'') => {
                out.push(q);
                i += 1;
                while i < b.len() {
                    let c = b[i];
                    out.push(c);
                    i += 1;
                    if c == b'\\' && i < b.len() {
                        out.push(b[i]);
                        i += 1;
                    } else if c == q || c == b'\n' {
                        break;
                    }
                }
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn skip_blanks(&mut self) {
        while self.s.get(self.at).is_some_and(|c| c.is_ascii_whitespace()) {
            self.at += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.skip_blanks();
        if self.s.get(self.at) == Some(&c) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn name(&mut self) -> Option<String> {
        self.skip_blanks();
        let start = self.at;
        while self
            .s
            .get(self.at)
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'.')
        {
            self.at += 1;
        }
        (self.at > start).then(|| String::from_utf8_lossy(&self.s[start..self.at]).into_owned())
    }

    /// `{ key = value, ... }` as named fields (positional items are skipped).
    fn table(&mut self) -> Option<BTreeMap<String, Value>> {
        if !self.eat(b'{') {
            return None;
        }
        let mut fields = BTreeMap::new();
        loop {
            if self.eat(b'}') {
                return Some(fields);
            }
            let save = self.at;
            match self.name() {
                Some(key) if self.eat(b'=') => {
                    let v = self.value()?;
                    fields.insert(key, v);
                }
                _ => {
                    self.at = save;
                    self.value()?;
                }
            }
            if !self.eat(b',') && !self.eat(b';') {
                return self.eat(b'}').then_some(fields);
            }
        }
    }

    fn value(&mut self) -> Option<Value> {
        self.skip_blanks();
        match *self.s.get(self.at)? {
            q @ (b'"' | b'\'') => {
                self.at += 1;
                let mut out = Vec::new();
                loop {
                    let c = *self.s.get(self.at)?;
                    self.at += 1;
                    match c {
                        b'\\' => {
                            let e = *self.s.get(self.at)?;
                            self.at += 1;
                            out.push(match e {
                                b'r' => b'\r',
                                b'n' => b'\n',
                                b't' => b'\t',
                                b'0' => 0,
                                other => other,
                            });
                        }
                        c if c == q => break,
                        b'\n' => return None,
                        c => out.push(c),
                    }
                }
                Some(Value::Str(String::from_utf8_lossy(&out).into_owned()))
            }
            b'{' => {
                self.at += 1;
                let mut items = Vec::new();
                loop {
                    if self.eat(b'}') {
                        return Some(Value::List(items));
                    }
                    items.push(self.value()?);
                    if !self.eat(b',') && !self.eat(b';') {
                        return self.eat(b'}').then_some(Value::List(items));
                    }
                }
            }
            c if c.is_ascii_digit() || c == b'-' || c == b'.' => {
                let start = self.at;
                self.at += 1;
                while self
                    .s
                    .get(self.at)
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'.')
                {
                    self.at += 1;
                }
                let text = std::str::from_utf8(&self.s[start..self.at]).ok()?;
                text.parse().ok().map(Value::Num)
            }
            _ => self.name().map(Value::Name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = r#"
    local hc = require "resty.upstream.healthcheck"

    # 设置需要健康监测的 upstream
    local ups = {"foo.com","sslback"}

    for k, v in pairs(ups) do
        local ok, err = hc.spawn_checker{
            shm = "_healthcheck_zone",      # 绑定 lua_shared_dict 定义的共享内存
            upstream = v,                   # 绑定 upstream 指令域
            type = "http",
            http_req = "GET / HTTP/1.0\r\nHost: foo.com\r\n\r\n",
            interval = 2000,                # 每 2s 检测一次
            timeout = 1000,
            fall = 3,
            rise = 2,
            valid_statuses = {200, 302},
            concurrency = 10,               # 健康检测请求的并发数为 10
        }
        if not ok then
            ngx.log(ngx.ERR, "failed to spawn health checker: ", err)
            return
        end
    end
"#;

    #[test]
    fn the_seed_articles_checker_applies_to_both_upstreams_of_its_loop() {
        let found = spawn_checkers(SEED);
        assert_eq!(found.len(), 1);
        let c = &found[0];
        assert_eq!(c.upstreams, ["foo.com", "sslback"]);
        assert_eq!(c.fields["type"], Value::Str("http".into()));
        assert_eq!(
            c.fields["http_req"],
            Value::Str("GET / HTTP/1.0\r\nHost: foo.com\r\n\r\n".into())
        );
        assert_eq!(c.fields["interval"], Value::Num(2000.0));
        assert_eq!(
            c.fields["valid_statuses"],
            Value::List(vec![Value::Num(200.0), Value::Num(302.0)])
        );
        assert_eq!(c.line, 8);
    }

    #[test]
    fn a_literal_upstream_and_several_calls() {
        let lua = r#"
            hc.spawn_checker({ upstream = "a", type = "http", fall = 1 }) -- first
            hc.spawn_checker{ upstream = 'b', interval = 500 }
            hc.spawn_checker{ upstream = unknown_var }
        "#;
        let found = spawn_checkers(lua);
        assert_eq!(found.len(), 3);
        assert_eq!(found[0].upstreams, ["a"]);
        assert_eq!(found[1].upstreams, ["b"]);
        assert!(found[2].upstreams.is_empty());
    }

    #[test]
    fn broken_lua_gives_nothing_rather_than_a_guess() {
        assert!(spawn_checkers("hc.spawn_checker{ upstream = \"a\", ").is_empty());
        assert!(spawn_checkers("spawn_checker").is_empty());
        assert!(spawn_checkers("").is_empty());
    }
}

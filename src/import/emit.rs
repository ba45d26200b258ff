//! Writing an import as switchyard's TOML, every part with a comment naming the
//! place it came from (`# nginx.conf:12`). Values arrive already spelled as TOML
//! (see [`string`]); this only lays them out.

use std::fmt::Write as _;

/// A TOML basic string holding `s`, escaped, on one line (an inline table
/// cannot span lines).
pub fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `key = value` pairs, with values spelled as TOML.
pub type Fields = Vec<(&'static str, String)>;

fn inline(fields: &Fields) -> String {
    let parts: Vec<String> = fields.iter().map(|(k, v)| format!("{k} = {v}")).collect();
    format!("{{ {} }}", parts.join(", "))
}

#[derive(Debug, Default)]
pub struct Admin {
    pub listen: String,
    pub place: String,
    /// `allow X` / `deny X`, in order, and where they came from.
    pub rules: Vec<String>,
    pub rules_place: Option<String>,
    pub read_only: bool,
}

#[derive(Debug)]
pub struct Route {
    pub fields: Fields,
    pub place: String,
}

#[derive(Debug)]
pub struct Listener {
    pub listen: String,
    pub place: String,
    /// Certificate and key files, and the place of the server block.
    pub certificates: Vec<(String, String, String)>,
    pub routes: Vec<Route>,
}

#[derive(Debug)]
pub struct Server {
    pub fields: Fields,
    pub place: String,
}

#[derive(Debug)]
pub struct Upstream {
    pub name: String,
    pub place: String,
    /// Settings in the order written, each with its place.
    pub settings: Vec<(&'static str, String, String)>,
    pub servers: Vec<Server>,
    pub health: Option<(Fields, String)>,
}

impl Upstream {
    pub fn new(name: &str, place: &str) -> Upstream {
        Upstream {
            name: name.to_string(),
            place: place.to_string(),
            settings: Vec::new(),
            servers: Vec::new(),
            health: None,
        }
    }

    /// Sets `key` (replacing an earlier value of it).
    pub fn set(&mut self, key: &'static str, value: String, place: &str) {
        self.settings.retain(|(k, _, _)| *k != key);
        self.settings.push((key, value, place.to_string()));
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.settings
            .iter()
            .find(|(k, _, _)| *k == key)
            .map(|(_, v, _)| v.as_str())
    }
}

/// The whole configuration.
#[derive(Debug, Default)]
pub struct Config {
    /// `worker_processes N`, and its place.
    pub workers: Option<(String, String)>,
    pub admin: Option<Admin>,
    pub listeners: Vec<Listener>,
    pub upstreams: Vec<Upstream>,
}

impl Config {
    pub fn upstream_mut(&mut self, name: &str) -> Option<&mut Upstream> {
        self.upstreams.iter_mut().find(|u| u.name == name)
    }

    pub fn write(&self, source: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# switchyard configuration imported from {source} by `switchyard import nginx`.\n\
             # Each part names the nginx line it came from; what was not translated is\n\
             # listed on stderr. Check it with `switchyard check -c FILE`.\n"
        );
        if let Some(a) = &self.admin {
            let _ = writeln!(out, "[admin]  # {}", a.place);
            let _ = writeln!(out, "listen = {}", string(&a.listen));
            if !a.rules.is_empty() {
                let rules: Vec<String> = a.rules.iter().map(|r| string(r)).collect();
                let _ = writeln!(
                    out,
                    "rules = [{}]  # {}",
                    rules.join(", "),
                    a.rules_place.as_deref().unwrap_or(&a.place)
                );
            }
            if a.read_only {
                let _ = writeln!(out, "read_only = true  # `api` without write=on");
            }
            out.push('\n');
        }
        if let Some((n, place)) = &self.workers {
            let _ = writeln!(out, "[runtime]  # {place}\nworkers = {n}\n");
        }
        for l in &self.listeners {
            let _ = writeln!(out, "[[listener]]  # {}", l.place);
            let _ = writeln!(out, "listen = {}", string(&l.listen));
            out.push_str("routes = [\n");
            for r in &l.routes {
                let _ = writeln!(out, "  {},  # {}", inline(&r.fields), r.place);
            }
            out.push_str("]\n");
            if !l.certificates.is_empty() {
                let certs: Vec<String> = l
                    .certificates
                    .iter()
                    .map(|(c, k, _)| format!("{{ cert = {}, key = {} }}", string(c), string(k)))
                    .collect();
                let places: Vec<&str> = l.certificates.iter().map(|(_, _, p)| p.as_str()).collect();
                let _ = writeln!(
                    out,
                    "tls = {{ certificates = [{}] }}  # {}",
                    certs.join(", "),
                    places.join(", ")
                );
            }
            out.push('\n');
        }
        for u in &self.upstreams {
            let _ = writeln!(out, "[upstream.{}]  # {}", string(&u.name), u.place);
            for (k, v, place) in &u.settings {
                let _ = writeln!(out, "{k} = {v}  # {place}");
            }
            out.push_str("servers = [\n");
            for s in &u.servers {
                let _ = writeln!(out, "  {},  # {}", inline(&s.fields), s.place);
            }
            out.push_str("]\n");
            if let Some((fields, place)) = &u.health {
                let _ = writeln!(out, "health_check = {}  # {}", inline(fields), place);
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_for_toml() {
        assert_eq!(string("a\"b\\c\r\n"), "\"a\\\"b\\\\c\\r\\n\"");
        let parsed: toml::Table =
            toml::from_str(&format!("x = {}", string("GET / \"q\"\r\n"))).unwrap();
        assert_eq!(parsed["x"].as_str(), Some("GET / \"q\"\r\n"));
    }
}

//! The entries of the configuration that name servers through DNS
//! (`resolve = true`): what to look up, and the settings every server found
//! for them takes.

use std::net::SocketAddr;

use crate::config::{Config, ServerConfig};

/// One server the records ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    pub weight: u32,
    pub backup: bool,
}

/// What to ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A and AAAA records of `host`, each address with `port`.
    Addr { host: String, port: u16 },
    /// SRV records of `service`, which give ports and weights.
    Srv { service: String },
}

/// One `resolve = true` entry of an upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub upstream: String,
    /// The entry as written (`app.internal:8080`, `_http._tcp.app.internal`):
    /// the servers it finds carry it as their origin, and metrics name it.
    pub key: String,
    pub kind: Kind,
    /// The entry's parameters (weight, max_fails, ...), for each server found.
    pub template: ServerConfig,
}

impl Entry {
    /// The entry `s` of `upstream` stands for, when it is a DNS one.
    pub fn from_config(upstream: &str, s: &ServerConfig) -> Option<Entry> {
        if !s.is_dynamic() {
            return None;
        }
        let kind = match &s.service {
            Some(service) => Kind::Srv {
                service: service.clone(),
            },
            None => {
                let (host, port) = s.addr.rsplit_once(':')?;
                let host = host.trim_start_matches('[').trim_end_matches(']');
                Kind::Addr {
                    host: host.to_string(),
                    port: port.parse().ok()?,
                }
            }
        };
        Some(Entry {
            upstream: upstream.to_string(),
            key: s.addr.clone(),
            kind,
            template: ServerConfig {
                resolve: false,
                service: None,
                ..s.clone()
            },
        })
    }

    /// Whether `other` is this entry (the same name in the same upstream),
    /// its parameters aside.
    pub fn is(&self, other: &Entry) -> bool {
        self.upstream == other.upstream && self.key == other.key
    }

    /// A table server for `addr`, with the entry's parameters and the
    /// record's weight and tier.
    pub fn server(&self, target: &Target) -> ServerConfig {
        ServerConfig {
            addr: target.addr.to_string(),
            weight: target.weight,
            backup: target.backup,
            ..self.template.clone()
        }
    }
}

/// Every DNS entry of `config`, upstream by upstream.
pub fn entries(config: &Config) -> Vec<Entry> {
    config
        .upstreams
        .iter()
        .flat_map(|(name, up)| {
            up.servers
                .iter()
                .filter_map(|s| Entry::from_config(name, s))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_its_name_and_port_or_its_service() {
        let mut s = ServerConfig::new("app.internal:8080");
        assert!(Entry::from_config("u", &s).is_none(), "not resolve = true");
        s.resolve = true;
        s.weight = 3;
        let e = Entry::from_config("u", &s).unwrap();
        assert_eq!(
            e.kind,
            Kind::Addr {
                host: "app.internal".into(),
                port: 8080
            }
        );
        assert_eq!(
            (e.key.as_str(), e.template.weight, e.template.resolve),
            ("app.internal:8080", 3, false)
        );
        let mut srv = ServerConfig::new("_http._tcp.app.internal");
        srv.resolve = true;
        srv.service = Some("_http._tcp.app.internal".into());
        let e = Entry::from_config("u", &srv).unwrap();
        assert_eq!(
            e.kind,
            Kind::Srv {
                service: "_http._tcp.app.internal".into()
            }
        );
        let target = Target {
            addr: "127.0.0.2:9000".parse().unwrap(),
            weight: 7,
            backup: true,
        };
        let made = e.server(&target);
        assert_eq!(
            (made.addr.as_str(), made.weight, made.backup, made.service),
            ("127.0.0.2:9000", 7, true, None)
        );
    }
}

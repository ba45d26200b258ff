//! Routing: which upstream a request on a listener goes to.
//!
//! The host decides first, as `server_name` does in nginx (exact name, then the
//! longest matching `*.suffix`, then routes without a host); among the routes of
//! that host the longest matching path prefix wins, as with nginx prefix locations.

use std::sync::Arc;

use crate::config::{HostMatch, RouteConfig};
use crate::upstream::Upstream;

#[derive(Debug)]
struct Route {
    host: Option<HostMatch>,
    prefix: String,
    upstream: Arc<Upstream>,
}

#[derive(Debug)]
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    /// `lookup` finds the runtime upstream a route names (validated to exist).
    pub fn new<'a>(
        routes: &[RouteConfig],
        lookup: impl Fn(&str) -> Option<&'a Arc<Upstream>>,
    ) -> Result<Router, String> {
        let routes = routes
            .iter()
            .map(|r| {
                let upstream = lookup(&r.upstream)
                    .ok_or_else(|| format!("route to unknown upstream {:?}", r.upstream))?;
                Ok(Route {
                    host: r.host.clone(),
                    prefix: r.path_prefix.clone().unwrap_or_else(|| "/".into()),
                    upstream: Arc::clone(upstream),
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Router { routes })
    }

    /// `host` without port, any case; `path` as in the request line.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<&Arc<Upstream>> {
        let host = host.map(|h| h.trim_end_matches('.'));
        let mut best: Option<(usize, usize, &Route)> = None;
        for r in &self.routes {
            let host_rank = match (&r.host, host) {
                (None, _) => 1,
                (Some(HostMatch::Exact(name)), Some(h)) if h.eq_ignore_ascii_case(name) => {
                    usize::MAX
                }
                (Some(HostMatch::Suffix(sfx)), Some(h))
                    if h.len() > sfx.len()
                        && h.is_char_boundary(h.len() - sfx.len())
                        && h[h.len() - sfx.len()..].eq_ignore_ascii_case(sfx) =>
                {
                    1 + sfx.len()
                }
                _ => continue,
            };
            if !path.starts_with(r.prefix.as_str()) {
                continue;
            }
            let rank = (host_rank, r.prefix.len());
            if best.is_none_or(|(h, p, _)| rank > (h, p)) {
                best = Some((rank.0, rank.1, r));
            }
        }
        best.map(|(_, _, r)| &r.upstream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ServerConfig, UpstreamConfig};
    use crate::upstream::Table;

    fn table(names: &[&str]) -> Table {
        let mut config = Config::single_upstream(
            "127.0.0.1:1".parse().unwrap(),
            vec![ServerConfig::new("127.0.0.1:2")],
        );
        let template = config.upstreams.remove("default").unwrap();
        for n in names {
            let mut u: UpstreamConfig = template.clone();
            u.name = n.to_string();
            config.upstreams.insert(n.to_string(), u);
        }
        Table::from_config(&config).unwrap()
    }

    fn route(host: Option<HostMatch>, prefix: &str, upstream: &str) -> RouteConfig {
        RouteConfig {
            host,
            path_prefix: Some(prefix.into()),
            upstream: upstream.into(),
        }
    }

    #[test]
    fn exact_host_beats_wildcard_beats_any_and_longest_prefix_wins() {
        let t = table(&["exact", "wild", "deep", "any", "api"]);
        let routes = vec![
            route(None, "/", "any"),
            route(None, "/api", "api"),
            route(Some(HostMatch::Suffix(".foo.com".into())), "/", "wild"),
            route(Some(HostMatch::Suffix(".b.foo.com".into())), "/", "deep"),
            route(Some(HostMatch::Exact("foo.com".into())), "/", "exact"),
        ];
        let r = Router::new(&routes, |n| t.upstream(n)).unwrap();
        let name = |h: Option<&str>, p: &str| r.route(h, p).map(|u| u.name.clone());
        assert_eq!(name(Some("FOO.com"), "/api/x").as_deref(), Some("exact"));
        assert_eq!(name(Some("a.foo.com"), "/"), Some("wild".into()));
        assert_eq!(name(Some("a.b.foo.com"), "/"), Some("deep".into()));
        assert_eq!(name(Some("other.org"), "/api/v1"), Some("api".into()));
        assert_eq!(name(None, "/x"), Some("any".into()));
        // `*.foo.com` does not match `foo.com` itself nor `xfoo.com`.
        assert_eq!(name(Some("xfoo.com"), "/"), Some("any".into()));
    }

    #[test]
    fn no_matching_route_is_none() {
        let t = table(&["a"]);
        let routes = vec![route(Some(HostMatch::Exact("a.com".into())), "/app", "a")];
        let r = Router::new(&routes, |n| t.upstream(n)).unwrap();
        assert!(r.route(Some("a.com"), "/other").is_none());
        assert!(r.route(Some("b.com"), "/app").is_none());
    }
}

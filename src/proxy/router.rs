//! Routing: which upstream a request on a listener goes to.
//!
//! The host decides first, as `server_name` does in nginx (exact name, then the
//! longest matching `*.suffix`, then routes without a host); among the routes of
//! that host the longest matching path prefix wins, as with nginx prefix locations.

use crate::config::{HostMatch, RouteConfig};

#[derive(Debug)]
struct Route {
    host: Option<HostMatch>,
    prefix: String,
    /// The upstream's name and its slot in the table (see `Table::slot`): the
    /// upstream is looked up per request, so one created or deleted at run time
    /// is seen at once.
    upstream: String,
    slot: usize,
    max_body_size: Option<u64>,
    request_buffering: bool,
}

/// Where a request goes: the upstream's name and table slot, and the route's
/// body rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    pub upstream: &'a str,
    pub slot: usize,
    pub max_body_size: Option<u64>,
    /// The body may be read whole before a server is picked.
    pub request_buffering: bool,
}

#[derive(Debug)]
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    /// `slot_of` gives the table slot of an upstream name.
    pub fn new(routes: &[RouteConfig], slot_of: impl Fn(&str) -> usize) -> Router {
        let routes = routes
            .iter()
            .map(|r| Route {
                host: r.host.clone(),
                prefix: r.path_prefix.clone().unwrap_or_else(|| "/".into()),
                slot: slot_of(&r.upstream),
                upstream: r.upstream.clone(),
                max_body_size: r.max_body_size,
                request_buffering: r.request_buffering,
            })
            .collect();
        Router { routes }
    }

    /// `host` without port, any case; `path` as in the request line.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<Target<'_>> {
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
        best.map(|(_, _, r)| Target {
            upstream: &r.upstream,
            slot: r.slot,
            max_body_size: r.max_body_size,
            request_buffering: r.request_buffering,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: Option<HostMatch>, prefix: &str, upstream: &str) -> RouteConfig {
        RouteConfig {
            host,
            path_prefix: Some(prefix.into()),
            upstream: upstream.into(),
            max_body_size: None,
            request_buffering: true,
        }
    }

    fn router(routes: &[RouteConfig]) -> Router {
        Router::new(routes, |n| n.len())
    }

    #[test]
    fn exact_host_beats_wildcard_beats_any_and_longest_prefix_wins() {
        let routes = vec![
            route(None, "/", "any"),
            route(None, "/api", "api"),
            route(Some(HostMatch::Suffix(".foo.com".into())), "/", "wild"),
            route(Some(HostMatch::Suffix(".b.foo.com".into())), "/", "deep"),
            route(Some(HostMatch::Exact("foo.com".into())), "/", "exact"),
        ];
        let r = router(&routes);
        let name = |h: Option<&str>, p: &str| r.route(h, p).map(|t| t.upstream.to_string());
        assert_eq!(name(Some("FOO.com"), "/api/x").as_deref(), Some("exact"));
        assert_eq!(name(Some("a.foo.com"), "/"), Some("wild".into()));
        assert_eq!(name(Some("a.b.foo.com"), "/"), Some("deep".into()));
        assert_eq!(name(Some("other.org"), "/api/v1"), Some("api".into()));
        assert_eq!(name(None, "/x"), Some("any".into()));
        // `*.foo.com` does not match `foo.com` itself nor `xfoo.com`.
        assert_eq!(name(Some("xfoo.com"), "/"), Some("any".into()));
        assert_eq!(r.route(None, "/x").map(|t| t.slot), Some(3));
    }

    #[test]
    fn no_matching_route_is_none() {
        let routes = vec![route(Some(HostMatch::Exact("a.com".into())), "/app", "a")];
        let r = router(&routes);
        assert!(r.route(Some("a.com"), "/other").is_none());
        assert!(r.route(Some("b.com"), "/app").is_none());
    }
}

//! What both HTTP paths make of a client's request before it goes to a
//! server: the client's address as header values, request ids, the RFC 7239
//! `Forwarded` element, hop-by-hop headers, and the balancing key.
//!
//! Pure functions of the request and the listener's settings; nothing here
//! touches a connection or the table.

use std::net::{IpAddr, SocketAddr};

use hyper::Request;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::config::{Balance, HashKey};
use crate::upstream::Upstream;
use crate::upstream::balance::hash_key;

pub(super) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(super) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(super) static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub(super) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(super) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(super) static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1), plus the
/// non-standard ones that clients still send.
pub(super) static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// A new request id: 128 random bits in hex.
pub(super) fn new_request_id() -> [u8; 32] {
    let mut out = [0u8; 32];
    out[..16].copy_from_slice(&hex16(fastrand::u64(..)));
    out[16..].copy_from_slice(&hex16(fastrand::u64(..)));
    out
}

/// `v` as 16 lower-case hex digits, most significant first, computed on all
/// digits at once (every request without an id makes one: a table lookup per
/// digit was about 3% of the plain path's instructions).
fn hex16(v: u64) -> [u8; 16] {
    const LOW_32: u128 = 0x0000_0000_ffff_ffff_0000_0000_ffff_ffff;
    const LOW_16: u128 = 0x0000_ffff_0000_ffff_0000_ffff_0000_ffff;
    const LOW_8: u128 = 0x00ff_00ff_00ff_00ff_00ff_00ff_00ff_00ff;
    const LOW_4: u128 = 0x0f0f_0f0f_0f0f_0f0f_0f0f_0f0f_0f0f_0f0f;
    const ONES: u128 = 0x0101_0101_0101_0101_0101_0101_0101_0101;
    // Nibble k of `v` (from the least significant) into the low half of byte k.
    let mut x = u128::from(v);
    x = (x | (x << 32)) & LOW_32;
    x = (x | (x << 16)) & LOW_16;
    x = (x | (x << 8)) & LOW_8;
    x = (x | (x << 4)) & LOW_4;
    // Per byte n (0..=15): `0` + n, plus 39 more when n >= 10 (to reach `a`);
    // no byte carries into the next (at most 15 + 6, and 0x30 + 15 + 39).
    let letters = ((x + 6 * ONES) >> 4) & ONES;
    (x + 0x30 * ONES + 39 * letters).to_be_bytes()
}

/// The RFC 7239 `Forwarded` element for a client: `for=IP;host=H;proto=P`
/// (an IPv6 address quoted and bracketed, a host quoted when it must be).
pub(super) fn forwarded_element(
    ip: std::net::IpAddr,
    host: Option<&[u8]>,
    proto: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    match ip {
        std::net::IpAddr::V4(v4) => out.extend_from_slice(format!("for={v4}").as_bytes()),
        std::net::IpAddr::V6(v6) => out.extend_from_slice(format!("for=\"[{v6}]\"").as_bytes()),
    }
    if let Some(h) = host.filter(|h| h.iter().all(|b| b.is_ascii_graphic() && *b != b'"')) {
        out.extend_from_slice(b";host=");
        let token = h
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(b));
        if !token {
            out.push(b'"');
        }
        out.extend_from_slice(h);
        if !token {
            out.push(b'"');
        }
    }
    out.extend_from_slice(b";proto=");
    out.extend_from_slice(proto);
    out
}

/// The client of one connection, as every request on it is forwarded.
#[derive(Debug, Clone)]
pub struct Client {
    pub addr: SocketAddr,
    /// The address as a header value (`X-Real-IP`, `X-Forwarded-For`), made once
    /// per connection rather than formatted for every request.
    pub(super) ip: HeaderValue,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        let ip = HeaderValue::from_maybe_shared(bytes::Bytes::from(addr.ip().to_string()))
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Client { addr, ip }
    }
}

/// `example.com:8080` → `example.com`, `[::1]:8080` → `::1`.
pub(super) fn host_without_port(raw: &str) -> Option<&str> {
    if let Some(rest) = raw.strip_prefix('[') {
        // IPv6 literal: `[::1]:8080`.
        return rest.split(']').next();
    }
    Some(raw.rsplit_once(':').map_or(raw, |(h, _)| h))
}

/// The comma-separated tokens of every `Connection` header, trimmed.
pub(super) fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
///
/// Runs twice per request (request and response), so it avoids the map's hashing
/// when none of them is present (the usual request) and allocates nothing.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Which of the eight are present, in one pass over the names (comparing
    // standard names is an integer compare): removing an absent one would
    // still hash it.
    let mut present = [false; 8];
    let mut any = false;
    for k in headers.keys() {
        if let Some(i) = hop_by_hop_index(k.as_str().as_bytes()) {
            present[i] = true;
            any = true;
        }
    }
    if !any {
        return;
    }
    let mut connection = headers.get_all(header::CONNECTION).iter();
    match (connection.next().cloned(), connection.next()) {
        (None, _) => {}
        // One `Connection` header (the usual case): its tokens are read from a
        // clone of the value (a reference count), so the map is free to change.
        (Some(only), None) => {
            if let Ok(tokens) = only.to_str() {
                for name in tokens.split(',').map(str::trim) {
                    // `keep-alive` and the like go with the eight below; the
                    // framing and `Host` stay whatever `Connection` says.
                    if is_hop_by_hop(name) || names_framing(name.as_bytes()) {
                        continue;
                    }
                    // By `&str`: looked up without building a `HeaderName`; an
                    // invalid name matches nothing.
                    headers.remove(name);
                }
            }
        }
        (Some(_), Some(_)) => {
            let named: Vec<HeaderName> = connection_tokens(headers)
                .filter(|n| !names_framing(n.as_bytes()))
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect();
            for name in &named {
                headers.remove(name);
            }
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        headers.remove(name);
    }
}

/// Whether a `Connection` token names a header that frames the message or
/// routes it: those are never removed on its say-so (a response that named
/// `Content-Length` would reach the client unframed).
pub(super) fn names_framing(token: &[u8]) -> bool {
    token.eq_ignore_ascii_case(b"content-length")
        || token.eq_ignore_ascii_case(b"transfer-encoding")
        || token.eq_ignore_ascii_case(b"host")
}

/// A `Host` value as RFC 9112 §3.2 wants it: an authority without userinfo
/// (`name`, `name:port`, `[v6]:port`), or empty. Checked byte by byte against
/// RFC 3986's characters for a host and port (the plain path asks this of
/// every request: no parse, no allocation).
pub(super) fn valid_host(value: &[u8]) -> bool {
    let mut brackets = 0;
    for &b in value {
        if !HOST_BYTES[usize::from(b)] {
            return false;
        }
        brackets += usize::from(b == b'[');
    }
    brackets <= 1
}

/// The bytes a `Host` may hold: a lookup per byte, not a search.
static HOST_BYTES: [bool; 256] = byte_set(b"-._~!$&'()*+,;=%:[]");

/// ASCII letters and digits, and `extra`, as a table indexed by byte.
pub(super) const fn byte_set(extra: &[u8]) -> [bool; 256] {
    let mut set = [false; 256];
    let mut b = 0;
    while b < 256 {
        set[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        set[extra[i] as usize] = true;
        i += 1;
    }
    set
}

/// Whether a header name, in any case, is one of [`HOP_BY_HOP`]. The plain
/// path asks this of every header it relays, so the name is lower-cased into a
/// stack buffer and matched (a switch on the length), not compared with each of
/// the eight in turn.
pub(super) fn is_hop_by_hop(name: &str) -> bool {
    // The longest of the eight is 18 bytes; a longer name is none of them.
    let mut lower = [0u8; 18];
    let Some(lower) = lower.get_mut(..name.len()) else {
        return false;
    };
    lower.copy_from_slice(name.as_bytes());
    lower.make_ascii_lowercase();
    hop_by_hop_index(lower).is_some()
}

/// The position of a (lower-case) name in [`HOP_BY_HOP`]: a match on the
/// bytes, cheaper than comparing `HeaderName`s one by one.
pub(super) fn hop_by_hop_index(name: &[u8]) -> Option<usize> {
    match name {
        b"connection" => Some(0),
        b"keep-alive" => Some(1),
        b"proxy-connection" => Some(2),
        b"proxy-authenticate" => Some(3),
        b"te" => Some(4),
        b"trailer" => Some(5),
        b"transfer-encoding" => Some(6),
        b"upgrade" => Some(7),
        _ => None,
    }
}

/// What a balancing key is read from: a hyper request, or a head on the plain
/// HTTP/1.1 path.
pub(super) trait KeySource {
    /// The request target (path and query).
    fn target(&self) -> Option<&str>;
    /// The first value of a header.
    fn header(&self, name: &str) -> Option<&[u8]>;
    /// A cookie's value, from every `Cookie` header.
    fn cookie(&self, name: &str) -> Option<&[u8]>;
}

impl<B> KeySource for Request<B> {
    fn target(&self) -> Option<&str> {
        self.uri().path_and_query().map(|pq| pq.as_str())
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers().get(name).map(HeaderValue::as_bytes)
    }
    fn cookie(&self, name: &str) -> Option<&[u8]> {
        cookie_in(
            self.headers()
                .get_all(header::COOKIE)
                .iter()
                .map(HeaderValue::as_bytes),
            name,
        )
    }
}

/// A cookie's value among `Cookie` header values.
pub(super) fn cookie_in<'a>(
    values: impl Iterator<Item = &'a [u8]>,
    name: &str,
) -> Option<&'a [u8]> {
    values
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.as_bytes())
}

pub(super) fn request_key(
    upstream: &Upstream,
    req: &impl KeySource,
    client: IpAddr,
) -> Option<u64> {
    match upstream.settings.balance {
        Balance::IpHash => Some(match client {
            // nginx's ip_hash keys IPv4 clients by their /24.
            IpAddr::V4(v4) => hash_key(&v4.octets()[..3]),
            IpAddr::V6(v6) => hash_key(&v6.octets()),
        }),
        Balance::Hash => match upstream.settings.hash_key.as_ref()? {
            HashKey::Uri => req.target().map(|t| hash_key(t.as_bytes())),
            HashKey::RemoteAddr => Some(match client {
                IpAddr::V4(v4) => hash_key(&v4.octets()),
                IpAddr::V6(v6) => hash_key(&v6.octets()),
            }),
            HashKey::Header(name) => req.header(name.as_str()).map(hash_key),
            HashKey::Cookie(name) => req.cookie(name).map(hash_key),
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_is_an_authority_without_userinfo() {
        for ok in [
            &b""[..],
            b"a",
            b"a.example:8080",
            b"[::1]:80",
            b"[::1]",
            b"xn--bcher-kva.example",
        ] {
            assert!(valid_host(ok), "{:?}", String::from_utf8_lossy(ok));
        }
        for bad in [
            &b"u@a"[..],
            b"\xff",
            b"a b",
            b"a/b",
            b"a?b",
            b"a#b",
            b"a\tb",
            b"[[::1]]",
        ] {
            assert!(!valid_host(bad), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn hex16_writes_every_digit_as_format_does() {
        let mut v = 0x0123_4567_89ab_cdefu64;
        for _ in 0..1000 {
            assert_eq!(hex16(v), format!("{v:016x}").as_bytes(), "{v:#x}");
            v = v
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
        }
        for v in [0, u64::MAX, 0xa, 0x9, 0xf0f0_f0f0_0f0f_0f0f] {
            assert_eq!(hex16(v), format!("{v:016x}").as_bytes(), "{v:#x}");
        }
    }

    #[test]
    fn hop_by_hop_index_matches_the_list() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name.as_str().as_bytes()), Some(i));
        }
        assert_eq!(hop_by_hop_index(b"content-length"), None);
    }

    #[test]
    fn is_hop_by_hop_takes_any_case_and_only_the_eight() {
        for name in &HOP_BY_HOP {
            let upper = name.as_str().to_ascii_uppercase();
            assert!(is_hop_by_hop(name.as_str()), "{name}");
            assert!(is_hop_by_hop(&upper), "{upper}");
        }
        assert!(is_hop_by_hop("Transfer-Encoding"));
        for name in [
            "",
            "t",
            "content-length",
            "Connections",
            "x-proxy-authenticate",
            "Keep-Alive2",
        ] {
            assert!(!is_hop_by_hop(name), "{name}");
        }
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers_only() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Keep-Alive, X-Hop"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["content-type"]);

        // Two Connection headers: the tokens of both count.
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("x-a"));
        h.append(header::CONNECTION, HeaderValue::from_static("x-b"));
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("x-b", HeaderValue::from_static("1"));
        h.insert("x-c", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-c"]);
    }
}

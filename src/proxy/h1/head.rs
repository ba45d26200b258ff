//! Request and response heads on the plain HTTP/1.1 path: which requests the path
//! takes, the request as the server sees it and the response as the client sees
//! it. Pure functions over byte buffers; the connection code does the I/O.
//!
//! The rewriting matches the hyper path's (`forward`): hop-by-hop headers go,
//! with those the `Connection` header names; `X-Forwarded-For` gains the client's
//! address, `X-Real-IP` and `X-Forwarded-Proto` are set; the response is HTTP/1.1
//! whatever the server spoke.

use std::mem::MaybeUninit;

use httparse::Header;

/// Room for the headers of one head, left uninitialised: filling 100 empty
/// headers (3.2 KB) for every parse would cost more than the parse.
pub type HeaderStorage<'b> = [MaybeUninit<Header<'b>>; MAX_HEADERS];

pub fn header_storage<'b>() -> HeaderStorage<'b> {
    [const { MaybeUninit::uninit() }; MAX_HEADERS]
}

/// As hyper's default, which is what the other path allows without a limit set.
pub const MAX_HEADERS: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
}

impl Method {
    pub fn as_bytes(self) -> &'static [u8] {
        match self {
            Method::Get => b"GET",
            Method::Head => b"HEAD",
            Method::Post => b"POST",
            Method::Put => b"PUT",
            Method::Patch => b"PATCH",
            Method::Delete => b"DELETE",
            Method::Options => b"OPTIONS",
        }
    }

    /// RFC 9110 §9.2.2, as the hyper path's `is_idempotent`: sending it twice
    /// is the same as once, so a failed try may go to another server.
    pub fn idempotent(self) -> bool {
        !matches!(self, Method::Post | Method::Patch)
    }
}

/// A request this path takes, borrowed from the connection's buffer.
#[derive(Debug)]
pub struct RequestHead<'h, 'b> {
    /// Bytes of the head, the final empty line included.
    pub len: usize,
    pub method: Method,
    /// The request target (origin form).
    pub target: &'b str,
    /// The `Host` header's value, port included.
    pub host: &'b str,
    /// The client asked to close the connection after this exchange.
    pub close: bool,
    /// Bytes of body after the head (its one `Content-Length`; 0 without).
    pub body_len: u64,
    pub headers: &'h [Header<'b>],
    forwarded_for: Option<&'b [u8]>,
}

impl<'b> RequestHead<'_, 'b> {
    /// The first value of a header, by name in any case.
    pub fn header(&self, name: &str) -> Option<&'b [u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// Every value of a header, by name in any case.
    pub fn header_all<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'b [u8]> + 's {
        self.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
}

pub enum Parsed<'h, 'b> {
    Request(RequestHead<'h, 'b>),
    /// The head is not complete yet.
    Partial,
    /// Not one this path takes (a chunked body, an upgrade, HTTP/1.0 or /2,
    /// anything unusual or invalid): the connection goes to hyper, which
    /// answers it.
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Passed on as it is.
    Kept,
    Host,
    ContentLength,
    Connection,
    /// Hop-by-hop, or replaced by the proxy: not passed on.
    Dropped,
    ForwardedFor,
    /// Means a body, an upgrade or a negotiation: left to hyper.
    Refused,
}

/// Names this path treats specially, all lower case.
const SPECIAL: [(&str, Kind); 14] = [
    ("host", Kind::Host),
    ("content-length", Kind::ContentLength),
    ("connection", Kind::Connection),
    ("keep-alive", Kind::Dropped),
    ("proxy-connection", Kind::Dropped),
    ("x-real-ip", Kind::Dropped),
    ("x-forwarded-proto", Kind::Dropped),
    ("x-forwarded-host", Kind::Dropped),
    ("x-forwarded-for", Kind::ForwardedFor),
    ("transfer-encoding", Kind::Refused),
    ("upgrade", Kind::Refused),
    ("expect", Kind::Refused),
    ("te", Kind::Refused),
    ("trailer", Kind::Refused),
];

fn kind(name: &str) -> Kind {
    SPECIAL
        .iter()
        .find(|(n, _)| n.len() == name.len() && n.eq_ignore_ascii_case(name))
        .map_or(Kind::Kept, |(_, k)| *k)
}

/// The comma-separated tokens of a `Connection` value, trimmed (empty ones too).
fn connection_tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii)
}

/// Characters of a request target that every URI parser takes: anything else
/// goes to hyper, which decides.
fn plain_target(target: &str) -> bool {
    target.starts_with('/') && target.bytes().all(|b| TARGET_BYTES[usize::from(b)])
}

/// The bytes [`plain_target`] takes: a lookup per byte, not a search.
static TARGET_BYTES: [bool; 256] = crate::proxy::request::byte_set(b"-._~!$&'()*+,;=:@/?%[]");

/// Parses a request head at the start of `buf`.
pub fn parse_request<'h, 'b>(
    buf: &'b [u8],
    storage: &'h mut [MaybeUninit<Header<'b>>],
) -> Parsed<'h, 'b> {
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, storage) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    let method = match req.method {
        Some("GET") => Method::Get,
        Some("HEAD") => Method::Head,
        Some("POST") => Method::Post,
        Some("PUT") => Method::Put,
        Some("PATCH") => Method::Patch,
        Some("DELETE") => Method::Delete,
        Some("OPTIONS") => Method::Options,
        _ => return Parsed::Other,
    };
    let (Some(1), Some(target)) = (req.version, req.path) else {
        return Parsed::Other;
    };
    if !plain_target(target) {
        return Parsed::Other;
    }
    let headers: &'h [Header<'b>] = req.headers;
    let mut host = None;
    let mut close = false;
    let mut forwarded_for = None;
    let mut body_len = None;
    for h in headers {
        match kind(h.name) {
            Kind::Kept | Kind::Dropped => {}
            Kind::Host => {
                // More than one, or one that is not an authority: hyper's
                // path answers 400.
                if host.is_some() || !crate::proxy::request::valid_host(h.value) {
                    return Parsed::Other;
                }
                host = std::str::from_utf8(h.value).ok();
                if host.is_none() {
                    return Parsed::Other;
                }
            }
            Kind::ContentLength => {
                // Digits only, and one: anything else is hyper's path's to
                // refuse (400).
                let Some(n) = content_length(h.value) else {
                    return Parsed::Other;
                };
                if body_len.replace(n).is_some() {
                    return Parsed::Other;
                }
            }
            Kind::Connection => {
                for token in connection_tokens(h.value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if !token.eq_ignore_ascii_case(b"keep-alive") && !token.is_empty() {
                        // It names headers to remove: hyper's path does that.
                        return Parsed::Other;
                    }
                }
            }
            Kind::ForwardedFor => {
                forwarded_for.get_or_insert(h.value);
            }
            Kind::Refused => return Parsed::Other,
        }
    }
    let Some(host) = host else {
        return Parsed::Other;
    };
    Parsed::Request(RequestHead {
        len,
        method,
        target,
        host,
        close,
        body_len: body_len.unwrap_or(0),
        headers,
        forwarded_for,
    })
}

/// Writes the request as the server gets it.
pub fn write_upstream_request(
    head: &RequestHead<'_, '_>,
    client_ip: &[u8],
    proto: &[u8],
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for h in head.headers {
        if matches!(kind(h.name), Kind::Kept | Kind::Host | Kind::ContentLength) {
            put_header(out, h.name.as_bytes(), h.value);
        }
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    if let Some(prev) = head.forwarded_for {
        out.extend_from_slice(prev);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(client_ip);
    out.extend_from_slice(b"\r\n");
    put_header(out, b"x-real-ip", client_ip);
    put_header(out, b"x-forwarded-proto", proto);
    if !head.host.is_empty() {
        put_header(out, b"x-forwarded-host", head.host.as_bytes());
    }
    // The caller adds its own lines (request id, Forwarded), then ends the head.
}

pub fn put_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Until the server closes the connection; the client's closes after it too.
    UntilClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    /// Bytes of the server's head.
    pub len: usize,
    pub status: u16,
    pub framing: Framing,
    /// The server keeps the connection open for another request.
    pub reusable: bool,
}

pub enum ParsedResponse {
    Final(ResponseHead),
    /// An interim response (100, 103): skipped, as hyper's client does; this
    /// many bytes of it.
    Interim(usize),
    Partial,
}

/// What was wrong with a server's response head.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid response from the server: {0}")]
pub struct BadResponse(pub String);

/// The client's half of the response: whether its connection closes after it.
#[derive(Debug, Clone, Copy)]
pub struct ClientSide {
    pub head_request: bool,
    pub close: bool,
    /// The `Date` the client gets when the server sent none (as hyper adds
    /// one); asked for only then.
    pub date: fn() -> [u8; 29],
}

/// Parses a response head at the start of `buf` and, for a final response,
/// writes the head the client gets into `out`.
pub fn parse_response(
    buf: &[u8],
    client: ClientSide,
    out: &mut Vec<u8>,
) -> Result<ParsedResponse, BadResponse> {
    let mut storage = header_storage();
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        buf,
        &mut storage,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(ParsedResponse::Partial),
        Err(e) => return Err(BadResponse(e.to_string())),
    };
    let status = resp.code.unwrap_or(0);
    if !(100..=999).contains(&status) {
        return Err(BadResponse(format!("status {status}")));
    }
    if status == 101 {
        return Err(BadResponse(
            "101 Switching Protocols without an upgrade".into(),
        ));
    }
    if status < 200 {
        return Ok(ParsedResponse::Interim(len));
    }
    let headers: &[Header<'_>] = resp.headers;
    let read = ServerHeaders::read(headers, resp.version != Some(1))?;
    let framing = if client.head_request || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match (read.chunked, read.length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) | (None, None) => Framing::UntilClose,
            (None, Some(n)) => Framing::Length(n),
        }
    };
    let close = client.close || framing == Framing::UntilClose;
    write_status_line(out, status, resp.reason);
    write_client_headers(out, headers, &read.named, framing);
    if !read.has_date {
        put_header(out, b"date", &(client.date)());
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(ParsedResponse::Final(ResponseHead {
        len,
        status,
        framing,
        reusable: !read.server_close && framing != Framing::UntilClose,
    }))
}

/// What a response's headers say about its framing and its connection.
struct ServerHeaders<'b> {
    /// The server closes the connection after this response.
    server_close: bool,
    /// Headers its `Connection` header names (hop-by-hop for this response).
    named: Vec<&'b [u8]>,
    /// Whether the last transfer coding is chunked, if it has any.
    chunked: Option<bool>,
    length: Option<u64>,
    has_date: bool,
}

impl<'b> ServerHeaders<'b> {
    fn read(headers: &[Header<'b>], http10: bool) -> Result<ServerHeaders<'b>, BadResponse> {
        let mut read = ServerHeaders {
            server_close: http10,
            named: Vec::new(),
            chunked: None,
            length: None,
            has_date: false,
        };
        for h in headers {
            let name = h.name;
            if name.eq_ignore_ascii_case("connection") {
                for token in connection_tokens(h.value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        read.server_close = true;
                    } else if !token.is_empty()
                        && !token.eq_ignore_ascii_case(b"keep-alive")
                        && !crate::proxy::request::names_framing(token)
                    {
                        read.named.push(token);
                    }
                }
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                let last = h.value.rsplit(|&b| b == b',').next().unwrap_or(b"");
                read.chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            } else if name.eq_ignore_ascii_case("content-length") {
                let n = content_length(h.value)
                    .ok_or_else(|| BadResponse("invalid Content-Length".into()))?;
                if read.length.is_some_and(|l| l != n) {
                    return Err(BadResponse("conflicting Content-Length headers".into()));
                }
                read.length = Some(n);
            } else if name.eq_ignore_ascii_case("date") {
                read.has_date = true;
            }
        }
        Ok(read)
    }
}

/// A `Content-Length` value: ASCII digits only (RFC 9110 §8.6), no sign, no
/// other whitespace than the field's own, no overflow.
pub fn content_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// `HTTP/1.1 NNN Reason`: the server's reason, or the standard one.
fn write_status_line(out: &mut Vec<u8>, status: u16, reason: Option<&str>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(&[
        b'0' + (status / 100) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
        b' ',
    ]);
    let reason = match reason {
        Some(r) if !r.is_empty() => r,
        _ => hyper::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or(""),
    };
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The server's headers the client gets: not the hop-by-hop ones, nor a
/// `Content-Length` the framing replaces.
fn write_client_headers(
    out: &mut Vec<u8>,
    headers: &[Header<'_>],
    named: &[&[u8]],
    framing: Framing,
) {
    // Equal `Content-Length`s (different ones were refused) go out once.
    let mut length_written = false;
    for h in headers {
        let name = h.name;
        // Hop-by-hop (RFC 9110 §7.6.1) as the hyper path counts them;
        // `transfer-encoding` is written again when the body is chunked.
        let hop = crate::proxy::request::is_hop_by_hop(name)
            || named
                .iter()
                .any(|n| n.eq_ignore_ascii_case(name.as_bytes()));
        let is_length = name.eq_ignore_ascii_case("content-length");
        let replaced_length = is_length
            && (length_written || matches!(framing, Framing::Chunked | Framing::UntilClose));
        length_written |= is_length;
        if hop || replaced_length {
            // The server's chunked coding, with any coding before it, is relayed
            // as it is.
            if framing == Framing::Chunked && name.eq_ignore_ascii_case("transfer-encoding") {
                put_header(out, b"transfer-encoding", h.value);
            }
            continue;
        }
        put_header(out, name.as_bytes(), h.value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(raw: &str) -> Option<(usize, String, bool)> {
        let mut storage = header_storage();
        match parse_request(raw.as_bytes(), &mut storage) {
            Parsed::Request(head) => {
                let mut out = Vec::new();
                write_upstream_request(&head, b"10.0.0.9", b"http", &mut out);
                out.extend_from_slice(b"\r\n");
                Some((head.len, String::from_utf8(out).unwrap(), head.close))
            }
            _ => None,
        }
    }

    #[test]
    fn a_plain_get_is_rewritten_as_the_hyper_path_does() {
        let raw = "GET /a?b=1 HTTP/1.1\r\nHost: example.com:8080\r\nConnection: keep-alive\r\n\
                   Keep-Alive: timeout=5\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-For: 1.2.3.4\r\n\
                   Accept: */*\r\n\r\nGET /next";
        let (len, out, close) = request(raw).unwrap();
        assert_eq!(len, raw.len() - "GET /next".len());
        assert!(!close);
        assert_eq!(
            out,
            "GET /a?b=1 HTTP/1.1\r\nHost: example.com:8080\r\nAccept: */*\r\n\
             x-forwarded-for: 1.2.3.4, 10.0.0.9\r\nx-real-ip: 10.0.0.9\r\n\
             x-forwarded-proto: http\r\nx-forwarded-host: example.com:8080\r\n\r\n"
        );
        let (_, _, close) =
            request("HEAD / HTTP/1.1\r\nhost: a\r\nconnection: Close\r\n\r\n").unwrap();
        assert!(close);
    }

    #[test]
    fn anything_unusual_is_left_to_hyper() {
        for raw in [
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            "CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: x-secret\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /a\"b HTTP/1.1\r\nHost: a\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
        ] {
            assert!(request(raw).is_none(), "{raw:?}");
        }
        let mut storage = header_storage();
        assert!(matches!(
            parse_request(b"GET / HTTP/1.1\r\nHost: a\r\n", &mut storage),
            Parsed::Partial
        ));
    }

    #[test]
    fn a_body_of_one_known_length_is_taken_with_its_length() {
        let raw = "POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc";
        let mut storage = header_storage();
        let Parsed::Request(head) = parse_request(raw.as_bytes(), &mut storage) else {
            panic!("not taken");
        };
        assert_eq!((head.method, head.body_len), (Method::Post, 3));
        assert_eq!(head.len, raw.len() - 3);
        assert!(!head.method.idempotent() && Method::Put.idempotent());
        let (_, out, _) = request(raw).unwrap();
        assert!(out.starts_with("POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n"));
    }

    fn response(raw: &str, head_request: bool, close: bool) -> (ResponseHead, String) {
        let mut out = Vec::new();
        let client = ClientSide {
            head_request,
            close,
            date: || *b"Thu, 26 Nov 2026 06:00:00 GMT",
        };
        match parse_response(raw.as_bytes(), client, &mut out).unwrap() {
            ParsedResponse::Final(head) => (head, String::from_utf8(out).unwrap()),
            _ => panic!("not a final response"),
        }
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let (h, out) = response(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nDate: x\r\n\r\nhello",
            false,
            false,
        );
        assert_eq!(
            (h.framing, h.reusable, h.status),
            (Framing::Length(5), true, 200)
        );
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nDate: x\r\n\r\n"
        );

        let (h, out) = response(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\nConnection: x-hop\r\nX-Hop: 1\r\n\r\n",
            false,
            false,
        );
        assert_eq!((h.framing, h.reusable), (Framing::Chunked, true));
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\
             date: Thu, 26 Nov 2026 06:00:00 GMT\r\n\r\n"
        );

        let (h, out) = response("HTTP/1.0 200 OK\r\nDate: x\r\n\r\n", false, false);
        assert_eq!((h.framing, h.reusable), (Framing::UntilClose, false));
        assert!(out.ends_with("connection: close\r\n\r\n"), "{out}");

        let (h, _) = response("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true, false);
        assert_eq!(h.framing, Framing::Empty);
        let (h, _) = response("HTTP/1.1 304 Not Modified\r\n\r\n", false, false);
        assert_eq!((h.framing, h.reusable), (Framing::Empty, true));
        let (h, out) = response(
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\nDate: x\r\n\r\n",
            false,
            true,
        );
        assert!(!h.reusable);
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nDate: x\r\nconnection: close\r\n\r\n"
        );
    }

    #[test]
    fn interim_and_invalid_responses() {
        let mut out = Vec::new();
        let client = ClientSide {
            head_request: false,
            close: false,
            date: || [b'd'; 29],
        };
        assert!(matches!(
            parse_response(
                b"HTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\nHTTP/1.1 200",
                client,
                &mut out
            ),
            Ok(ParsedResponse::Interim(37))
        ));
        assert!(matches!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-", client, &mut out),
            Ok(ParsedResponse::Partial)
        ));
        for bad in [
            "garbage\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
        ] {
            assert!(
                parse_response(bad.as_bytes(), client, &mut out).is_err(),
                "{bad}"
            );
        }
        assert!(out.is_empty());
    }
}

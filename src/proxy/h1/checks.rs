//! The plain path's framing invariants, as functions that panic when one
//! breaks: fed arbitrary bytes by the property tests below (every CI run) and
//! by the cargo-fuzz target in `fuzz/` (longer runs; SECURITY.md says how).
//!
//! - The request parser never panics; a request it takes has exactly one valid
//!   `Host` and no body or one of a single known length, and what the server
//!   gets from it parses as exactly one request with that method, target,
//!   `Host` and length.
//! - The response parser never panics; a response it relays has a head the
//!   client can frame exactly one way: one `Content-Length` of digits, or
//!   chunked, or the connection's close, or no body.
//! - The chunked scanner never panics, finds the same end however the bytes
//!   are split, and ends a body only where a strict decoder ends it.

use super::chunked::ChunkedScan;
use super::head::{self, ClientSide, Framing, Parsed, ParsedResponse};

/// Parses `bytes` as a request head and checks what comes of it.
pub fn request(bytes: &[u8]) {
    let mut storage = head::header_storage();
    let Parsed::Request(h) = head::parse_request(bytes, &mut storage) else {
        return;
    };
    assert!(h.len <= bytes.len());
    let hosts = h.header_all("host").count();
    assert_eq!(hosts, 1, "a request taken with {hosts} Host headers");
    assert!(crate::proxy::request::valid_host(h.host.as_bytes()));
    let mut out = Vec::new();
    head::write_upstream_request(&h, b"127.0.0.1", b"http", &mut out);
    out.extend_from_slice(b"\r\n");
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut again = httparse::Request::new(&mut headers);
    let parsed = again.parse(&out);
    assert!(
        matches!(parsed, Ok(httparse::Status::Complete(n)) if n == out.len()),
        "the server's copy is not one request head: {:?}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(again.method.map(str::as_bytes), Some(h.method.as_bytes()));
    assert_eq!(again.path, Some(h.target));
    assert!(
        !again
            .headers
            .iter()
            .any(|x| x.name.eq_ignore_ascii_case("transfer-encoding")),
        "a request sent chunked"
    );
    let lengths: Vec<_> = again
        .headers
        .iter()
        .filter(|x| x.name.eq_ignore_ascii_case("content-length"))
        .map(|x| head::content_length(x.value))
        .collect();
    match h.body_len {
        0 => assert!(lengths.iter().all(|l| *l == Some(0)) && lengths.len() <= 1),
        n => assert_eq!(lengths, [Some(n)], "the server's copy frames another body"),
    }
    let sent_hosts = again
        .headers
        .iter()
        .filter(|x| x.name.eq_ignore_ascii_case("host"))
        .count();
    assert_eq!(sent_hosts, 1);
}

/// Parses `bytes` as a response head and checks the head the client gets.
pub fn response(bytes: &[u8], head_request: bool) {
    let client = ClientSide {
        head_request,
        close: false,
        date: || *b"Thu, 01 Jan 1970 00:00:00 GMT",
    };
    let mut out = Vec::new();
    let Ok(ParsedResponse::Final(h)) = head::parse_response(bytes, client, &mut out) else {
        return;
    };
    assert!(h.len <= bytes.len());
    let mut headers = [httparse::EMPTY_HEADER; 256];
    let mut again = httparse::Response::new(&mut headers);
    let parsed = again.parse(&out);
    assert!(
        matches!(parsed, Ok(httparse::Status::Complete(n)) if n == out.len()),
        "the client's head is not one response head: {:?}",
        String::from_utf8_lossy(&out)
    );
    let lengths: Vec<&[u8]> = again
        .headers
        .iter()
        .filter(|x| x.name.eq_ignore_ascii_case("content-length"))
        .map(|x| x.value)
        .collect();
    let chunked = again
        .headers
        .iter()
        .any(|x| x.name.eq_ignore_ascii_case("transfer-encoding"));
    let close = again.headers.iter().any(|x| {
        x.name.eq_ignore_ascii_case("connection") && x.value.eq_ignore_ascii_case(b"close")
    });
    match h.framing {
        Framing::Length(n) => {
            assert!(!chunked, "Content-Length and chunked both sent");
            assert_eq!(
                lengths,
                [n.to_string().as_bytes()],
                "the length sent is not the one framed"
            );
        }
        Framing::Chunked => {
            assert!(chunked);
            assert!(lengths.is_empty(), "Content-Length sent beside chunked");
        }
        Framing::UntilClose => {
            assert!(
                close,
                "a body framed by the close without `connection: close`"
            );
            assert!(lengths.is_empty() && !chunked);
        }
        Framing::Empty => {}
    }
}

/// Scans `bytes` as a chunked body whole and in pieces cut at `cuts`, and
/// checks both against a strict decoder.
pub fn chunked(bytes: &[u8], cuts: &[usize]) {
    let whole = ChunkedScan::default().feed(bytes).ok().flatten();
    let mut scan = ChunkedScan::default();
    let mut at = 0;
    let mut pieces = Vec::new();
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.sort_unstable();
    points.push(bytes.len());
    let mut split = None;
    for p in points {
        if p < at {
            continue;
        }
        pieces.push(&bytes[at..p]);
        match scan.feed(&bytes[at..p]) {
            Ok(Some(n)) => {
                split = Some(at + n);
                break;
            }
            Ok(None) => {}
            Err(_) => break,
        }
        at = p;
    }
    assert_eq!(
        whole, split,
        "the end depends on how the bytes were split: {pieces:?}"
    );
    assert_eq!(
        whole,
        strict_end(bytes),
        "{:?}",
        String::from_utf8_lossy(bytes)
    );
}

/// Where a strict RFC 9112 §7.1 decoder says a chunked body ends (CRLF only,
/// hex sizes, extensions and trailers as token bytes), or `None`.
fn strict_end(b: &[u8]) -> Option<usize> {
    let mut i = 0;
    let line = |from: usize| -> Option<usize> {
        // The index after the CRLF that ends the line at `from`; no bare CR or LF.
        let mut j = from;
        while j < b.len() {
            match b[j] {
                b'\r' => return (b.get(j + 1) == Some(&b'\n')).then_some(j + 2),
                b'\n' => return None,
                _ => j += 1,
            }
        }
        None
    };
    loop {
        let next = line(i)?;
        let text = &b[i..next - 2];
        let digits = text.iter().take_while(|c| c.is_ascii_hexdigit()).count();
        if digits == 0 || digits > 16 {
            return None;
        }
        let rest = &text[digits..];
        if !rest.is_empty() && !matches!(rest[0], b';' | b' ' | b'\t') {
            return None;
        }
        let size = u64::from_str_radix(std::str::from_utf8(&text[..digits]).ok()?, 16).ok()?;
        i = next;
        if size == 0 {
            // Trailer lines, then the empty line.
            loop {
                let end = line(i)?;
                if end == i + 2 {
                    return Some(end);
                }
                i = end;
            }
        }
        let data_end = i.checked_add(usize::try_from(size).ok()?)?;
        if b.get(data_end..data_end + 2)? != b"\r\n" {
            return None;
        }
        i = data_end + 2;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    fn pick(from: &'static [&'static [u8]]) -> impl Strategy<Value = Vec<u8>> {
        proptest::sample::select(from).prop_map(<[u8]>::to_vec)
    }

    /// A message head from a grammar (start line, header lines, the end),
    /// each line ended by CRLF or a stray LF or CR, then mutated: a few
    /// random bytes put in or taken out at random places.
    fn head(
        start: impl Strategy<Value = Vec<u8>>,
        lines: &'static [&'static [u8]],
    ) -> impl Strategy<Value = Vec<u8>> {
        let end = || pick(&[b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b""]);
        let line = (pick(lines), end()).prop_map(|(l, e)| [l, e].concat());
        (start, end(), proptest::collection::vec(line, 0..6), end())
            .prop_map(|(s, e, ls, last)| [s, e, ls.concat(), last].concat())
            .prop_flat_map(mutated)
    }

    /// `bytes` with up to three edits: a random byte put in, or one taken out.
    fn mutated(bytes: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
        let edit = (any::<usize>(), any::<u8>(), any::<bool>());
        (Just(bytes), proptest::collection::vec(edit, 0..3)).prop_map(|(mut b, edits)| {
            for (at, byte, insert) in edits {
                let at = at % (b.len() + 1);
                if insert {
                    b.insert(at, byte);
                } else if at < b.len() {
                    b.remove(at);
                }
            }
            b
        })
    }

    fn request() -> impl Strategy<Value = Vec<u8>> {
        let start = (
            pick(&[b"GET", b"HEAD", b"POST", b"get"]),
            pick(&[b" /", b" /a?b", b" http://h/", b" *", b"  /", b" /\xff"]),
            pick(&[b" HTTP/1.1", b" HTTP/1.0", b" HTTP/2.0", b""]),
        )
            .prop_map(|(m, t, v)| [m, t, v].concat());
        head(
            start,
            &[
                b"Host: a",
                b"Host: a",
                b"Host: b:80",
                b"Host: \xff",
                b"Host: u@a",
                b"Host:",
                b"Host : a",
                b" Host: a",
                b"Content-Length: 0",
                b"Content-Length: 5",
                b"Transfer-Encoding: chunked",
                b"Connection: close",
                b"Connection: host",
                b"Connection: x-y",
                b"X-Forwarded-For: 1.2.3.4",
                b"Expect: 100-continue",
                b"Upgrade: h2c",
                b"x: y",
                b"x:\ty",
                b"obs\r\n fold",
            ],
        )
    }

    fn response() -> impl Strategy<Value = Vec<u8>> {
        let start = (
            pick(&[b"HTTP/1.1 ", b"HTTP/1.0 ", b"HTTP/2 "]),
            pick(&[
                b"200 OK",
                b"204 No Content",
                b"304 x",
                b"100 Continue",
                b"101 S",
                b"200",
            ]),
        )
            .prop_map(|(v, s)| [v, s].concat());
        head(
            start,
            &[
                b"Content-Length: 5",
                b"Content-Length: 5",
                b"Content-Length: +5",
                b"Content-Length: 5\xc2\xa0",
                b"Content-Length: 7",
                b"Content-Length: 99999999999999999999",
                b"Transfer-Encoding: chunked",
                b"Transfer-Encoding: gzip",
                b"Transfer-Encoding: gzip, chunked",
                b"Connection: close",
                b"Connection: content-length",
                b"Connection: transfer-encoding",
                b"Connection: keep-alive, x",
                b"Connection: host",
                b"Date: x",
                b"x: y",
            ],
        )
    }

    fn chunked_body() -> impl Strategy<Value = Vec<u8>> {
        let chunk = (proptest::collection::vec(any::<u8>(), 1..12), any::<bool>()).prop_map(
            |(data, ext)| {
                let ext: &[u8] = if ext { b";x=y" } else { b"" };
                [
                    format!("{:x}", data.len()).as_bytes(),
                    ext,
                    b"\r\n",
                    &data,
                    b"\r\n",
                ]
                .concat()
            },
        );
        let trailers = pick(&[b"", b"T: x\r\n", b"T: x\r\nU: y\r\n"]);
        (
            proptest::collection::vec(chunk, 0..4),
            trailers,
            pick(&[b"", b"next"]),
        )
            .prop_map(|(cs, t, after)| {
                [cs.concat(), b"0\r\n".to_vec(), t, b"\r\n".to_vec(), after].concat()
            })
            .prop_flat_map(mutated)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        #[test]
        fn requests_are_refused_or_framed_exactly_once(bytes in request()) {
            super::request(&bytes);
        }

        #[test]
        fn responses_are_relayed_only_as_one_message(
            bytes in response(),
            head_request in any::<bool>(),
        ) {
            super::response(&bytes, head_request);
        }

        #[test]
        fn chunked_bodies_end_where_a_strict_decoder_ends_them(
            bytes in chunked_body(),
            cuts in proptest::collection::vec(any::<usize>(), 0..6),
        ) {
            super::chunked(&bytes, &cuts);
        }
    }

    #[test]
    fn the_checks_catch_what_they_are_for() {
        // A bare LF in the trailers, and a proper end later: a lenient
        // scanner would end the body there; the strict decoder refuses it.
        super::chunked(b"5\r\nhello\r\n0\r\n\nX\r\n\r\n", &[3]);
        assert_eq!(super::strict_end(b"5\r\nhello\r\n0\r\n\r\n"), Some(15));
        assert_eq!(super::strict_end(b"5\r\nhello\r\n0\r\n\nX\r\n\r\n"), None);
        // A framing header named by Connection stays.
        super::response(
            b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\n",
            false,
        );
    }
}

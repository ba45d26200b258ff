//! `application/x-www-form-urlencoded` decoding, shared by the seed's
//! `/ups_api` (its query string and form body) and the NGINX Plus door (its
//! path segments and `fields`): one reading of `+` and `%XX` for both.
//!
//! A leaf of plain string functions: it knows nothing of the table, of HTTP
//! or of either door's answers.

/// Decodes one `application/x-www-form-urlencoded` component: `+` is a space,
/// `%XX` a byte; a `%` not followed by two hex digits stays as it is.
pub fn decode_component(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Splits a query string or form body into decoded `(key, value)` pairs, in order.
pub fn parse_pairs(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode_component(k), decode_component(v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_decode_plus_and_percent() {
        assert_eq!(decode_component("+down"), " down");
        assert_eq!(decode_component("%20up%09"), " up\t");
        assert_eq!(decode_component("127.0.0.1%3A9001"), "127.0.0.1:9001");
        assert_eq!(decode_component("100%"), "100%");
        assert_eq!(decode_component("%zz%4"), "%zz%4");
        assert_eq!(decode_component("a%2Cb"), "a,b");
    }

    #[test]
    fn pairs_keep_order_and_repeats() {
        assert_eq!(
            parse_pairs("act=+down&ups=demo&server=a&server=b&flag&"),
            vec![
                ("act".to_string(), " down".to_string()),
                ("ups".into(), "demo".into()),
                ("server".into(), "a".into()),
                ("server".into(), "b".into()),
                ("flag".into(), String::new()),
            ]
        );
        assert!(parse_pairs("").is_empty());
    }
}

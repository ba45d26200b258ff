//! Where a chunked response body ends (RFC 9112 §7.1), found by reading its
//! framing as the bytes stream past. The bytes themselves are relayed as they
//! came: the client gets the server's chunks, extensions and trailers unchanged.

/// The framing was not valid chunked coding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid chunked body from the server: {0}")]
pub struct ChunkedError(&'static str);

/// Trailer fields past this many bytes in all are refused (hyper's client has
/// the same kind of bound).
const MAX_TRAILERS: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The chunk size in hex; `digits` read so far.
    Size {
        digits: u8,
        value: u64,
    },
    /// Chunk extensions (or whitespace) up to the line's end.
    Extension {
        value: u64,
    },
    SizeLf {
        value: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// A trailer line (or the final empty line); `line` bytes read of it.
    Trailer {
        line: usize,
        total: usize,
    },
    TrailerLf {
        empty: bool,
        total: usize,
    },
    Done,
}

/// The scanner; feed it every body byte in order.
#[derive(Debug, Clone)]
pub struct ChunkedScan {
    state: State,
}

impl Default for ChunkedScan {
    fn default() -> Self {
        ChunkedScan {
            state: State::Size {
                digits: 0,
                value: 0,
            },
        }
    }
}

impl ChunkedScan {
    /// Reads `input`; `Some(n)` when the body ends after its first `n` bytes,
    /// `None` when all of it belongs to the body and more is to come.
    pub fn feed(&mut self, input: &[u8]) -> Result<Option<usize>, ChunkedError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            self.state = match self.state {
                State::Size { digits, value } => match (b as char).to_digit(16) {
                    Some(d) => {
                        if digits >= 16 {
                            return Err(ChunkedError("chunk size too large"));
                        }
                        State::Size {
                            digits: digits + 1,
                            value: value << 4 | u64::from(d),
                        }
                    }
                    None if digits == 0 => return Err(ChunkedError("chunk size missing")),
                    None => match b {
                        b';' | b' ' | b'\t' => State::Extension { value },
                        b'\r' => State::SizeLf { value },
                        _ => return Err(ChunkedError("bad character in chunk size")),
                    },
                },
                State::Extension { value } => match b {
                    b'\r' => State::SizeLf { value },
                    b'\n' => return Err(ChunkedError("bare LF in chunk extension")),
                    _ => State::Extension { value },
                },
                State::SizeLf { value } => match (b, value) {
                    (b'\n', 0) => State::Trailer { line: 0, total: 0 },
                    (b'\n', left) => State::Data { left },
                    _ => return Err(ChunkedError("chunk size line not ended by CRLF")),
                },
                State::Data { left } => {
                    let take = left.min((input.len() - i) as u64);
                    i += take as usize;
                    self.state = match left - take {
                        0 => State::DataCr,
                        left => State::Data { left },
                    };
                    continue;
                }
                State::DataCr if b == b'\r' => State::DataLf,
                State::DataLf if b == b'\n' => State::Size {
                    digits: 0,
                    value: 0,
                },
                State::DataCr | State::DataLf => {
                    return Err(ChunkedError("chunk data not followed by CRLF"));
                }
                State::Trailer { line, total } => {
                    if total >= MAX_TRAILERS {
                        return Err(ChunkedError("trailers too large"));
                    }
                    match b {
                        b'\r' => State::TrailerLf {
                            empty: line == 0,
                            total: total + 1,
                        },
                        b'\n' => return Err(ChunkedError("bare LF in trailer section")),
                        _ => State::Trailer {
                            line: line + 1,
                            total: total + 1,
                        },
                    }
                }
                State::TrailerLf { empty, total } => match (b, empty) {
                    (b'\n', true) => {
                        self.state = State::Done;
                        return Ok(Some(i + 1));
                    }
                    (b'\n', false) => State::Trailer {
                        line: 0,
                        total: total + 1,
                    },
                    _ => return Err(ChunkedError("trailer line not ended by CRLF")),
                },
                State::Done => return Ok(Some(i)),
            };
            i += 1;
        }
        Ok(if self.state == State::Done {
            Some(0)
        } else {
            None
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end_of(body: &[u8]) -> Result<Option<usize>, ChunkedError> {
        ChunkedScan::default().feed(body)
    }

    #[test]
    fn finds_the_end_after_the_last_chunk_and_leaves_what_follows() {
        let body = b"5\r\nhello\r\n0\r\n\r\nHTTP/1.1 200";
        assert_eq!(end_of(body), Ok(Some(15)));
        assert_eq!(end_of(b"a;ext=1\r\n0123456789\r\n0\r\n\r\n"), Ok(Some(26)));
        assert_eq!(end_of(b"0\r\nx-trailer: 1\r\n\r\n"), Ok(Some(19)));
    }

    #[test]
    fn byte_by_byte_gives_the_same_end() {
        let body = b"3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nt: v\r\n\r\n";
        let mut scan = ChunkedScan::default();
        let mut end = None;
        for (i, b) in body.iter().enumerate() {
            if let Some(n) = scan.feed(std::slice::from_ref(b)).unwrap() {
                assert_eq!(n, 1);
                end = Some(i + 1);
                break;
            }
        }
        assert_eq!(end, Some(body.len()));
    }

    #[test]
    fn an_unfinished_body_asks_for_more() {
        assert_eq!(end_of(b"5\r\nhel"), Ok(None));
        assert_eq!(end_of(b"5\r\nhello\r\n0\r\n"), Ok(None));
    }

    #[test]
    fn malformed_framing_is_an_error() {
        assert!(end_of(b"zz\r\n").is_err());
        assert!(end_of(b"\r\n").is_err());
        assert!(end_of(b"5\r\nhelloXX").is_err());
        assert!(end_of(b"5\nhello").is_err());
        assert!(end_of(b"11111111111111111\r\n").is_err());
    }
}

//! The plain HTTP/1.1 path's parsers on arbitrary bytes: the first byte picks
//! the parser (request head, response head, chunked body), the rest is its
//! input. Each check panics when a framing invariant breaks
//! (`src/proxy/h1/checks.rs` says which).
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::proxy::fuzzing;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => fuzzing::request(rest),
        1 => fuzzing::response(rest, which & 0x80 != 0),
        _ => {
            // Cut points for the split-independence check, from the input.
            let cuts: Vec<usize> = rest.iter().take(4).map(|&b| usize::from(b)).collect();
            fuzzing::chunked(rest, &cuts)
        }
    }
});

//! The DATA receiver (`smtp::wire::DataDecoder`): dot-unstuffing, the end of data, and the
//! SMTP smuggling rule that only `CRLF . CRLF` ends a message (RFC 5321 §4.1.1.4, §4.5.2).
//!
//! The decoder is checked against a plain reference reading of the RFC, and input split into
//! arbitrary chunks must give the same result as the input in one piece.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use smtp::wire::{DataDecoder, DataOutcome};

#[derive(Debug)]
struct Input {
    limit: usize,
    chunks: Vec<usize>,
    data: Vec<u8>,
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let limit = if u.arbitrary::<bool>()? {
            usize::from(u.arbitrary::<u8>()?)
        } else {
            usize::MAX
        };
        let n = usize::from(u.arbitrary::<u8>()? % 8);
        let mut chunks = Vec::with_capacity(n);
        for _ in 0..n {
            chunks.push(usize::from(u.arbitrary::<u8>()?));
        }
        let data = u.bytes(u.len())?.to_vec();
        Ok(Input {
            limit,
            chunks,
            data,
        })
    }
}

/// RFC 5321 §4.5.2 read literally: the stream starts after the DATA line's CRLF; a line that
/// is exactly "." ends the data; otherwise a leading "." of a line is removed. Lines end at
/// CRLF only. Returns (bytes consumed, message) or None when the end is not in `data`.
fn reference(data: &[u8]) -> Option<(usize, Vec<u8>)> {
    let mut stream = b"\r\n".to_vec();
    stream.extend_from_slice(data);
    let mut out = Vec::new();
    let mut i = 2;
    while i < stream.len() {
        let at_line_start = &stream[i - 2..i] == b"\r\n";
        if at_line_start && stream[i] == b'.' {
            if stream.get(i + 1..i + 3) == Some(b"\r\n") {
                return Some((i + 3 - 2, out));
            }
            i += 1;
            continue;
        }
        out.push(stream[i]);
        i += 1;
    }
    None
}

/// Feeds `data` in the given chunks; returns (consumed, outcome) once the end is found.
fn decode(limit: usize, data: &[u8], chunks: &[usize]) -> Option<(usize, DataOutcome)> {
    let mut decoder = DataDecoder::new(limit);
    let mut pos = 0;
    let mut sizes = chunks.iter().copied().chain(std::iter::repeat(usize::MAX));
    while pos < data.len() {
        let size = sizes.next().unwrap_or(usize::MAX).max(1);
        let end = pos.saturating_add(size).min(data.len());
        let (used, done) = decoder.feed(&data[pos..end]);
        assert!(used <= end - pos);
        if done {
            return Some((pos + used, decoder.finish()));
        }
        assert_eq!(used, end - pos, "bytes left unconsumed before the end");
        pos = end;
    }
    None
}

fuzz_target!(|input: Input| {
    let whole = decode(input.limit, &input.data, &[]);
    let split = decode(input.limit, &input.data, &input.chunks);
    assert_eq!(whole, split, "result depends on how the input is split");

    let expected = reference(&input.data);
    match (&whole, &expected) {
        (None, None) => {}
        (Some((used, outcome)), Some((ref_used, message))) => {
            assert_eq!(used, ref_used, "end of data found at a different place");
            match outcome {
                DataOutcome::Message(m) => {
                    assert!(m.len() <= input.limit);
                    assert_eq!(m, message, "unstuffed message differs");
                }
                DataOutcome::TooBig => assert!(message.len() > input.limit, "refused as too big"),
            }
        }
        _ => panic!("decoder end {whole:?} but reference {expected:?}"),
    }
});

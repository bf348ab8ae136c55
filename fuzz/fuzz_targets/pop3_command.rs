//! POP3 command lines: `pop3::wire::decode` over a buffer of pipelined commands and
//! `parse_line`; on the way out, the byte-stuffer (`DotStuffer`) and TOP's `top_slice`.
//!
//! Invariants: decode consumes whole lines only; undoing the stuffing gives back the content
//! and no line of it can end the response early.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pop3::maildrop::top_slice;
use pop3::wire::{Decoded, DotStuffer, decode, parse_line};

/// Undoes RFC 1939 §3 byte-stuffing of a complete multi-line response body.
fn unstuff(stuffed: &[u8]) -> Vec<u8> {
    let body = stuffed
        .strip_suffix(b".\r\n")
        .expect("a multi-line response ends with .CRLF");
    let mut out = Vec::new();
    for line in body.split_inclusive(|&b| b == b'\n') {
        if line == b".\r\n" || line == b".\n" {
            panic!("a line of only '.' before the end of the response");
        }
        match line.strip_prefix(b".") {
            Some(rest) => {
                assert!(rest.starts_with(b"."), "unstuffed '.' at a line start");
                out.extend_from_slice(rest);
            }
            None => out.extend_from_slice(line),
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut buf = data;
    while let Decoded::Line { consumed, command } = decode(buf) {
        assert!(consumed >= 1 && consumed <= buf.len());
        assert_eq!(buf[consumed - 1], b'\n');
        if let Ok(command) = command {
            let _ = command.name();
        }
        buf = &buf[consumed..];
    }
    let _ = parse_line(data);

    // Stuff the input as a message, in two pieces split by its first byte's value.
    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let mut stuffer = DotStuffer::new();
    let mut out = Vec::new();
    stuffer.push(&data[..split], &mut out);
    stuffer.push(&data[split..], &mut out);
    stuffer.finish(&mut out);
    let mut expected = data.to_vec();
    if !data.is_empty() && !data.ends_with(b"\n") {
        expected.extend_from_slice(b"\r\n");
    }
    assert_eq!(unstuff(&out), expected);

    for lines in [0, 1, 3, u64::MAX] {
        let top = top_slice(data, lines);
        assert!(data.starts_with(top));
    }
});

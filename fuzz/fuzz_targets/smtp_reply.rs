//! What a remote SMTP server sends us: `smtp::outbound::client::parse_reply`, applied the way
//! the client does (reply after reply from one buffer), and the EHLO capabilities of a reply.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtp::outbound::client::{Capabilities, Parsed, parse_reply};

fuzz_target!(|data: &[u8]| {
    let mut buf = data;
    // The client reads reply after reply from one buffer (pipelining); it stops at an
    // incomplete or invalid one.
    while let Parsed::Reply(reply, used) = parse_reply(buf) {
        // A reply takes at least one line ("xyz\n") and never more than the buffer.
        assert!(
            (4..=buf.len()).contains(&used),
            "used {used} of {}",
            buf.len()
        );
        assert!(reply.code <= 999);
        assert!(!reply.lines.is_empty());
        let _ = Capabilities::from_ehlo(&reply);
        let _ = reply.to_string();
        buf = &buf[used..];
    }
});

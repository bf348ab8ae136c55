//! SMTP command lines as a client sends them: `smtp::wire::parse_command` (smtp-proto plus
//! Tessera's reply mapping) and the checks the session makes on the same line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtp::wire;

fuzz_target!(|line: &[u8]| {
    let _ = wire::check_line_ending(line);
    let _ = wire::is_foreign_protocol(line);
    if let Some(path) = wire::raw_path(line) {
        // The path is a slice of the line, between `<` and `>`.
        assert!(path.len() < line.len());
        let _ = wire::PathTrick::of(path);
    }
    if let Err(reply) = wire::parse_command(line) {
        // Every refusal is a reply we can send.
        let _ = format!("{reply:?}");
    }
    let _ = wire::printable(&String::from_utf8_lossy(line));
    let _ = wire::has_bare_line_ending(line);
});

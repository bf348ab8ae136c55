//! IMAP commands as the session assembles them (line plus literals):
//! `imap::wire::parse_command`, `literal_suffix`, `SeqSet::parse`, and the INTERNALDATE
//! grammar `parse_date_time` with its round trip through `format_date_time`.
#![no_main]

use imap::SeqSet;
use imap::wire;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match wire::parse_command(data) {
        Ok(cmd) => {
            let _ = cmd.body.name();
        }
        Err(e) => {
            let _ = e.tag();
            let _ = e.to_string();
        }
    }

    let line = data.strip_suffix(b"\r\n").unwrap_or(data);
    let _ = wire::literal_suffix(line);

    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(set) = SeqSet::parse(text) {
            for largest in [0, 1, 7, u32::MAX] {
                let _ = set.contains(1, largest);
                let _ = set.contains(largest, largest);
                let _ = set.exceeds(largest);
            }
        }
        let _ = wire::parse_date_text(text);
    }

    if let Some((unix, offset)) = wire::parse_date_time(data) {
        // What we parse, we can answer in FETCH INTERNALDATE, and read back as the same time.
        let text = wire::format_date_time(unix, offset);
        assert_eq!(
            wire::parse_date_time(text.as_bytes()),
            Some((unix, offset)),
            "{:?} formats as {text:?}",
            String::from_utf8_lossy(data)
        );
    }
});

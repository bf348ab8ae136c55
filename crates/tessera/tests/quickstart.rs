//! `tessera quickstart`, driven through the real binary in a temporary directory.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_tessera");

fn tessera(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("TESSERA_CONFIG")
        .output()
        .expect("run tessera")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok(args: &[&str]) -> String {
    let out = tessera(args);
    assert!(
        out.status.success(),
        "tessera {args:?} failed: {}",
        stderr(&out)
    );
    stdout(&out)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn dry_run_prints_everything_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("etc").join("tessera.toml");
    let data = dir.path().join("data");
    let out = ok(&[
        "quickstart",
        "admin@example.org",
        "--config",
        s(&config),
        "--data-dir",
        s(&data),
        "--dry-run",
    ]);
    // The config text.
    assert!(out.contains("hostname = \"mail.example.org\""), "{out}");
    assert!(
        out.contains(&format!("data_dir = \"{}\"", data.display())),
        "{out}"
    );
    assert!(out.contains("[dns]"), "{out}");
    // The unit text.
    assert!(out.contains("tessera.service"), "{out}");
    assert!(
        out.contains(&format!("--config {} serve", config.display())),
        "{out}"
    );
    assert!(
        out.contains("AmbientCapabilities=CAP_NET_BIND_SERVICE"),
        "{out}"
    );
    assert!(out.contains("Restart=on-failure"), "{out}");
    // The records, DKIM included.
    assert!(
        out.contains("example.org. 3600 IN MX 10 mail.example.org."),
        "{out}"
    );
    assert!(out.contains("._domainkey.example.org."), "{out}");
    assert!(out.contains("k=ed25519"), "{out}");
    // Next steps, and no password (no account was made).
    assert!(out.contains("serve"), "{out}");
    assert!(out.contains("ACME"), "{out}");
    assert!(!out.contains("password: "), "{out}");
    // Nothing was created.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read tempdir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(left.is_empty(), "dry run created {left:?}");
    assert!(!config.exists() && !data.exists());
}

#[test]
fn real_run_sets_everything_up_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("etc").join("tessera.toml");
    let data = dir.path().join("var").join("data");
    let args = [
        "quickstart",
        "Admin@Example.org",
        "--config",
        s(&config),
        "--data-dir",
        s(&data),
        "--hostname",
        "mx.example.org",
    ];
    let out = ok(&args);
    assert!(config.is_file(), "{out}");
    assert!(data.is_dir(), "{out}");
    let unit_path = dir.path().join("etc").join("tessera.service");
    let unit = std::fs::read_to_string(&unit_path).expect("unit written");
    assert!(unit.contains("ExecStart="), "{unit}");
    assert!(unit.contains(&format!("--config {} serve", config.display())));
    assert!(unit.contains("User=tessera"));
    assert!(unit.contains("NoNewPrivileges=true"));

    // The password is shown once, and only once.
    let passwords: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("password: "))
        .collect();
    assert_eq!(passwords.len(), 1, "{out}");
    assert_eq!(passwords[0].len(), 20, "{out}");
    assert_eq!(out.matches(passwords[0]).count(), 1, "{out}");
    // The records for the chosen host, the next steps.
    assert!(
        out.contains("example.org. 3600 IN MX 10 mx.example.org."),
        "{out}"
    );
    assert!(out.contains("._domainkey.example.org."), "{out}");
    assert!(out.contains("systemctl enable --now tessera"), "{out}");
    assert!(out.contains("ACME"), "{out}");

    // The result, through the ordinary commands.
    let c = s(&config);
    let users = ok(&["--config", c, "user", "list"]);
    assert!(users.contains("admin@example.org"), "{users}");
    let keys = ok(&["--config", c, "dkim", "list", "example.org"]);
    assert_eq!(keys.lines().count(), 2, "{keys}");
    assert!(keys.contains("rsa-sha256") && keys.contains("ed25519-sha256"));
    let checked = ok(&["--config", c, "check-config"]);
    assert!(checked.contains("hostname:  mx.example.org"), "{checked}");
    // Quickstart turns ACME on (Let's Encrypt production).
    assert!(
        checked.contains("acme:      https://acme-v02.api.letsencrypt.org/directory"),
        "{checked}"
    );
    let written = std::fs::read_to_string(&config).expect("config written");
    assert!(
        written.contains("[acme]\n") && written.contains("\nenabled = true\n"),
        "{written}"
    );
    assert!(
        written.contains("contact = \"admin@example.org\""),
        "{written}"
    );
    assert!(
        checked.contains(&format!("data_dir:  {}", data.display())),
        "{checked}"
    );
    // `dns records` prints the same DKIM records as quickstart did.
    let records = ok(&["--config", c, "dns", "records", "example.org"]);
    for line in records.lines().filter(|l| l.contains("._domainkey.")) {
        assert!(
            out.contains(line),
            "{line} missing from quickstart's output"
        );
    }

    // A second run refuses, with one line, and leaves the config alone.
    let before = std::fs::read(&config).expect("config");
    let again = tessera(&args);
    assert!(!again.status.success());
    let err = stderr(&again);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("exists already"), "{err}");
    assert_eq!(std::fs::read(&config).expect("config"), before);
    let keys = ok(&["--config", c, "dkim", "list", "example.org"]);
    assert_eq!(keys.lines().count(), 2, "{keys}");
}

#[test]
fn malformed_address_is_one_clear_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("tessera.toml");
    for bad in [
        "not-an-address",
        "admin@",
        "@example.org",
        "a b@example.org",
    ] {
        let out = tessera(&[
            "quickstart",
            bad,
            "--config",
            s(&config),
            "--data-dir",
            s(&dir.path().join("data")),
        ]);
        assert!(!out.status.success(), "{bad} accepted");
        let err = stderr(&out);
        assert_eq!(err.trim_end().lines().count(), 1, "{bad}: {err}");
        assert!(err.starts_with("error: malformed address"), "{bad}: {err}");
        assert!(stdout(&out).is_empty(), "{bad}");
    }
    assert!(std::fs::read_dir(dir.path()).expect("dir").next().is_none());
}

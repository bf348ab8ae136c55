//! `tessera cert status`: every name served, the certificate that serves it (ACME, a PEM file
//! or the local CA) with its issuer and expiry, and each ACME certificate's last renewal.
//! Reads the store and the certificate files; needs no running server.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use store::{AcmeCertificate, Store};
use tls::{CertInfo, CertSource, CertStore, PemPair};

use crate::admin::unix_time;
use crate::config::Config;

/// `tessera cert …`.
#[derive(Debug, clap::Subcommand)]
pub enum CertCommand {
    /// Every name served: source, issuer, expiry; and each ACME certificate's last renewal
    /// result (issued, failed with the error, skipped names with the reason, next attempt).
    Status,
}

/// Runs a `cert` command.
pub async fn cert(config_path: &Path, cmd: CertCommand) -> Result<()> {
    match cmd {
        CertCommand::Status => {
            let config = Config::load(config_path)?;
            let store = crate::admin::open_store(config_path).await?;
            print!("{}", status(&config, &*store).await?);
            Ok(())
        }
    }
}

/// Where a name's certificate comes from, as shown.
struct Served {
    source: &'static str,
    issuer: String,
    not_after: Option<i64>,
}

async fn status(config: &Config, store: &dyn Store) -> Result<String> {
    let groups = crate::server::certificate_groups(&config.hostname, store).await?;
    let acme_rows = store.acme_certificates().await?;
    let files: Vec<CertInfo> = if config.certificates.is_empty() {
        Vec::new()
    } else {
        let pairs = config
            .certificates
            .iter()
            .map(|(cert, key)| PemPair {
                cert: cert.clone(),
                key: key.clone(),
            })
            .collect();
        match CertStore::new(CertSource::Files(pairs)) {
            Ok(store) => store.status(),
            Err(e) => {
                eprintln!("warning: {e}");
                Vec::new()
            }
        }
    };
    let now = store::unix_now();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<36} {:<9} {:<24} ISSUER",
        "NAME", "SOURCE", "EXPIRES"
    );
    for group in &groups {
        let local = group.first().and_then(|primary| {
            let path = config
                .data_dir
                .join("tls")
                .join("certs")
                .join(format!("{primary}.pem"));
            tls::read_cert_info(&path).ok()
        });
        for name in group {
            let served = served_by(name, &acme_rows, &files, local.as_ref(), now);
            let expires = served.not_after.map_or_else(|| "-".to_owned(), unix_time);
            let _ = writeln!(
                out,
                "{name:<36} {:<9} {expires:<24} {}",
                served.source, served.issuer
            );
        }
    }
    match &config.acme {
        None => {
            let _ = writeln!(out, "\nACME: off (turn it on with [acme] enabled = true)");
        }
        Some(acme) => {
            let _ = writeln!(
                out,
                "\nACME: {} — last renewal results:",
                acme.directory_url
            );
            if acme_rows.is_empty() {
                let _ = writeln!(out, "  (no attempt yet)");
            }
            for row in &acme_rows {
                out.push_str(&describe(row));
            }
        }
    }
    Ok(out)
}

fn served_by(
    name: &str,
    acme_rows: &[AcmeCertificate],
    files: &[CertInfo],
    local: Option<&CertInfo>,
    now: i64,
) -> Served {
    let acme = acme_rows.iter().find(|r| {
        r.chain_pem.is_some()
            && r.names.iter().any(|n| n == name)
            && r.not_after.is_some_and(|t| t > now)
    });
    if let Some(row) = acme {
        return Served {
            source: "acme",
            issuer: row.issuer.clone().unwrap_or_default(),
            not_after: row.not_after,
        };
    }
    let wildcard = name
        .split_once('.')
        .map(|(_, parent)| format!("*.{parent}"));
    let file = files.iter().find(|info| {
        info.names
            .iter()
            .any(|n| n == name || Some(n) == wildcard.as_ref())
    });
    if let Some(info) = file {
        return Served {
            source: "file",
            issuer: info.issuer.clone(),
            not_after: Some(info.not_after.unix_timestamp()),
        };
    }
    match local.filter(|info| files.is_empty() && info.names.iter().any(|n| n == name)) {
        Some(info) => Served {
            source: "local CA",
            issuer: info.issuer.clone(),
            not_after: Some(info.not_after.unix_timestamp()),
        },
        None => Served {
            source: "-",
            issuer: "(none yet: the default certificate answers)".to_owned(),
            not_after: None,
        },
    }
}

/// One ACME certificate's last renewal, as lines.
fn describe(row: &AcmeCertificate) -> String {
    let mut out = String::new();
    let when = row
        .last_attempt
        .map_or_else(|| "never".to_owned(), unix_time);
    let result = row.last_result.as_deref().unwrap_or("pending");
    let _ = write!(out, "  {}: {result} ({when})", row.id);
    if let Some(next) = row.next_attempt {
        let label = if result == "issued" {
            "renewal due"
        } else {
            "next attempt"
        };
        let _ = write!(out, "; {label} {}", unix_time(next));
    }
    out.push('\n');
    if let Some(error) = row.last_error.as_deref().filter(|_| result != "issued") {
        let _ = writeln!(out, "    error: {error}");
    }
    for (name, reason) in &row.skipped {
        let _ = writeln!(out, "    skipped {name}: {reason}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_renewal_shows_its_error_next_attempt_and_skipped_names() {
        let row = AcmeCertificate {
            id: "example.org".into(),
            last_attempt: Some(0),
            last_result: Some("failed".into()),
            last_error: Some("ACME CA https://ca.test/dir: connection refused".into()),
            next_attempt: Some(600),
            skipped: vec![("smtp.example.org".into(), "has no A or AAAA record".into())],
            failures: 1,
            ..AcmeCertificate::default()
        };
        let text = describe(&row);
        assert!(
            text.contains("example.org: failed (1970-01-01 00:00:00 UTC)"),
            "{text}"
        );
        assert!(
            text.contains("next attempt 1970-01-01 00:10:00 UTC"),
            "{text}"
        );
        assert!(
            text.contains("error: ACME CA https://ca.test/dir: connection refused"),
            "{text}"
        );
        assert!(
            text.contains("skipped smtp.example.org: has no A or AAAA record"),
            "{text}"
        );
    }
}

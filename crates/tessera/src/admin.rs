//! Management commands: domains, users, aliases. They open the store directly, so they
//! work whether or not the server is running (SQLite serialises the writers).

use std::io::{BufRead, IsTerminal};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use store::{Address, AliasSource, Domain, NewAccount, SqliteStore, Store, password};

use crate::config::Config;

/// `tessera domain ...`
#[derive(Debug, Subcommand)]
pub enum DomainCommand {
    /// Host mail for a domain.
    Add {
        /// Domain name, e.g. example.org.
        name: String,
    },
    /// List hosted domains with their number of accounts.
    List,
    /// Stop hosting a domain (it must have no accounts or aliases left).
    Remove {
        /// Domain name.
        name: String,
    },
}

/// How a new password is chosen.
#[derive(Debug, clap::Args)]
pub struct PasswordSource {
    /// Read the password from the first line of standard input.
    #[arg(long, conflicts_with = "generate_password")]
    password_stdin: bool,
    /// Generate a strong password and print it once.
    #[arg(long)]
    generate_password: bool,
}

/// `tessera user ...`
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create an account (with INBOX, Drafts, Sent, Trash, Junk and Archive).
    /// Without --password-stdin or --generate-password, asks on the terminal.
    Add {
        /// The address, which is also the login, e.g. alice@example.org.
        address: String,
        #[command(flatten)]
        password: PasswordSource,
        /// Display name.
        #[arg(long, default_value = "")]
        name: String,
        /// Quota in megabytes (0 = unlimited).
        #[arg(long, default_value_t = 0)]
        quota_mb: u64,
    },
    /// List accounts, optionally of one domain.
    List {
        /// Only this domain.
        domain: Option<String>,
    },
    /// Set a new password.
    Passwd {
        /// The account's address.
        address: String,
        #[command(flatten)]
        password: PasswordSource,
    },
    /// Delete an account and all its mail.
    Remove {
        /// The account's address.
        address: String,
    },
}

/// `tessera alias ...`
#[derive(Debug, Subcommand)]
pub enum AliasCommand {
    /// Deliver mail for SOURCE (an address, or `@domain` for a catch-all) to the account TARGET.
    /// Run again with another target to deliver to several accounts.
    Add {
        /// `info@example.org`, or `@example.org` for every address without an account.
        source: String,
        /// An account's address.
        target: String,
    },
    /// List aliases, optionally of one domain.
    List {
        /// Only this domain.
        domain: Option<String>,
    },
    /// Remove an alias, or only one of its targets.
    Remove {
        /// The alias.
        source: String,
        /// Only this target.
        target: Option<String>,
    },
}

/// `tessera queue ...`
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// List queued outbound messages with each recipient's state.
    List,
    /// Show one queued message: envelope, lease, each recipient's attempts and last error.
    Show {
        /// The queue id (from `queue list`).
        id: i64,
    },
    /// Make one queued message due now (the running server picks it up within seconds).
    Retry {
        /// The queue id.
        id: i64,
    },
    /// Remove a queued message without delivering it (no bounce is sent).
    Remove {
        /// The queue id.
        id: i64,
    },
    /// Make every queued message due now.
    Flush,
}

pub(crate) async fn open_store(config_path: &Path) -> Result<Arc<SqliteStore>> {
    let config = Config::load(config_path)?;
    SqliteStore::open(&config.data_dir)
        .await
        .with_context(|| format!("cannot open the store in {}", config.data_dir.display()))
}

/// Hosts a domain and creates its DKIM keys (`domain add`, `quickstart`); returns the
/// keys' selectors.
pub(crate) async fn add_domain(store: &dyn Store, domain: &Domain) -> Result<Vec<String>> {
    store.add_domain(domain).await?;
    crate::dns_cmd::create_dkim_keys(store, domain).await
}

/// Runs a `domain` command.
pub async fn domain(config_path: &Path, cmd: DomainCommand) -> Result<()> {
    let store = open_store(config_path).await?;
    match cmd {
        DomainCommand::Add { name } => {
            let domain = Domain::parse(&name)?;
            let selectors = add_domain(&*store, &domain).await?;
            println!("added domain {domain} (DKIM keys {})", selectors.join(", "));
            println!("DNS records to publish: tessera dns records {domain}");
        }
        DomainCommand::List => {
            for d in store.list_domains().await? {
                println!("{}\t{} account(s)", d.name, d.accounts);
            }
        }
        DomainCommand::Remove { name } => {
            let domain = Domain::parse(&name)?;
            store.remove_domain(&domain).await?;
            println!("removed domain {domain}");
        }
    }
    Ok(())
}

/// Runs a `user` command.
pub async fn user(config_path: &Path, cmd: UserCommand) -> Result<()> {
    match cmd {
        UserCommand::Add {
            address,
            password,
            name,
            quota_mb,
        } => {
            let address = Address::parse(&address)?;
            let store = open_store(config_path).await?;
            // Fail on the obvious before asking for a password.
            if !store.is_hosted_domain(address.domain()).await? {
                bail!(
                    "domain {} is not hosted here (add it with `tessera domain add {}`)",
                    address.domain(),
                    address.domain()
                );
            }
            if store.account(&address).await?.is_some() {
                bail!("user {address} exists already");
            }
            let (secret, generated) = read_password(&password)?;
            let hash = password::hash_password(&secret)?;
            store
                .add_account(NewAccount {
                    address: address.clone(),
                    password_hash: hash,
                    display_name: name,
                    quota_bytes: quota_mb.saturating_mul(1024 * 1024),
                })
                .await?;
            println!("added user {address}");
            if generated {
                println!("password: {secret}");
            }
        }
        UserCommand::List { domain } => {
            let store = open_store(config_path).await?;
            let domain = domain.as_deref().map(Domain::parse).transpose()?;
            for a in store.list_accounts(domain.as_ref()).await? {
                let quota = if a.quota_bytes == 0 {
                    "unlimited".to_string()
                } else {
                    format!("{} MB", a.quota_bytes / (1024 * 1024))
                };
                println!(
                    "{}\t{}\tused {} KB of {}",
                    a.address,
                    a.display_name,
                    a.used_bytes / 1024,
                    quota
                );
            }
        }
        UserCommand::Passwd { address, password } => {
            let address = Address::parse(&address)?;
            let store = open_store(config_path).await?;
            if store.account(&address).await?.is_none() {
                bail!("no user {address}");
            }
            let (secret, generated) = read_password(&password)?;
            store
                .set_password_hash(&address, &password::hash_password(&secret)?)
                .await?;
            println!("changed the password of {address}");
            if generated {
                println!("password: {secret}");
            }
        }
        UserCommand::Remove { address } => {
            let address = Address::parse(&address)?;
            let store = open_store(config_path).await?;
            store.remove_account(&address).await?;
            println!("removed user {address} and all its mail");
        }
    }
    Ok(())
}

/// Runs an `alias` command.
pub async fn alias(config_path: &Path, cmd: AliasCommand) -> Result<()> {
    let store = open_store(config_path).await?;
    match cmd {
        AliasCommand::Add { source, target } => {
            let source = AliasSource::parse(&source)?;
            let target = Address::parse(&target)?;
            store.add_alias(&source, &target).await?;
            println!("added alias {source} -> {target}");
        }
        AliasCommand::List { domain } => {
            let domain = domain.as_deref().map(Domain::parse).transpose()?;
            for a in store.list_aliases(domain.as_ref()).await? {
                let targets: Vec<String> = a.targets.iter().map(ToString::to_string).collect();
                println!("{}\t{}", a.source, targets.join(", "));
            }
        }
        AliasCommand::Remove { source, target } => {
            let source = AliasSource::parse(&source)?;
            let target = target.as_deref().map(Address::parse).transpose()?;
            store.remove_alias(&source, target.as_ref()).await?;
            match target {
                Some(t) => println!("removed {t} from alias {source}"),
                None => println!("removed alias {source}"),
            }
        }
    }
    Ok(())
}

/// Runs a `queue` command.
/// How old an unreferenced body file must be before garbage collection removes it: a
/// delivery writes its body file before the rows that refer to it commit.
pub(crate) const GC_MIN_BLOB_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

/// `tessera gc`: what `serve` does every hour, once, now (safe while the server runs).
pub async fn gc(config_path: &Path) -> Result<()> {
    let store = open_store(config_path).await?;
    let report = store.collect_garbage(GC_MIN_BLOB_AGE).await?;
    println!(
        "removed {} message row(s) and {} body/bodies no mailbox or queue entry refers to, \
         and {} old expunge-log entries",
        report.messages, report.blobs, report.expunge_log
    );
    Ok(())
}

pub async fn queue(config_path: &Path, cmd: QueueCommand) -> Result<()> {
    let store = open_store(config_path).await?;
    match cmd {
        QueueCommand::List => {
            let entries = store.list_queue().await?;
            if entries.is_empty() {
                println!("the queue is empty");
            }
            for e in entries {
                let sender = e
                    .sender
                    .as_ref()
                    .map_or("<>".to_string(), ToString::to_string);
                println!(
                    "{}\tfrom {sender}\t{} bytes\tqueued {}\tattempts {}",
                    e.id.0,
                    e.size,
                    unix_time(e.created_at),
                    e.attempts
                );
                for r in &e.recipients {
                    let error = r.last_error.as_deref().unwrap_or("");
                    println!(
                        "\tto {}\t{}\tnext attempt {}\t{error}",
                        r.address,
                        r.state.as_str(),
                        unix_time(r.next_attempt)
                    );
                }
            }
        }
        QueueCommand::Show { id } => {
            let Some(e) = store.queue_entry(store::QueueId(id)).await? else {
                anyhow::bail!("no queued message {id}");
            };
            let sender = e
                .sender
                .as_ref()
                .map_or("<>".to_string(), ToString::to_string);
            println!("id:          {}", e.id);
            println!("from:        {sender}");
            println!("size:        {} bytes", e.size);
            println!("queued:      {}", unix_time(e.created_at));
            println!("expires:     {}", unix_time(e.expires_at));
            println!("attempts:    {}", e.attempts);
            println!("next:        {}", unix_time(e.next_attempt));
            if let (Some(node), Some(until)) = (&e.claimed_by, e.claimed_until) {
                println!("claimed by:  {node} until {}", unix_time(until));
            }
            for r in &e.recipients {
                println!(
                    "to {}: {} after {} attempt(s), next {}",
                    r.address,
                    r.state.as_str(),
                    r.attempts,
                    unix_time(r.next_attempt)
                );
                if let Some(error) = &r.last_error {
                    println!("    last error: {error}");
                }
            }
        }
        QueueCommand::Retry { id } => {
            if store.retry_queued_now(Some(store::QueueId(id))).await? == 0 {
                anyhow::bail!("no queued message {id} with a pending recipient");
            }
            println!("queued message {id} is due now");
        }
        QueueCommand::Remove { id } => {
            if !store.remove_queued(store::QueueId(id)).await? {
                anyhow::bail!("no queued message {id}");
            }
            println!("removed queued message {id}");
        }
        QueueCommand::Flush => {
            let n = store.retry_queued_now(None).await?;
            println!("{n} queued message(s) due now");
        }
    }
    Ok(())
}

/// Formats Unix seconds as `YYYY-MM-DD HH:MM:SS UTC`.
pub(crate) fn unix_time(secs: i64) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| format!("@{secs}"))
}

/// Returns the password and whether it was generated (and must be shown once).
fn read_password(source: &PasswordSource) -> Result<(String, bool)> {
    if source.generate_password {
        return Ok((password::generate_password(), true));
    }
    if source.password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        let pw = line.trim_end_matches(['\r', '\n']).to_string();
        if pw.is_empty() {
            bail!("empty password on standard input");
        }
        return Ok((pw, false));
    }
    if !std::io::stdin().is_terminal() {
        bail!("no terminal to ask for a password: use --password-stdin or --generate-password");
    }
    let first = rpassword::prompt_password("New password: ").context("cannot read the password")?;
    let again = rpassword::prompt_password("Repeat: ").context("cannot read the password")?;
    if first != again {
        bail!("the two passwords differ");
    }
    Ok((first, false))
}

#[cfg(test)]
mod tests {
    #[test]
    fn unix_time_formats_utc() {
        assert_eq!(super::unix_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::unix_time(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(super::unix_time(1_795_916_730), "2026-11-29 01:45:30 UTC");
    }
}

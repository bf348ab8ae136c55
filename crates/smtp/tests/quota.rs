//! Quota at RCPT time: a recipient whose mailbox is full is refused with a transient 452
//! before DATA, so the sending server keeps the message and tries again later.

mod common;

use common::*;
use store::{Address, AliasSource, NewAccount, NewMessage, Store, password};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rcpt_to_a_full_mailbox_gets_452_and_other_recipients_still_work() {
    let h = Harness::start().await;
    let filler = b"Subject: filler\r\n\r\nthis fills the mailbox exactly\r\n".to_vec();
    let full = Address::parse("full@example.test").expect("address");
    let id = h
        .store
        .add_account(NewAccount {
            address: full.clone(),
            password_hash: password::hash_password(PASSWORD).expect("hash"),
            display_name: String::new(),
            quota_bytes: filler.len() as u64,
        })
        .await
        .expect("account");
    // An alias to the full account and to one with room still delivers.
    let shared = AliasSource::parse("shared@example.test").expect("alias");
    h.store.add_alias(&shared, &full).await.expect("alias");
    h.store
        .add_alias(&shared, &Address::parse(BOB).expect("bob"))
        .await
        .expect("alias");
    let mut c = Raw::ready(h.mx).await;
    assert_eq!(c.cmd("EHLO client.sender.test").await.code, 250);
    // Room left: accepted.
    assert_eq!(c.cmd("MAIL FROM:<someone@sender.test>").await.code, 250);
    assert_eq!(c.cmd("RCPT TO:<full@example.test>").await.code, 250);
    assert_eq!(c.cmd("RSET").await.code, 250);

    let results = h
        .store
        .deliver(&[id], NewMessage::now(filler))
        .await
        .expect("deliver");
    assert!(results[0].is_ok(), "{results:?}");

    assert_eq!(c.cmd("MAIL FROM:<someone@sender.test>").await.code, 250);
    let r = c.cmd("RCPT TO:<full@example.test>").await;
    assert_eq!((r.code, r.lines[0].get(..5)), (452, Some("4.2.2")), "{r:?}");
    let r = c.cmd("RCPT TO:<shared@example.test>").await;
    assert_eq!(r.code, 250, "{r:?}");
    assert_eq!(c.cmd("DATA").await.code, 354);
    c.send(b"Subject: to the alias\r\n\r\nhello\r\n.\r\n").await;
    assert_eq!(c.reply().await.code, 250);
    assert_eq!(h.inbox(BOB).await.len(), 1);
    let account = h.store.account(&full).await.expect("q").expect("account");
    assert_eq!(
        account.used_bytes, account.quota_bytes,
        "nothing more stored"
    );
}

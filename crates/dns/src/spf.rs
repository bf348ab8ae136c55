//! SPF record selection and the DNS look-up limit (RFC 7208 §4.5, §4.6.4).

use mail_auth::common::parse::TxtRecordParser;
use mail_auth::spf::{Macro, Mechanism, Spf};

use crate::resolver::{Lookup, Resolver};

/// RFC 7208 §4.6.4: at most 10 mechanisms and modifiers that query DNS.
pub const MAX_LOOKUPS: usize = 10;

/// Stop counting well past the limit (a loop of includes must not run forever).
const COUNT_CAP: usize = 30;

/// The SPF records among a name's TXT texts: those that are exactly `v=spf1` or start with
/// `v=spf1 ` (RFC 7208 §4.5, case-insensitive).
pub fn spf_records(texts: &[String]) -> Vec<&String> {
    texts
        .iter()
        .filter(|t| {
            let lower = t.to_ascii_lowercase();
            lower == "v=spf1" || lower.starts_with("v=spf1 ")
        })
        .collect()
}

/// Parses an SPF record; the error says why it does not.
pub fn parse(text: &str) -> Result<Spf, String> {
    Spf::parse(text.as_bytes()).map_err(|e| format!("{e}"))
}

/// The outcome of counting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupCount {
    /// Terms that query DNS, including those of included records (counting stops a little
    /// past the limit).
    pub lookups: usize,
    /// Problems met on the way (an include whose record is missing, a timeout, ...).
    pub problems: Vec<String>,
}

fn literal(m: &Macro) -> Option<String> {
    match m {
        Macro::Literal(b) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    }
}

/// Counts the DNS-querying terms of `spf` and, recursively, of its includes and redirect
/// (RFC 7208 §4.6.4: `include`, `a`, `mx`, `ptr`, `exists` and `redirect` count).
pub async fn count_lookups(resolver: &dyn Resolver, spf: &Spf) -> LookupCount {
    let mut count = LookupCount {
        lookups: 0,
        problems: Vec::new(),
    };
    // Iterative walk over records still to count.
    let mut pending: Vec<Spf> = vec![spf.clone()];
    while let Some(record) = pending.pop() {
        let mut targets = Vec::new();
        for d in record.directives.iter() {
            match &d.mechanism {
                Mechanism::Include { macro_string } => {
                    count.lookups += 1;
                    targets.push(literal(macro_string));
                }
                Mechanism::A { .. }
                | Mechanism::Mx { .. }
                | Mechanism::Ptr { .. }
                | Mechanism::Exists { .. } => count.lookups += 1,
                Mechanism::All | Mechanism::Ip4 { .. } | Mechanism::Ip6 { .. } => {}
            }
        }
        if let Some(redirect) = &record.redirect {
            count.lookups += 1;
            targets.push(literal(redirect));
        }
        if count.lookups > COUNT_CAP {
            break;
        }
        for target in targets {
            // A macro target depends on the sender; it counts once and is not followed.
            let Some(target) = target else { continue };
            match fetch(resolver, &target).await {
                Ok(included) => pending.push(included),
                Err(problem) => count.problems.push(problem),
            }
        }
    }
    count
}

async fn fetch(resolver: &dyn Resolver, domain: &str) -> Result<Spf, String> {
    match resolver.txt(domain).await {
        Lookup::Found(txts) => {
            let texts: Vec<String> = txts.iter().map(|t| t.text()).collect();
            match spf_records(&texts).as_slice() {
                [] => Err(format!("{domain} has no SPF record")),
                [one] => parse(one).map_err(|e| format!("the SPF record of {domain}: {e}")),
                _ => Err(format!("{domain} has more than one SPF record")),
            }
        }
        Lookup::NxDomain | Lookup::NoData => Err(format!("{domain} has no SPF record")),
        Lookup::Timeout => Err(format!("the SPF record of {domain}: timeout")),
        Lookup::ServFail(c) => Err(format!("the SPF record of {domain}: {c}")),
        Lookup::Unreachable(e) => Err(format!("the SPF record of {domain}: {e}")),
    }
}

/// Whether the record lets the domain's MX hosts send: an `mx` mechanism for the domain
/// itself with a pass qualifier.
pub fn authorizes_mx(spf: &Spf) -> bool {
    spf.directives.iter().any(|d| {
        d.qualifier == mail_auth::spf::Qualifier::Pass
            && matches!(&d.mechanism, Mechanism::Mx { macro_string, .. } if *macro_string == Macro::None)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolver::{MemoryRecord, MemoryResolver, Txt};

    #[tokio::test]
    async fn includes_and_redirects_are_counted_recursively() {
        let z = MemoryResolver::new();
        z.add(
            "a.example",
            MemoryRecord::Txt(Txt::from_text("v=spf1 a mx ptr exists:x.example -all")),
        )
        .add(
            "b.example",
            MemoryRecord::Txt(Txt::from_text(
                "v=spf1 include:a.example redirect=a.example",
            )),
        );
        let spf = parse("v=spf1 mx include:b.example ip4:192.0.2.1 -all").expect("parses");
        let c = count_lookups(&z, &spf).await;
        // mx, include:b (1+1 redirect + 4 + include:a 1+4) = 2 + 1 + 4 + 1 + 4 = 12
        assert_eq!(c.lookups, 12);
        assert!(c.problems.is_empty());
        assert!(authorizes_mx(&spf));
        assert!(!authorizes_mx(&parse("v=spf1 -mx ~all").expect("parses")));
    }

    #[tokio::test]
    async fn missing_includes_are_problems() {
        let z = MemoryResolver::new();
        let spf = parse("v=spf1 include:gone.example -all").expect("parses");
        let c = count_lookups(&z, &spf).await;
        assert_eq!(c.lookups, 1);
        assert_eq!(
            c.problems,
            vec!["gone.example has no SPF record".to_owned()]
        );
    }

    #[test]
    fn records_are_selected_by_version() {
        let texts = vec![
            "v=spf1 mx -all".to_owned(),
            "v=spf10".to_owned(),
            "google-site-verification=x".to_owned(),
            "V=SPF1".to_owned(),
        ];
        assert_eq!(spf_records(&texts).len(), 2);
    }
}

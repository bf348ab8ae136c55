//! Sequence sets (RFC 3501 §9 `sequence-set`): `1,3:5,7:*`.
//!
//! Kept as ranges, never expanded, so a 40,000-character `UID SEARCH UID ...` or `1:4294967295`
//! costs memory proportional to its text (CLIENTS.md §F.12).

/// One element: a number, `*` (the largest in use), or a range of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqNum {
    /// A number (non-zero).
    Value(u32),
    /// `*`
    Star,
}

impl SeqNum {
    fn resolve(self, largest: u32) -> u32 {
        match self {
            SeqNum::Value(v) => v,
            SeqNum::Star => largest,
        }
    }
}

/// A parsed sequence set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqSet(pub Vec<(SeqNum, SeqNum)>);

impl SeqSet {
    /// Parses `seq-number / seq-range` separated by commas; `None` if malformed or 0 is used.
    pub fn parse(s: &str) -> Option<SeqSet> {
        let mut ranges = Vec::new();
        for part in s.split(',') {
            let (a, b) = match part.split_once(':') {
                Some((a, b)) => (num(a)?, num(b)?),
                None => {
                    let n = num(part)?;
                    (n, n)
                }
            };
            ranges.push((a, b));
        }
        if ranges.is_empty() {
            return None;
        }
        Some(SeqSet(ranges))
    }

    /// Whether `n` is in the set, with `*` meaning `largest`. A range may be given in either
    /// order (RFC 3501 §9: `2:4` and `4:2` are equivalent).
    pub fn contains(&self, n: u32, largest: u32) -> bool {
        self.0.iter().any(|&(a, b)| {
            let (a, b) = (a.resolve(largest), b.resolve(largest));
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            lo <= n && n <= hi
        })
    }

    /// Whether any element refers to a sequence number above `count` (for a message
    /// sequence set, RFC 9051 §6.4.4: such a set is invalid). `*` is always fine.
    pub fn exceeds(&self, count: u32) -> bool {
        self.0.iter().any(|&(a, b)| {
            [a, b]
                .iter()
                .any(|n| matches!(n, SeqNum::Value(v) if *v > count))
        })
    }
}

fn num(s: &str) -> Option<SeqNum> {
    if s == "*" {
        return Some(SeqNum::Star);
    }
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let v: u32 = s.parse().ok()?;
    (v != 0).then_some(SeqNum::Value(v))
}

/// Formats sorted numbers compactly: `1:3,7,9:10`.
pub fn compact(nums: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < nums.len() {
        let start = nums[i];
        let mut end = start;
        while i + 1 < nums.len() && nums[i + 1] == end.wrapping_add(1) {
            i += 1;
            end = nums[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_contains_table() {
        let cases: &[(&str, u32, &[u32], &[u32])] = &[
            ("1", 5, &[1], &[2]),
            ("2:4", 5, &[2, 3, 4], &[1, 5]),
            ("4:2", 5, &[2, 3, 4], &[1, 5]),
            ("*", 5, &[5], &[4]),
            ("3:*", 5, &[3, 4, 5], &[2]),
            ("*:3", 5, &[3, 4, 5], &[2]),
            ("1,3,5:6", 9, &[1, 3, 5, 6], &[2, 4, 7]),
            ("1:4294967295", 5, &[1, 4_000_000_000], &[]),
        ];
        for (text, largest, yes, no) in cases {
            let set = SeqSet::parse(text).expect(text);
            for n in *yes {
                assert!(set.contains(*n, *largest), "{text} has {n}");
            }
            for n in *no {
                assert!(!set.contains(*n, *largest), "{text} lacks {n}");
            }
        }
        for bad in ["", "0", "1:0", "a", "1,", ",1", "1::2", "-1", "4294967296"] {
            assert!(SeqSet::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn compact_ranges() {
        assert_eq!(compact(&[1, 2, 3, 5, 7, 8]), "1:3,5,7:8");
        assert_eq!(compact(&[]), "");
    }
}

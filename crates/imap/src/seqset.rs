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

    /// The set's ranges with `*` as `largest`, each low to high, sorted, overlapping and
    /// adjacent ones merged.
    pub fn ranges(&self, largest: u32) -> Vec<(u32, u32)> {
        let mut r: Vec<(u32, u32)> = self
            .0
            .iter()
            .map(|&(a, b)| {
                let (a, b) = (a.resolve(largest), b.resolve(largest));
                (a.min(b), a.max(b))
            })
            .collect();
        r.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(r.len());
        for (lo, hi) in r {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        merged
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

/// The numbers from 1 to `largest` that `present` (ascending) lacks, as ascending ranges,
/// only those inside `within` (ranges as [`SeqSet::ranges`] gives) when it is given. At most
/// one range more than `present` has numbers (plus `within`'s), whatever `largest` is.
pub fn missing(
    present: impl IntoIterator<Item = u32>,
    largest: u32,
    within: Option<&[(u32, u32)]>,
) -> Vec<(u32, u32)> {
    let mut gaps = Vec::new();
    // The first number not yet accounted for (u64: one past u32::MAX is possible).
    let mut next = 1u64;
    for n in present {
        if n > largest {
            break;
        }
        let n = u64::from(n);
        if n > next {
            gaps.push((next, n - 1));
        }
        next = next.max(n + 1);
    }
    if next <= u64::from(largest) {
        gaps.push((next, u64::from(largest)));
    }
    // Every bound is at most `largest`, a u32.
    let gaps: Vec<(u32, u32)> = gaps
        .into_iter()
        .filter_map(|(lo, hi)| Some((u32::try_from(lo).ok()?, u32::try_from(hi).ok()?)))
        .collect();
    let Some(within) = within else {
        return gaps;
    };
    // Intersection of two sorted lists of disjoint ranges.
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < gaps.len() && j < within.len() {
        let lo = gaps[i].0.max(within[j].0);
        let hi = gaps[i].1.min(within[j].1);
        if lo <= hi {
            out.push((lo, hi));
        }
        if gaps[i].1 < within[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// Formats ascending ranges: `1:3,7,9:10`.
pub fn format_ranges(ranges: &[(u32, u32)]) -> String {
    let mut out = String::new();
    for &(lo, hi) in ranges {
        if !out.is_empty() {
            out.push(',');
        }
        if lo == hi {
            out.push_str(&lo.to_string());
        } else {
            out.push_str(&format!("{lo}:{hi}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_missing_and_their_format() {
        let set = SeqSet::parse("9:7,1,2,20:*,4:5").expect("set");
        assert_eq!(set.ranges(25), vec![(1, 2), (4, 5), (7, 9), (20, 25)]);
        assert_eq!(missing([2, 3, 7], 9, None), vec![(1, 1), (4, 6), (8, 9)]);
        assert_eq!(missing([], 3, None), vec![(1, 3)]);
        assert_eq!(missing([1, 2, 3], 3, None), Vec::<(u32, u32)>::new());
        assert_eq!(missing([5], 0, None), Vec::<(u32, u32)>::new());
        let within = set.ranges(25);
        assert_eq!(
            missing([2, 5, 8, 21], 30, Some(&within)),
            vec![(1, 1), (4, 4), (7, 7), (9, 9), (20, 20), (22, 25)]
        );
        assert_eq!(missing([u32::MAX], u32::MAX, None), vec![(1, u32::MAX - 1)]);
        assert_eq!(format_ranges(&[(1, 1), (4, 6), (8, 9)]), "1,4:6,8:9");
        // The same as listing every number and compacting it.
        let present = [3u32, 4, 10, 11, 12, 40];
        let listed: Vec<u32> = (1..=50)
            .filter(|n| !present.contains(n) && set.contains(*n, 25))
            .collect();
        assert_eq!(
            format_ranges(&missing(present, 50, Some(&within))),
            compact(&listed)
        );
    }

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

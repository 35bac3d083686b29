//! Sharding a batch across machines with no coordinator: every machine reads the same input
//! file and runs only the lines whose `custom_id` falls in its shard.
//!
//! The shard of a line is `fnv1a64(custom_id) % N`: FNV-1a, 64 bits, over the UTF-8 bytes of
//! the `custom_id` (the short form's `id`). Shards are numbered from 0 (`K/N`, `0 <= K < N`),
//! like Kubernetes' `JOB_COMPLETION_INDEX` and Slurm's `SLURM_ARRAY_TASK_ID` with
//! `--array=0-(N-1)`. The function must never change: shards of one batch may run on
//! different builds, and a changed hash would run some lines twice and others never.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// FNV-1a 64-bit offset basis.
pub const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64-bit prime.
pub const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a, 64 bits.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET_BASIS, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    })
}

/// The shard (0-based) of `custom_id` among `count` shards; `count` must be at least 1.
pub fn shard_of(custom_id: &str, count: u64) -> u64 {
    fnv1a64(custom_id.as_bytes()) % count.max(1)
}

/// One shard of a batch: `index` of `count`, 0-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    index: u64,
    count: u64,
}

impl Shard {
    /// Shard `index` of `count`: `count >= 1` and `index < count`.
    pub fn new(index: u64, count: u64) -> Result<Shard, String> {
        if count == 0 {
            return Err("N must be at least 1".into());
        }
        if index >= count {
            return Err(format!(
                "K must be below N: the shards of {count} are 0/{count} to {}/{count} (K is \
                 0-based, like JOB_COMPLETION_INDEX and SLURM_ARRAY_TASK_ID)",
                count - 1
            ));
        }
        Ok(Shard { index, count })
    }

    pub fn index(&self) -> u64 {
        self.index
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Whether the line with this `custom_id` belongs to this shard.
    pub fn contains(&self, custom_id: &str) -> bool {
        shard_of(custom_id, self.count) == self.index
    }

    /// The default batch name of this shard: `<name>-s0of3`, so shards sharing a database
    /// never share a batch (a batch cancels waiting jobs of lines not in its own file).
    pub fn batch_name(&self, input: &Path) -> String {
        format!(
            "{}-s{}of{}",
            super::batch_name(input),
            self.index,
            self.count
        )
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = String;

    /// `K/N`, e.g. `0/3`.
    fn from_str(s: &str) -> Result<Shard, String> {
        let Some((k, n)) = s.split_once('/') else {
            return Err(format!("expected K/N (e.g. 0/3), found {s:?}"));
        };
        let number = |what: &str, text: &str| {
            let text = text.trim();
            text.parse::<u64>()
                .map_err(|_| format!("{what} must be a whole number, found {text:?}"))
        };
        Shard::new(number("K", k)?, number("N", n)?)
    }
}

/// The default batch name with an optional shard ([`Shard::batch_name`]).
pub fn batch_name(input: &Path, shard: Option<Shard>) -> String {
    match shard {
        Some(s) => s.batch_name(input),
        None => super::batch_name(input),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_published_vectors() {
        // From the FNV reference test suite (isthe.com/chongo/tech/comp/fnv).
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn shards_of_fixed_ids_never_change() {
        // Pinned: a change here splits running batches differently across machines.
        let ids = ["q0000", "q0001", "q0002", "q17", "request-42", "é"];
        let of3: Vec<u64> = ids.iter().map(|id| shard_of(id, 3)).collect();
        let of7: Vec<u64> = ids.iter().map(|id| shard_of(id, 7)).collect();
        assert_eq!(of3, [0, 1, 2, 0, 1, 1]);
        assert_eq!(of7, [0, 3, 6, 2, 1, 2]);
        assert_eq!(fnv1a64("q17".as_bytes()), 0x6fca_f619_521f_4be0);
    }

    #[test]
    fn every_id_is_in_exactly_one_shard() {
        for n in 1..=5 {
            for i in 0..100 {
                let id = format!("id-{i}");
                let holding = (0..n)
                    .filter(|&k| Shard::new(k, n).is_ok_and(|s| s.contains(&id)))
                    .count();
                assert_eq!(holding, 1, "{id} of {n}");
            }
        }
    }

    #[test]
    fn parses_k_of_n_with_clear_errors() {
        let s: Shard = "2/3".parse().unwrap();
        assert_eq!((s.index(), s.count(), s.to_string()), (2, 3, "2/3".into()));
        assert_eq!(" 0 / 1 ".parse::<Shard>().unwrap().to_string(), "0/1");
        let err = |text: &str| text.parse::<Shard>().unwrap_err();
        assert!(
            err("3/3").starts_with("K must be below N: the shards of 3 are 0/3 to 2/3"),
            "{}",
            err("3/3")
        );
        assert_eq!(err("x/2"), "K must be a whole number, found \"x\"");
        assert_eq!(err("-1/2"), "K must be a whole number, found \"-1\"");
        assert_eq!(err("1/y"), "N must be a whole number, found \"y\"");
        assert_eq!(err("0/0"), "N must be at least 1");
        assert_eq!(err("2"), "expected K/N (e.g. 0/3), found \"2\"");
    }

    #[test]
    fn shard_batch_names_differ_per_shard() {
        let input = Path::new("/nowhere/questions.jsonl");
        let base = super::super::batch_name(input);
        assert_eq!(batch_name(input, None), base);
        let s = Shard::new(0, 3).unwrap();
        assert_eq!(batch_name(input, Some(s)), format!("{base}-s0of3"));
    }
}

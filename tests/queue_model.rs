//! The queue against a plain in-memory model (`reasonq::testing::queue_model`, shared with
//! the `queue_ops` fuzz target): random sequences of operations, with a controlled clock,
//! must give the same result for every call and leave the same jobs, counts and checkpoints
//! behind.

use proptest::prelude::*;
use reasonq::testing::queue_model::{self, Op, Spec, ADVANCES, DELAYS, IDS, SNOOZES};
use reasonq::testing::ScratchFile;

fn spec() -> impl Strategy<Value = Spec> {
    (
        0..2usize,
        0..3u8,
        prop::option::of(prop::sample::select(DELAYS.to_vec())),
        prop::option::of(0..3u8),
        prop::option::of(1..4u32),
    )
        .prop_map(|(queue, priority, delay, key, max_attempts)| Spec {
            queue,
            priority,
            delay,
            key,
            max_attempts,
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::collection::vec(spec(), 1..4).prop_map(Op::Enqueue),
        4 => (0..2usize, 1..4usize).prop_map(|(queue, max)| Op::Lease { queue, max }),
        3 => any::<usize>().prop_map(Op::Complete),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Op::CompleteMany(a, b)),
        3 => (any::<usize>(), any::<bool>()).prop_map(|(pick, fatal)| Op::Fail { pick, fatal }),
        1 => (any::<usize>(), prop::sample::select(SNOOZES.to_vec()))
            .prop_map(|(pick, delay)| Op::Snooze { pick, delay }),
        1 => any::<usize>().prop_map(Op::Release),
        1 => any::<usize>().prop_map(Op::Heartbeat),
        1 => any::<usize>().prop_map(Op::Checkpoint),
        1 => (0..IDS).prop_map(Op::Cancel),
        1 => (0..IDS).prop_map(Op::Retry),
        3 => prop::sample::select(ADVANCES.to_vec())
            .prop_map(Op::Advance),
        1 => Just(Op::RescueExpired),
        1 => Just(Op::RescueInterrupted),
        1 => Just(Op::Prune),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn queue_matches_the_model(ops in prop::collection::vec(op(), 1..40)) {
        let file = ScratchFile::new("queue-model");
        if let Err(e) = queue_model::run(file.path(), &ops) {
            panic!("{e}");
        }
    }
}

#[test]
fn fuzz_bytes_decode_into_every_kind_of_operation() {
    // Tag, two argument bytes; the enqueue (tag 0, one spec) reads two more.
    let mut bytes = vec![0, 0, 0, 7, 9];
    for tag in 1u8..15 {
        bytes.extend([tag, 1, 1]);
    }
    let ops = queue_model::ops_from_bytes(&bytes);
    let names: std::collections::BTreeSet<String> = ops
        .iter()
        .map(|op| {
            format!("{op:?}")
                .split([' ', '(', '{'])
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(names.len(), 15, "{names:?}");
    assert!(queue_model::ops_from_bytes(&[]).is_empty());
}

//! Every stored record type survives the codec, and no byte string makes decoding panic.

use proptest::prelude::*;
use reasonq::codec::{self, CodecError, FORMAT_V1};
use reasonq::memory::experience::{Experience, ExperienceData, Outcome};
use reasonq::memory::pattern::Pattern;
use reasonq::testing::fuzz;

fn text() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), ".{0,40}"]
}

fn experience() -> impl Strategy<Value = Experience> {
    let outcome = prop_oneof![
        Just(Outcome::Success),
        Just(Outcome::Failure),
        Just(Outcome::Unknown)
    ];
    (
        (
            any::<u64>(),
            any::<u64>(),
            text(),
            proptest::option::of(text()),
        ),
        (
            prop::collection::vec(text(), 0..4),
            text(),
            proptest::option::of(0.0f32..=1.0),
        ),
        (
            outcome,
            text(),
            text(),
            prop::collection::vec(text(), 0..4),
            text(),
        ),
        (
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
            proptest::option::of(any::<u64>()),
        ),
        prop::collection::vec(any::<u64>(), 0..4),
    )
        .prop_map(
            |(
                (id, created_at, question, context),
                (reasoning, answer, confidence),
                (outcome, domain, strategy, tags, model),
                (prompt_tokens, completion_tokens, latency_ms, job_id),
                used_experiences,
            )| Experience {
                id,
                created_at,
                data: ExperienceData {
                    question,
                    context,
                    reasoning,
                    answer,
                    confidence,
                    outcome,
                    domain,
                    strategy,
                    tags,
                    model,
                    prompt_tokens,
                    completion_tokens,
                    latency_ms,
                    job_id,
                    used_experiences,
                },
            },
        )
}

fn pattern() -> impl Strategy<Value = Pattern> {
    (
        (text(), text(), any::<u64>(), any::<u64>(), any::<u64>()),
        (
            any::<u64>(),
            proptest::option::of(0.0f64..=1.0),
            0.0f64..1e9,
        ),
        (any::<u64>(), prop::collection::vec(any::<u64>(), 0..8)),
    )
        .prop_map(
            |(
                (domain, strategy, uses, successes, failures),
                (confidence_samples, mean_confidence, mean_latency_ms),
                (last_used, recent_examples),
            )| Pattern {
                domain,
                strategy,
                uses,
                successes,
                failures,
                confidence_samples,
                mean_confidence,
                mean_latency_ms,
                last_used,
                recent_examples,
            },
        )
}

proptest! {
    #[test]
    fn experiences_round_trip(e in experience()) {
        let bytes = codec::encode(&e).unwrap();
        prop_assert_eq!(bytes[0], FORMAT_V1);
        prop_assert_eq!(codec::decode::<Experience>(&bytes).unwrap(), e);
        prop_assert_eq!(fuzz::codec(&bytes), Ok(()));
    }

    #[test]
    fn patterns_round_trip(p in pattern()) {
        let bytes = codec::encode(&p).unwrap();
        prop_assert_eq!(codec::decode::<Pattern>(&bytes).unwrap(), p);
        prop_assert_eq!(fuzz::codec(&bytes), Ok(()));
    }

    #[test]
    fn random_bytes_decode_to_an_error_or_a_stable_value(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        prop_assert_eq!(fuzz::codec(&bytes), Ok(()));
    }

    #[test]
    fn random_payloads_behind_the_version_byte_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut framed = vec![FORMAT_V1];
        framed.extend(bytes);
        prop_assert_eq!(fuzz::codec(&framed), Ok(()));
    }

    #[test]
    fn every_truncation_of_a_record_is_an_error(e in experience(), cut in 0usize..1000) {
        let bytes = codec::encode(&e).unwrap();
        let cut = cut % bytes.len();
        prop_assert!(codec::decode::<Experience>(&bytes[..cut]).is_err());
    }
}

#[test]
fn a_record_over_the_size_limit_is_refused_at_encode() {
    let huge = reasonq::chat::ChatJob {
        custom_id: "q".into(),
        line: 1,
        body: "x".repeat(codec::MAX_RECORD_BYTES + 1),
        domain: "general".into(),
        strategy: None,
        expected: None,
        memory: false,
        api: reasonq::llm::Api::ChatCompletions,
        validate: None,
    };
    assert!(matches!(codec::encode(&huge), Err(CodecError::Encode(_))));
}

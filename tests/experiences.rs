//! Experiences and patterns: recording, queries, retention and index consistency.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use reasonq::memory::experience::{self, ExperienceData, NewExperience, Order, Outcome};
use reasonq::memory::pattern::{self, RECENT_EXAMPLES};
use reasonq::store::{tables, Durability, Store, StoreConfig};
use reasonq::Error;
use redb::{ReadableTable, ReadableTableMetadata};

fn open() -> (tempfile::TempDir, Store) {
    open_with(Durability::Immediate)
}

fn open_with(durability: Durability) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        durability,
        ..StoreConfig::new(dir.path().join("db.redb"))
    };
    (dir, Store::open(config).unwrap())
}

fn at(created_at: u64, domain: &str, tags: &[&str]) -> NewExperience {
    NewExperience {
        created_at: Some(created_at),
        data: ExperienceData {
            domain: domain.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            ..ExperienceData::new(format!("q{created_at}"), "a")
        },
    }
}

fn ids(list: &[experience::Experience]) -> Vec<u64> {
    list.iter().map(|e| e.id).collect()
}

#[tokio::test]
async fn a_recorded_experience_reads_back_whole() {
    let (_dir, store) = open();
    let new = ExperienceData {
        context: Some("ctx".into()),
        reasoning: vec!["step 1".into(), "step 2".into()],
        confidence: Some(0.75),
        outcome: Outcome::Success,
        domain: "math".into(),
        strategy: "cot".into(),
        tags: vec!["algebra".into(), "easy".into(), "algebra".into()],
        model: "m".into(),
        prompt_tokens: 10,
        completion_tokens: 20,
        latency_ms: 300,
        job_id: Some(9),
        used_experiences: vec![1, 2],
        ..ExperienceData::new("2+2?", "4")
    };
    let id = store.record_experience(new.clone().into()).await.unwrap();
    let got = store.experience(id).await.unwrap().unwrap();
    assert_eq!(got.id, id);
    assert!(got.created_at > 0, "created_at defaults to now");
    assert_eq!(got.data.question, "2+2?");
    assert_eq!(got.data.reasoning, new.reasoning);
    assert_eq!(
        got.data.tags,
        vec!["algebra", "easy"],
        "duplicate tags are dropped"
    );
    assert_eq!(got.data.confidence, Some(0.75));
    assert_eq!(got.data.job_id, Some(9));
    assert_eq!(got.data.used_experiences, vec![1, 2]);
    assert_eq!(store.experience(id + 1).await.unwrap(), None);
}

#[tokio::test]
async fn invalid_experiences_are_refused_naming_the_field_and_write_nothing() {
    let (_dir, store) = open();
    let cases = [
        (
            ExperienceData {
                confidence: Some(1.5),
                ..ExperienceData::new("q", "a")
            },
            "confidence",
        ),
        (
            ExperienceData {
                confidence: Some(f32::NAN),
                ..ExperienceData::new("q", "a")
            },
            "confidence",
        ),
        (
            ExperienceData {
                domain: String::new(),
                ..ExperienceData::new("q", "a")
            },
            "domain",
        ),
        (
            ExperienceData {
                strategy: String::new(),
                ..ExperienceData::new("q", "a")
            },
            "strategy",
        ),
        (
            ExperienceData {
                tags: vec!["x".repeat(300)],
                ..ExperienceData::new("q", "a")
            },
            "tag",
        ),
    ];
    for (bad, field) in cases {
        let batch = vec![NewExperience::new("fine", "a"), bad.into()];
        match store.record_experiences(batch).await {
            Err(Error::Invalid(msg)) => assert!(msg.contains(field), "{msg} names {field}"),
            other => panic!("expected Invalid naming {field}, got {other:?}"),
        }
    }
    assert_eq!(store.experience_counts().await.unwrap().total, 0);
}

#[tokio::test]
async fn queries_by_time_domain_and_tag_respect_range_limit_and_order() {
    let (_dir, store) = open();
    let recorded = store
        .record_experiences(vec![
            at(100, "math", &["x"]),
            at(200, "code", &["x", "y"]),
            at(300, "math", &["y"]),
            at(400, "math", &[]),
        ])
        .await
        .unwrap();
    let [a, b, c, d] = recorded[..] else {
        panic!("four ids")
    };
    let by_time = |from, to, limit, order| store.experiences_by_time(from, to, limit, order);
    assert_eq!(
        ids(&by_time(0, u64::MAX, 10, Order::OldestFirst).await.unwrap()),
        [a, b, c, d]
    );
    assert_eq!(
        ids(&by_time(200, 400, 10, Order::NewestFirst).await.unwrap()),
        [c, b],
        "from is inclusive, to exclusive"
    );
    assert_eq!(
        ids(&by_time(0, u64::MAX, 2, Order::NewestFirst).await.unwrap()),
        [d, c]
    );
    assert!(by_time(400, 100, 10, Order::OldestFirst)
        .await
        .unwrap()
        .is_empty());

    let math = store
        .experiences_by_domain("math", 2, Order::NewestFirst)
        .await
        .unwrap();
    assert_eq!(ids(&math), [d, c]);
    assert!(store
        .experiences_by_domain("mat", 10, Order::NewestFirst)
        .await
        .unwrap()
        .is_empty());
    let x = store
        .experiences_by_tag("x", 10, Order::OldestFirst)
        .await
        .unwrap();
    assert_eq!(ids(&x), [a, b]);

    let counts = store.experience_counts().await.unwrap();
    assert_eq!(counts.total, 4);
    assert_eq!(
        counts.by_domain,
        BTreeMap::from([("code".to_string(), 1), ("math".to_string(), 3)])
    );
}

#[tokio::test]
async fn recording_updates_the_pattern_of_domain_and_strategy() {
    let (_dir, store) = open();
    let mut items = Vec::new();
    for i in 0..10u64 {
        let data = ExperienceData {
            outcome: if i % 3 == 0 {
                Outcome::Failure
            } else {
                Outcome::Success
            },
            confidence: (i % 2 == 0).then_some(0.5 + i as f32 / 20.0),
            latency_ms: 100 * (i + 1),
            domain: "math".into(),
            strategy: "cot".into(),
            ..ExperienceData::new("q", "a")
        };
        items.push(NewExperience {
            created_at: Some(1000 + i),
            data,
        });
    }
    let recorded = store.record_experiences(items).await.unwrap();
    store
        .record_experience(NewExperience::new("other", "a"))
        .await
        .unwrap();

    let p = store.pattern("math", "cot").await.unwrap().unwrap();
    assert_eq!((p.uses, p.successes, p.failures), (10, 6, 4));
    assert_eq!(p.confidence_samples, 5);
    // Confidences 0.5, 0.6, 0.7, 0.8, 0.9.
    assert!((p.mean_confidence.unwrap() - 0.7).abs() < 1e-6);
    assert!((p.mean_latency_ms - 550.0).abs() < 1e-9);
    assert_eq!(p.last_used, 1009);
    assert_eq!(p.recent_examples, recorded[10 - RECENT_EXAMPLES..]);
    assert_eq!(p.success_rate(), Some(0.6));

    let all = store.patterns(None).await.unwrap();
    let keys: Vec<_> = all
        .iter()
        .map(|p| (p.domain.as_str(), p.strategy.as_str()))
        .collect();
    assert_eq!(keys, [("general", "direct"), ("math", "cot")]);
    assert_eq!(store.patterns(Some("math")).await.unwrap(), vec![p]);
    assert!(store.pattern("math", "direct").await.unwrap().is_none());
}

#[tokio::test]
async fn retention_by_age_and_count_deletes_oldest_and_keeps_pattern_statistics() {
    let (_dir, store) = open();
    let items = (0..6).map(|i| at(100 * (i + 1), "d", &["t"])).collect();
    let recorded = store.record_experiences(items).await.unwrap();

    assert_eq!(store.delete_experiences_older_than(300).await.unwrap(), 2);
    assert_eq!(store.experience(recorded[0]).await.unwrap(), None);
    assert_eq!(store.delete_experiences_beyond(3).await.unwrap(), 1);
    assert_eq!(store.delete_experiences_beyond(3).await.unwrap(), 0);
    let left = store
        .experiences_by_tag("t", 10, Order::OldestFirst)
        .await
        .unwrap();
    assert_eq!(ids(&left), recorded[3..]);
    assert_eq!(store.experience_counts().await.unwrap().total, 3);

    let p = store.pattern("d", "direct").await.unwrap().unwrap();
    assert_eq!(
        p.uses, 6,
        "patterns summarise history, retention does not rewrite them"
    );
    assert_eq!(
        p.recent_examples,
        recorded[3..],
        "deleted ids leave recent_examples"
    );
}

#[test]
fn operations_compose_in_one_transaction_and_roll_back_together() {
    let (_dir, store) = open();
    let result: Result<(), Error> = store.write_blocking(|txn| {
        experience::record_in(txn, &NewExperience::new("q", "a"), 5)?;
        Err(Error::Invalid("caller changed its mind".into()))
    });
    assert!(result.is_err());
    let counts = store.read_blocking(experience::counts_read).unwrap();
    assert_eq!(counts.total, 0);
    assert!(store
        .read_blocking(|txn| pattern::list_read(txn, None))
        .unwrap()
        .is_empty());
}

// ---- index consistency under random sequences ----

#[derive(Debug, Clone)]
enum Op {
    Record(Vec<(u64, usize, Vec<usize>)>),
    DeleteOlderThan(u64),
    DeleteBeyond(u64),
    DeleteIds(Vec<u64>),
}

const DOMAINS: [&str; 3] = ["a", "b", "ab"];
const TAGS: [&str; 3] = ["t", "u", "tu"];

fn op() -> impl Strategy<Value = Op> {
    let record = (
        0..50u64,
        0..DOMAINS.len(),
        prop::collection::vec(0..TAGS.len(), 0..3),
    );
    prop_oneof![
        4 => prop::collection::vec(record, 1..5).prop_map(Op::Record),
        1 => (0..60u64).prop_map(Op::DeleteOlderThan),
        1 => (0..12u64).prop_map(Op::DeleteBeyond),
        1 => prop::collection::vec(1..40u64, 0..4).prop_map(Op::DeleteIds),
    ]
}

/// Model: live experiences (id -> (created_at, domain, tags)) and uses per domain.
type Model = BTreeMap<u64, (u64, String, BTreeSet<String>)>;

fn apply(store: &Store, model: &mut Model, uses: &mut BTreeMap<String, u64>, op: &Op) {
    match op {
        Op::Record(items) => {
            let news: Vec<_> = items
                .iter()
                .map(|(t, d, tags)| {
                    let tags: Vec<&str> = tags.iter().map(|i| TAGS[*i]).collect();
                    at(*t, DOMAINS[*d], &tags)
                })
                .collect();
            let batch = news.clone();
            let recorded = store
                .write_blocking(move |txn| experience::record_many_in(txn, &batch, 0))
                .unwrap();
            for (id, new) in recorded.into_iter().zip(news) {
                *uses.entry(new.data.domain.clone()).or_default() += 1;
                let tags = new.data.tags.into_iter().collect();
                model.insert(id, (new.created_at.unwrap(), new.data.domain, tags));
            }
        }
        Op::DeleteOlderThan(cut) => {
            let cut = *cut;
            let n = store
                .write_blocking(move |txn| experience::delete_older_than_in(txn, cut))
                .unwrap();
            let before = model.len();
            model.retain(|_, (t, _, _)| *t >= cut);
            assert_eq!(n as usize, before - model.len());
        }
        Op::DeleteBeyond(max) => {
            let max = *max;
            let n = store
                .write_blocking(move |txn| experience::delete_beyond_in(txn, max))
                .unwrap();
            let mut by_age: Vec<_> = model.iter().map(|(id, (t, _, _))| (*t, *id)).collect();
            by_age.sort();
            let excess = model.len().saturating_sub(max as usize);
            for (_, id) in &by_age[..excess] {
                model.remove(id);
            }
            assert_eq!(n as usize, excess);
        }
        Op::DeleteIds(ids) => {
            let ids = ids.clone();
            let n = store
                .write_blocking({
                    let ids = ids.clone();
                    move |txn| experience::delete_in(txn, &ids)
                })
                .unwrap();
            let gone = ids.iter().collect::<BTreeSet<_>>();
            let removed = gone.iter().filter(|id| model.remove(id).is_some()).count();
            assert_eq!(n as usize, removed);
        }
    }
}

fn keys<K: redb::Key + 'static, V: redb::Value + 'static, T>(
    table: &redb::ReadOnlyTable<K, V>,
    f: impl Fn(K::SelfType<'_>) -> T,
) -> Vec<T> {
    table
        .iter()
        .unwrap()
        .map(|r| f(r.unwrap().0.value()))
        .collect()
}

fn check_consistent(store: &Store, model: &Model, uses: &BTreeMap<String, u64>) {
    store
        .read_blocking(|txn| {
            let records = txn.open_table(tables::EXPERIENCES)?;
            assert_eq!(records.len()?, model.len() as u64);
            for (id, (t, d, tags)) in model {
                let e = experience::get_read(txn, *id)?.expect("live experience is stored");
                assert_eq!((&e.created_at, &e.data.domain), (t, d));
                assert_eq!(&e.data.tags.iter().cloned().collect::<BTreeSet<_>>(), tags);
            }
            let by_time = keys(&txn.open_table(tables::EXPERIENCES_BY_TIME)?, |k| k);
            let want: BTreeSet<_> = model.iter().map(|(id, (t, _, _))| (*t, *id)).collect();
            assert_eq!(by_time, want.into_iter().collect::<Vec<_>>());
            let by_domain = keys(
                &txn.open_table(tables::EXPERIENCES_BY_DOMAIN)?,
                |(d, id)| (d.to_string(), id),
            );
            let want: BTreeSet<_> = model
                .iter()
                .map(|(id, (_, d, _))| (d.clone(), *id))
                .collect();
            assert_eq!(by_domain, want.into_iter().collect::<Vec<_>>());
            let by_tag = keys(&txn.open_table(tables::EXPERIENCES_BY_TAG)?, |(t, id)| {
                (t.to_string(), id)
            });
            let want: BTreeSet<_> = model
                .iter()
                .flat_map(|(id, (_, _, tags))| tags.iter().map(move |t| (t.clone(), *id)))
                .collect();
            assert_eq!(by_tag, want.into_iter().collect::<Vec<_>>());

            let counts = experience::counts_read(txn)?;
            let mut want = BTreeMap::new();
            for (_, d, _) in model.values() {
                *want.entry(d.clone()).or_insert(0u64) += 1;
            }
            assert_eq!(counts.by_domain, want);
            assert_eq!(counts.total, model.len() as u64);

            for p in pattern::list_read(txn, None)? {
                assert_eq!(Some(&p.uses), uses.get(&p.domain), "pattern {}", p.domain);
                for id in &p.recent_examples {
                    assert!(model.contains_key(id), "recent example {id} was deleted");
                }
            }
            for d in DOMAINS {
                let newest = experience::list_by_domain_read(txn, d, 3, Order::NewestFirst)?;
                let want: Vec<u64> = model
                    .iter()
                    .rev()
                    .filter(|(_, (_, dd, _))| dd == d)
                    .map(|(id, _)| *id)
                    .take(3)
                    .collect();
                assert_eq!(ids(&newest), want, "newest of domain {d}");
            }
            Ok(())
        })
        .unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn indexes_counts_and_patterns_stay_consistent(ops in prop::collection::vec(op(), 1..25)) {
        // No fsync per step: this checks consistency, not durability, and must stay fast.
        let (_dir, store) = open_with(Durability::None);
        let mut model = Model::new();
        let mut uses = BTreeMap::new();
        for op in &ops {
            apply(&store, &mut model, &mut uses, op);
            check_consistent(&store, &model, &uses);
        }
    }
}

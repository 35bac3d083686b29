//! Memory on the store: retrieval ranking, the prompt budget, the bandit, rule scores and
//! retention of index entries.

use reasonq::memory::experience::{self, ExperienceData, NewExperience, Outcome};
use reasonq::memory::index::{self, IndexStats};
use reasonq::memory::prompt::{build_read, estimate_tokens};
use reasonq::memory::retrieve::{search_read, Query};
use reasonq::memory::{bandit, rules, Strategy};
use reasonq::store::{Durability, Store, StoreConfig};

const NOW: u64 = 1_800_000_000_000;
const DAY: u64 = 24 * 3600 * 1000;

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        durability: Durability::None,
        ..StoreConfig::new(dir.path().join("db.redb"))
    };
    (dir, Store::open(config).unwrap())
}

fn exp(domain: &str, q: &str, a: &str, outcome: Outcome, created_at: u64) -> NewExperience {
    NewExperience {
        created_at: Some(created_at),
        data: ExperienceData {
            domain: domain.into(),
            outcome,
            ..ExperienceData::new(q, a)
        },
    }
}

fn record(store: &Store, items: Vec<NewExperience>) -> Vec<u64> {
    store
        .write_blocking(move |txn| experience::record_many_in(txn, &items, NOW))
        .unwrap()
}

fn search(store: &Store, text: &str, domain: Option<&str>, successes_only: bool) -> Vec<u64> {
    let (text, domain) = (text.to_string(), domain.map(str::to_string));
    store
        .read_blocking(move |txn| {
            let q = Query {
                text: &text,
                domain: domain.as_deref(),
                limit: 10,
                successes_only,
                now: NOW,
            };
            search_read(txn, &q)
        })
        .unwrap()
        .iter()
        .map(|h| h.id)
        .collect()
}

fn index_stats(store: &Store) -> IndexStats {
    store.read_blocking(index::stats_read).unwrap()
}

#[test]
fn retrieval_ranks_a_known_corpus_by_bm25_with_success_and_recency_boosts() {
    let (_dir, store) = open();
    let ids = record(
        &store,
        vec![
            exp(
                "math",
                "How do I compute the area of a circle?",
                "pi r squared",
                Outcome::Success,
                NOW,
            ),
            exp(
                "math",
                "Area of a rectangle",
                "width times height",
                Outcome::Success,
                NOW,
            ),
            exp(
                "physics",
                "What is the boiling point of water?",
                "100 C",
                Outcome::Success,
                NOW,
            ),
            exp(
                "math",
                "circle circumference formula",
                "2 pi r",
                Outcome::Failure,
                NOW,
            ),
            exp(
                "math",
                "How do I compute the area of a circle?",
                "pi r squared",
                Outcome::Failure,
                NOW,
            ),
        ],
    );
    let [circle_ok, rectangle, water, circumference, circle_failed] = ids[..] else {
        panic!("five ids")
    };
    // Both terms beat one; the same text ranks lower when it failed; the shorter one-term
    // success beats the longer one-term failure; another domain is filtered out.
    assert_eq!(
        search(&store, "area of a circle", Some("math"), false),
        [circle_ok, circle_failed, rectangle, circumference]
    );
    assert_eq!(
        search(&store, "area circle", Some("math"), true),
        [circle_ok, rectangle]
    );
    assert_eq!(search(&store, "water", None, false), [water]);
    assert!(
        search(&store, "the of a", None, false).is_empty(),
        "stopwords only"
    );
    assert!(search(&store, "area", Some("chemistry"), false).is_empty());

    // Recency: the same text recorded 60 days earlier ranks below the fresh one.
    let ethanol = |at: u64| {
        exp(
            "math",
            "Boiling point of ethanol",
            "78 C",
            Outcome::Success,
            at,
        )
    };
    let old = record(&store, vec![ethanol(NOW - 60 * DAY)]);
    let new = record(&store, vec![ethanol(NOW)]);
    assert_eq!(
        search(&store, "ethanol", Some("math"), false),
        [new[0], old[0]]
    );
}

#[test]
fn memory_section_stays_within_its_token_budget_and_skips_the_same_question() {
    let (_dir, store) = open();
    let long = "step ".repeat(60);
    let items = (0..6)
        .map(|i| {
            exp(
                "math",
                &format!("Sum of the primes below {}", 10 + i),
                &format!("{long} {i}"),
                Outcome::Success,
                NOW,
            )
        })
        .chain([exp(
            "math",
            "Sum of primes below 100",
            "wrong",
            Outcome::Failure,
            NOW,
        )])
        .collect();
    record(&store, items);
    store
        .write_blocking(|txn| {
            rules::add_in(
                txn,
                "math",
                &["Check each number for primality.".into()],
                &[1],
                NOW,
            )
        })
        .unwrap();
    let build = |question: &'static str, k: usize, budget: usize| {
        store
            .read_blocking(move |txn| build_read(txn, "math", question, k, budget, NOW))
            .unwrap()
    };
    let mut previous = 0;
    for budget in [20, 100, 200, 400, 2000] {
        let s = build("Sum of the primes below 50", 5, budget);
        assert!(
            estimate_tokens(&s.text) <= budget,
            "{budget}: {}",
            estimate_tokens(&s.text)
        );
        assert!(
            s.used_experiences.len() >= previous,
            "a bigger budget never shows fewer"
        );
        previous = s.used_experiences.len();
        for id in &s.used_experiences {
            assert!(
                s.text.contains(&format!("{long} {}", id - 1)),
                "example {id} is in the text"
            );
        }
    }
    assert_eq!(previous, 5, "k caps the examples");
    let all = build("Sum of the primes below 50", 3, 2000);
    assert_eq!(all.used_experiences.len(), 3);
    assert_eq!(all.used_rules.len(), 1);
    assert!(all.text.contains("- Check each number for primality."));
    assert!(!all.text.contains("wrong"), "failures are never examples");
    // The very question asked is not its own example.
    let same = build("Sum of the primes below 10", 6, 4000);
    assert!(!same.used_experiences.contains(&1));
    assert_eq!(same.used_experiences.len(), 5);
    assert!(build("unrelated words entirely", 3, 2000)
        .used_experiences
        .is_empty());
}

#[test]
fn bandit_picks_the_better_strategy_after_evidence() {
    let (_dir, store) = open();
    let arms = [
        Strategy::DIRECT,
        Strategy::CHAIN_OF_THOUGHT,
        Strategy::STRUCTURED,
    ];
    let choose = |store: &Store| {
        store
            .read_blocking(move |txn| bandit::choose_read(txn, "math", &arms))
            .unwrap()
    };
    assert_eq!(
        choose(&store),
        Strategy::DIRECT,
        "nothing tried: first configured"
    );
    let with = |s: Strategy, outcome: Outcome| NewExperience {
        data: ExperienceData {
            domain: "math".into(),
            strategy: s.name().into(),
            outcome,
            ..ExperienceData::new("q", "a")
        },
        created_at: Some(NOW),
    };
    record(&store, vec![with(Strategy::DIRECT, Outcome::Failure)]);
    assert_eq!(
        choose(&store),
        Strategy::CHAIN_OF_THOUGHT,
        "untried arms next, in order"
    );
    // Success rates over 30 uses each: direct 1 in 4, chain of thought 9 in 10, structured 1 in 2.
    let mut evidence = Vec::new();
    for i in 0..30 {
        for (s, succeeded) in [
            (Strategy::DIRECT, i % 4 == 0),
            (Strategy::CHAIN_OF_THOUGHT, i % 10 != 0),
            (Strategy::STRUCTURED, i % 2 == 0),
        ] {
            let outcome = if succeeded {
                Outcome::Success
            } else {
                Outcome::Failure
            };
            evidence.push(with(s, outcome));
        }
    }
    record(&store, evidence);
    assert_eq!(choose(&store), Strategy::CHAIN_OF_THOUGHT);
}

#[test]
fn rule_scores_rise_and_fall_with_outcomes_and_spent_rules_leave_prompts() {
    let (_dir, store) = open();
    let added = store
        .write_blocking(|txn| {
            rules::add_in(
                txn,
                "math",
                &["Show units.".into(), "Re-check sums".into()],
                &[3, 4],
                NOW,
            )
        })
        .unwrap();
    let (a, b) = (added[0].id, added[1].id);
    assert_eq!(
        (added[0].score, added[1].score),
        (rules::INITIAL_SCORE, rules::INITIAL_SCORE)
    );
    let apply = |ids: Vec<u64>, o: Outcome| {
        store
            .write_blocking(move |txn| rules::apply_outcome_in(txn, "math", &ids, o))
            .unwrap()
    };
    apply(vec![a, b], Outcome::Success);
    apply(vec![b], Outcome::Failure);
    apply(vec![b], Outcome::Failure);
    apply(vec![b], Outcome::Failure);
    apply(vec![a, b], Outcome::Unknown);
    let list = store
        .read_blocking(|txn| rules::list_read(txn, Some("math")))
        .unwrap();
    assert_eq!(
        (list[0].score, list[0].successes, list[0].failures),
        (3, 1, 0)
    );
    assert_eq!(
        (list[1].score, list[1].successes, list[1].failures),
        (0, 1, 3)
    );
    let active = store
        .read_blocking(|txn| rules::active_read(txn, "math"))
        .unwrap();
    assert_eq!(active.iter().map(|r| r.id).collect::<Vec<_>>(), [a]);
    // Proposed again (any case, trailing dot): reinforced, evidence merged, not duplicated.
    let again = store
        .write_blocking(|txn| rules::add_in(txn, "math", &["re-check sums.".into()], &[4, 9], NOW))
        .unwrap();
    assert_eq!(
        (again[0].id, again[0].score, again[0].evidence.clone()),
        (b, 1, vec![3, 4, 9])
    );
    assert!(store
        .read_blocking(|txn| rules::list_read(txn, Some("other")))
        .unwrap()
        .is_empty());
}

#[test]
fn retention_deletes_postings_with_the_experiences() {
    let (_dir, store) = open();
    record(
        &store,
        vec![
            exp(
                "math",
                "old alpha question",
                "beta",
                Outcome::Success,
                NOW - 10 * DAY,
            ),
            exp(
                "math",
                "old alpha again",
                "gamma",
                Outcome::Success,
                NOW - 9 * DAY,
            ),
            exp("math", "new alpha question", "delta", Outcome::Success, NOW),
        ],
    );
    let before = index_stats(&store);
    assert_eq!((before.docs, before.postings), (3, 12));
    let deleted = store
        .write_blocking(|txn| experience::delete_older_than_in(txn, NOW - DAY))
        .unwrap();
    assert_eq!(deleted, 2);
    assert_eq!(search(&store, "alpha", None, false), [3]);
    assert!(search(&store, "beta gamma again", None, false).is_empty());
    let after = index_stats(&store);
    assert_eq!((after.docs, after.postings, after.terms), (1, 4, 4));
    store
        .write_blocking(|txn| experience::delete_beyond_in(txn, 0))
        .unwrap();
    let empty = index_stats(&store);
    assert_eq!(
        (empty.docs, empty.total_len, empty.terms, empty.postings),
        (0, 0, 0, 0)
    );
}

#[test]
fn early_termination_returns_exactly_the_exhaustive_top_k() {
    use rand::{Rng, SeedableRng};
    let (_dir, store) = open();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    // Skewed vocabulary: word i is drawn about 1 / (i + 1) as often as word 0.
    let words = |rng: &mut rand::rngs::StdRng, n: usize| -> String {
        (0..n)
            .map(|_| format!("w{}", (40f64.powf(rng.random::<f64>()) as usize) - 1))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let items: Vec<NewExperience> = (0..400)
        .map(|i| {
            let outcome = if i % 3 == 0 {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            let q = words(&mut rng, 10);
            let a = words(&mut rng, 3);
            exp(
                ["a", "b"][i % 2],
                &q,
                &a,
                outcome,
                NOW - (i as u64) * DAY / 7,
            )
        })
        .collect();
    record(&store, items);
    for _ in 0..40 {
        let text = words(&mut rng, 6);
        for domain in [Some("a"), None] {
            for successes_only in [false, true] {
                let run = |limit: usize| {
                    let text = text.clone();
                    store
                        .read_blocking(move |txn| {
                            let q = Query {
                                text: &text,
                                domain,
                                limit,
                                successes_only,
                                now: NOW,
                            };
                            search_read(txn, &q)
                        })
                        .unwrap()
                };
                let mut all = run(usize::MAX);
                all.truncate(5);
                let top = run(5);
                assert_eq!(top.len(), all.len());
                for (a, b) in top.iter().zip(&all) {
                    assert_eq!(a.id, b.id, "{text}");
                    assert!((a.score - b.score).abs() < 1e-9);
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_indexer_steps_aside_while_the_writer_is_busy() {
    let (_dir, store) = open();
    let items: Vec<NewExperience> = (0..30)
        .map(|i| NewExperience::new(format!("question {i}"), format!("answer {i}")))
        .collect();
    store
        .write(move |txn| {
            experience::record_with_in(txn, &items, NOW, experience::Indexing::Deferred).map(drop)
        })
        .await
        .unwrap();
    let pacer = index::Pacer::new(&store);
    // Foreground writes keep the writer busy for nearly the whole step.
    for _ in 0..4 {
        store
            .write(|_| {
                std::thread::sleep(std::time::Duration::from_millis(60));
                Ok(())
            })
            .await
            .unwrap();
    }
    assert_eq!(
        pacer.step(&store).await.unwrap(),
        0,
        "a busy writer is left alone"
    );
    assert_eq!(store.read(index::pending_read).await.unwrap(), 30);
    // `reasonq stats` says what waits.
    let summary = reasonq::app::runs::summary(&store).await.unwrap();
    assert_eq!(summary.unindexed, 30);
    assert!(
        summary
            .to_string()
            .contains("30 not in the retrieval index yet"),
        "{summary}"
    );
    // An idle writer: the step indexes what waits. (The writer counts a write's time just
    // after answering it, so the last 60 ms may land in this window: wait well past it.)
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(pacer.step(&store).await.unwrap(), 30);
    assert_eq!(store.read(index::pending_read).await.unwrap(), 0);
    assert_eq!(index_stats(&store).docs, 30);
}

#[test]
fn a_large_index_debt_is_paid_even_while_the_writer_is_busy() {
    assert!(index::steps_aside(1, 0.9));
    assert!(index::steps_aside(index::MAX_DEBT, 0.9));
    assert!(!index::steps_aside(index::MAX_DEBT + 1, 0.9));
    assert!(!index::steps_aside(1, index::BUSY_SHARE / 2.0));
}

//! What an experience is: the record, its content and its outcome, checked before it is
//! stored. The operations that store and index it are in [`super::experience`].

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Longest domain, strategy or tag, in bytes: they are index keys, kept short.
pub const MAX_LABEL_BYTES: usize = 256;

/// How an experience turned out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Outcome {
    /// The answer was judged right.
    Success,
    /// The answer was judged wrong.
    Failure,
    /// Not judged (yet).
    #[default]
    Unknown,
}

/// One recorded piece of reasoning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Experience {
    /// Unique, increasing in recording order.
    pub id: u64,
    /// When it happened, ms since the Unix epoch.
    pub created_at: u64,
    /// What was asked, reasoned and answered.
    pub data: ExperienceData,
}

impl crate::codec::Record for Experience {}

/// The content of an experience, as the caller supplies it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperienceData {
    /// The question asked.
    pub question: String,
    /// Extra context given with the question.
    pub context: Option<String>,
    /// Reasoning steps, in order.
    pub reasoning: Vec<String>,
    /// The final answer.
    pub answer: String,
    /// Self-reported confidence; must be finite and in 0..=1.
    pub confidence: Option<f32>,
    /// How it turned out.
    pub outcome: Outcome,
    /// Subject area, e.g. "math"; non-empty.
    pub domain: String,
    /// How it was reasoned, e.g. "chain_of_thought"; non-empty.
    pub strategy: String,
    /// Free labels; duplicates are dropped when recorded, empty tags refused.
    pub tags: Vec<String>,
    /// Model that answered.
    pub model: String,
    /// Prompt tokens billed.
    pub prompt_tokens: u32,
    /// Completion tokens billed.
    pub completion_tokens: u32,
    /// Time to answer, ms.
    pub latency_ms: u64,
    /// Queue job that produced it, if any.
    pub job_id: Option<u64>,
    /// Experiences that were put in its prompt as memory.
    pub used_experiences: Vec<u64>,
}

impl ExperienceData {
    /// A question and its answer in domain "general", strategy "direct", everything else empty.
    pub fn new(question: impl Into<String>, answer: impl Into<String>) -> Self {
        ExperienceData {
            question: question.into(),
            context: None,
            reasoning: Vec::new(),
            answer: answer.into(),
            confidence: None,
            outcome: Outcome::Unknown,
            domain: "general".into(),
            strategy: "direct".into(),
            tags: Vec::new(),
            model: String::new(),
            prompt_tokens: 0,
            completion_tokens: 0,
            latency_ms: 0,
            job_id: None,
            used_experiences: Vec::new(),
        }
    }

    /// Refuses values that would corrupt statistics or indexes, naming the field.
    pub fn validate(&self) -> Result<()> {
        if let Some(c) = self.confidence {
            if !c.is_finite() || !(0.0..=1.0).contains(&c) {
                return Err(Error::Invalid(format!(
                    "experience confidence must be a number in 0..=1, got {c}"
                )));
            }
        }
        check_label("domain", &self.domain)?;
        check_label("strategy", &self.strategy)?;
        self.tags.iter().try_for_each(|t| check_label("tag", t))
    }
}

/// An experience to record: the id is assigned, and `created_at` defaults to now.
#[derive(Debug, Clone, PartialEq)]
pub struct NewExperience {
    /// Overrides the recording time (imports, tests); `None` means now.
    pub created_at: Option<u64>,
    /// The content.
    pub data: ExperienceData,
}

impl NewExperience {
    /// [`ExperienceData::new`], recorded now.
    pub fn new(question: impl Into<String>, answer: impl Into<String>) -> Self {
        ExperienceData::new(question, answer).into()
    }

    pub(super) fn to_experience(&self, id: u64, now: u64) -> Experience {
        let mut data = self.data.clone();
        let mut seen = BTreeSet::new();
        data.tags.retain(|t| seen.insert(t.clone()));
        Experience {
            id,
            created_at: self.created_at.unwrap_or(now),
            data,
        }
    }
}

impl From<ExperienceData> for NewExperience {
    fn from(data: ExperienceData) -> Self {
        NewExperience {
            created_at: None,
            data,
        }
    }
}

fn check_label(field: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::Invalid(format!(
            "experience {field} must not be empty"
        )));
    }
    if value.len() > MAX_LABEL_BYTES {
        return Err(Error::Invalid(format!(
            "experience {field} is {} bytes long, at most {MAX_LABEL_BYTES} allowed",
            value.len()
        )));
    }
    Ok(())
}

/// Which end of an ordered list comes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// Oldest (smallest time or id) first.
    OldestFirst,
    /// Newest first (default: what prompts want).
    #[default]
    NewestFirst,
}

/// How many experiences are stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExperienceCounts {
    /// All of them.
    pub total: u64,
    /// Per domain (domains with none are absent).
    pub by_domain: BTreeMap<String, u64>,
}

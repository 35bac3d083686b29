//! The submit use case: one question through the same durable path as a batch line.

use serde_json::json;

use super::{App, Connected};
use crate::chat::{self, ChatJob, ResponseRecord};
use crate::clock::now_ms;
use crate::codec;
use crate::error::{Error, Result};
use crate::queue::{JobState, NewJob};
use crate::runner::{DrainEnd, FailureRecord};
use crate::shutdown::{Listener, Phase};

/// The queue `reasonq submit` uses.
pub const SUBMIT_QUEUE: &str = "submit";

/// One question.
#[derive(Debug, Clone)]
pub struct Question {
    pub text: String,
    pub system: Option<String>,
    /// Domain for experiences and patterns.
    pub domain: String,
    /// 0 makes the answer cacheable under the default policy.
    pub temperature: f64,
}

/// How a submitted question ended.
#[derive(Debug, Clone)]
pub enum Submitted {
    /// The whole response (the body as JSON).
    Answered(serde_json::Value),
    /// A shutdown stopped it; the question stays queued as this job.
    Stopped { job_id: u64, phase: Phase },
}

/// Enqueues `question` and drains the submit queue until it is answered. A failed question
/// is an error with the provider's message.
pub async fn submit(
    app: &App,
    connected: &Connected,
    question: &Question,
    shutdown: Listener,
) -> Result<Submitted> {
    let mut messages = Vec::new();
    if let Some(system) = &question.system {
        messages.push(json!({"role": "system", "content": system}));
    }
    messages.push(json!({"role": "user", "content": question.text}));
    let body = json!({
        "model": app.config.model,
        "messages": messages,
        "temperature": question.temperature,
    });
    let job = ChatJob {
        custom_id: format!("submit-{}", now_ms()),
        line: 0,
        body: body.to_string(),
        domain: question.domain.clone(),
        strategy: None,
        expected: None,
        memory: false,
        api: crate::llm::Api::ChatCompletions,
        validate: None,
    };
    let mut new = NewJob::new(SUBMIT_QUEUE, chat::KIND, codec::encode(&job)?);
    new.dedup_key = Some(job.dedup_key(connected.endpoint()));
    let enqueued = app.queue.enqueue(new).await?;
    let end = connected.runner.drain(SUBMIT_QUEUE, shutdown).await?;
    let job = app
        .queue
        .get(enqueued.id)
        .await?
        .ok_or_else(|| Error::NotFound {
            what: format!("submitted job {}", enqueued.id),
        })?;
    match end {
        DrainEnd::Stopped(phase) => {
            return Ok(Submitted::Stopped {
                job_id: job.id,
                phase,
            })
        }
        DrainEnd::Halted(trip) => return Err(Error::Halted(trip.message)),
        DrainEnd::Finished => {}
    }
    match (job.state, ResponseRecord::of_job(&job), &job.last_error) {
        (JobState::Completed, Some(response), _) => {
            let response = response?;
            let body = serde_json::from_str(&response.body)
                .map_err(|e| Error::InvalidState(format!("the stored answer is not JSON: {e}")))?;
            Ok(Submitted::Answered(body))
        }
        (_, _, Some(error)) => Err(Error::InvalidState(
            FailureRecord::from_last_error(error).message,
        )),
        (state, _, _) => Err(Error::InvalidState(format!("the job ended {state}"))),
    }
}

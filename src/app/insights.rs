//! The insights use case: show the model a domain's recent successes and failures, store
//! the rules it writes (the request and the reading of the reply are in
//! [`crate::memory::insights`]).

use super::App;
use crate::error::{Error, Result};
use crate::memory::insights::{evidence_read, parse_rules, request};
use crate::memory::rules::{self, Rule};
use crate::runner::{CallError, Gateway};

/// Runs the insights step for `domain` over up to `memory.insight_examples` successes and
/// as many failures; returns the rules stored (new or reinforced). Fails when the domain has
/// no judged experience; a reply without rules stores nothing.
pub async fn insights(app: &App, gateway: &Gateway, domain: &str) -> Result<Vec<Rule>> {
    let store = app.store.clone();
    let n = app.config.memory.insight_examples;
    let d = domain.to_string();
    let (successes, failures) = store.read(move |txn| evidence_read(txn, &d, n)).await?;
    if successes.is_empty() && failures.is_empty() {
        return Err(Error::Invalid(format!(
            "domain {domain:?} has no experience with a known outcome to learn from"
        )));
    }
    let body = request(domain, &successes, &failures);
    let (outcome, _) = gateway.call(&body).await.map_err(|e| match e {
        CallError::Store(e) => e,
        CallError::Llm(e) => Error::call("the insights call", e),
        CallError::Halted(trip) => Error::Halted(trip.message),
    })?;
    let texts = parse_rules(outcome.response.content().unwrap_or_default());
    let evidence: Vec<u64> = successes.iter().chain(&failures).map(|e| e.id).collect();
    let domain = domain.to_string();
    let now = crate::clock::now_ms();
    store
        .write(move |txn| rules::add_in(txn, &domain, &texts, &evidence, now))
        .await
}

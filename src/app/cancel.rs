//! `jobs cancel --batch`: stop a whole batch, at the provider too, keeping what it answered.

use std::sync::Arc;

use super::{remote_run, App, Connected};
use crate::chat::remote::{records, RemoteEnd};
use crate::error::{Error, Result};
use crate::llm::batch_api::Protocol;
use crate::queue::waiting_ids_read;
use crate::runner::FailureRecord;
use crate::shutdown::Listener;

/// What [`cancel_batch`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct Cancelled {
    /// Waiting lines cancelled here (never sent).
    pub waiting: usize,
    /// Provider batches the provider was asked to cancel.
    pub remote: usize,
    /// Whether every provider batch was collected (false: a signal stopped the wait; the
    /// next `batch --via provider` or cancel collects them).
    pub collected: bool,
}

/// Cancels the waiting lines of `batch` because its completion window ended: their lines
/// in the output say `batch_expired`. Running lines finish; returns how many were cancelled.
pub async fn expire_waiting(app: &App, batch: &str) -> Result<usize> {
    let b = batch.to_owned();
    let waiting = app.store.read(move |txn| waiting_ids_read(txn, &b)).await?;
    let reason = FailureRecord::new(
        FailureRecord::BATCH_EXPIRED,
        "the batch's completion window ended before this line ran",
    );
    app.queue
        .cancel_many_because(&waiting, &reason.to_last_error())
        .await?;
    Ok(waiting.len())
}

/// The provider batches of `batch` not yet collected: a cancel needs the endpoint for them.
pub async fn open_remote(app: &App, batch: &str) -> Result<usize> {
    let batch = batch.to_owned();
    app.store
        .read(move |txn| records::open_read(txn, Some(&batch)).map(|open| open.len()))
        .await
}

/// Cancels the waiting lines of `batch`, asks the provider to cancel its provider batches
/// (through `connected`, needed when [`open_remote`] found some) and waits for them to end,
/// completing the lines they answered and cancelling the rest.
pub async fn cancel_batch(
    app: &App,
    connected: Option<&Connected>,
    batch: &str,
    mut shutdown: Listener,
) -> Result<Cancelled> {
    let b = batch.to_owned();
    let waiting = app.store.read(move |txn| waiting_ids_read(txn, &b)).await?;
    app.queue.cancel_many(&waiting).await?;
    let b = batch.to_owned();
    let open = app
        .store
        .read(move |txn| records::open_read(txn, Some(&b)))
        .await?;
    let Some(first) = open.first() else {
        return Ok(Cancelled {
            waiting: waiting.len(),
            remote: 0,
            collected: true,
        });
    };
    let connected = connected.ok_or_else(|| {
        Error::Invalid(format!(
            "batch {batch} has provider batches: cancelling them needs the endpoint"
        ))
    })?;
    let protocol: Protocol = first.protocol.parse().map_err(|e| {
        Error::Invalid(format!(
            "provider batch {} has protocol {}: {e}",
            first.key, first.protocol
        ))
    })?;
    let run = remote_run(app, connected, protocol, Arc::default())?;
    let remote = run.cancel(batch).await?;
    let end = run.collect_all(batch, &mut shutdown).await?;
    Ok(Cancelled {
        waiting: waiting.len(),
        remote,
        collected: matches!(end, RemoteEnd::Collected { .. }),
    })
}

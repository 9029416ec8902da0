//! Settles authorizations that timed out. The payment already failed (`TIMEOUT`), but the PSP
//! may have authorized it after the caller gave up: every `reconcile_interval_ms` the attempts
//! still marked `TIMEOUT` are replayed with their own idempotency key (the PSP answers with its
//! stored first answer, never a second authorization; `pending` is followed up with `GET`), and
//! a late success is voided. A declined or voided outcome just closes the attempt. Attempts the
//! PSP cannot answer yet are left for the next round.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Result;
use super::ledger::{self, Unreconciled};
use super::logic::{self, Input};
use super::service::{Service, commit};
use crate::psp_mock::api::{AuthorizationRequest, AuthorizationStatus};

/// Attempts looked at per round.
const BATCH: i64 = 100;

/// Run rounds until `shutdown`; a failed round is logged and retried next interval.
pub(crate) async fn run(service: Service, interval: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        match round(&service, &shutdown).await {
            Ok(0) => {}
            Ok(settled) => tracing::info!(settled, "timed-out authorizations reconciled"),
            Err(e) => tracing::warn!(error = %e, "reconciliation round failed; retrying later"),
        }
    }
}

/// One pass over the unreconciled attempts; returns how many were settled.
pub(crate) async fn round(service: &Service, shutdown: &CancellationToken) -> Result<usize> {
    let mut settled = 0;
    for attempt in ledger::unreconciled(&service.pg, BATCH).await? {
        if shutdown.is_cancelled() {
            break;
        }
        if settle(service, &attempt).await? {
            settled += 1;
        }
    }
    Ok(settled)
}

async fn settle(service: &Service, attempt: &Unreconciled) -> Result<bool> {
    let req = AuthorizationRequest {
        amount_minor: attempt.amount_minor,
        currency: attempt.currency.clone(),
        payment_method: attempt.payment_method.clone(),
        reference: attempt.payment_id.clone(),
    };
    let Some(first) = service
        .psp
        .replay_authorization(&attempt.idempotency_key, &req)
        .await
    else {
        return Ok(false);
    };
    let status = if first.status == AuthorizationStatus::Pending {
        match service.psp.get_authorization(&first.id).await {
            Some(view) => view.status,
            None => return Ok(false),
        }
    } else {
        first.status
    };
    let mut tx = service.begin().await?;
    match status {
        AuthorizationStatus::Pending => return Ok(false),
        AuthorizationStatus::Declined => {}
        AuthorizationStatus::Authorized
        | AuthorizationStatus::Captured
        | AuthorizationStatus::Voided => {
            let Some(row) = ledger::lock_payment(&mut tx, &attempt.payment_id).await? else {
                return Ok(false);
            };
            let decision = logic::decide(
                Some(&row.state),
                &Input::LateAuthorization {
                    psp_reference: first.id.clone(),
                },
            );
            for effect in &decision.effects {
                if let logic::Effect::VoidLateAuthorization { psp_reference } = effect {
                    service
                        .void_late(&mut tx, &row.payment_id, psp_reference)
                        .await?;
                }
            }
            if let Some(state) = &decision.state
                && *state != row.state
            {
                ledger::save_state(&mut tx, &row.payment_id, state).await?;
            }
        }
    }
    ledger::mark_reconciled(&mut tx, &attempt.attempt_id).await?;
    commit(tx, "commit a reconciliation").await?;
    tracing::info!(
        payment_id = attempt.payment_id,
        psp_reference = first.id,
        outcome = status.as_str(),
        "timed-out authorization settled"
    );
    Ok(true)
}

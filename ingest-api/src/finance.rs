//! `GET /finance/reconciliation`: what the finance dashboard reads — the open mismatches between
//! the saga's decisions and the payment ledger, and how fresh the ledger data behind them is
//! (`asOf`, per-connector CDC lag).
//!
//! Served from the reconciliation role's in-process view
//! (`keel_processors::reconciliation::ReconciliationView`): the API answers only for the
//! partitions of the reconciliation application this process owns (listed in the answer), and
//! a process without the `reconciliation` role answers `501` `not-served-here` saying which role
//! serves it — never an empty list that would read as "no mismatches", and never a `503` "retry
//! later": this process will not serve it however often it is asked.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::problem::{Kind, Problem};
use crate::routes::{App, json_response, to_json};

#[utoipa::path(
    get,
    path = "/finance/reconciliation",
    tag = "finance",
    summary = "Open reconciliation mismatches and the CDC lag of the payment ledger",
    description = "Mismatches between the saga's decisions and the payment ledger (from CDC): \
        AUTHORIZED_BUT_CANCELLED and CONFIRMED_WITHOUT_CAPTURE after their grace periods, \
        AMOUNT_MISMATCH. asOf is the ledger source commit time the answer is based on: while the \
        connector is paused or behind it stops advancing and asOfLagSeconds grows.",
    responses(
        (status = 200, description = "The open mismatches of the partitions this process \
            reconciles, and the freshness of the ledger data",
            body = keel_processors::reconciliation::FinanceReport),
        (status = 501, description = "This process does not run the reconciliation role \
            (not-served-here): ask a process started with keel run --roles \
            ...,reconciliation; asking this one again never helps", body = Problem,
            content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get_reconciliation(State(app): State<App>) -> Response {
    let Some(view) = &app.0.finance else {
        return Problem::new(
            Kind::NotServedHere,
            "this process does not run the reconciliation role, which serves \
             GET /finance/reconciliation; ask a process started with \
             `keel run --roles ...,reconciliation`",
        )
        .into_response();
    };
    let report = view.report(chrono::Utc::now().timestamp_millis());
    json_response(StatusCode::OK, to_json(&report), None)
}

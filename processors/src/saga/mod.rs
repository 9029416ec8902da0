//! The checkout saga orchestrator, keyed by order id: validate the order (and, with
//! `[carts].source = "cdc"`, wait for the carts processor's check of its cart) → reserve every line
//! → authorize the payment → confirm, with compensations (release holds, void the payment) on
//! any failure, cancel or deadline. `docs/saga.md` has the transition table.
//!
//! - `logic.rs`: [`decide`], the pure transition function, and [`validate`].
//! - `state.rs`: [`Saga`] and the stores it lives in.
//! - `topology.rs`: [`topology`] and [`SagaProcessor`] on the runtime.

pub mod logic;
pub mod state;
mod topology;

#[cfg(test)]
mod tests;

pub use logic::{
    Effect, Ignored, Input, Outcome, Refusal, Timeouts, decide, validate, validate_header,
};
pub use state::{LineState, OpenSaga, PaymentState, Reason, Saga, Step};
pub use topology::{SagaConfig, SagaMetrics, SagaProcessor, topology, topology_with_carts};

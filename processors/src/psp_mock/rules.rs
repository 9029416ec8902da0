//! What the mock answers to one authorization, decided up front and deterministically: a pure
//! function of the behaviour, the seed, the idempotency key and the request. The random numbers
//! come from an `StdRng` seeded with `seed ^ sha256(idempotency key)`, so a run is reproducible
//! whatever order the calls arrive in.
//!
//! Order of the rules: the special tokens (`tok_timeout`, `tok_error`, `tok_pending`,
//! `tok_decline_<code>`), then amounts ending in `99` minor (declined `do_not_honor`), then
//! `tok_visa` / `tok_ok` (authorized), then the seeded mix of timeout, error and decline rates.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

use super::api::{AuthorizationRequest, Behaviour};

/// The decline code of an amount ending in 99 minor units.
pub const DO_NOT_HONOR: &str = "do_not_honor";
/// The decline code of the random decline rate.
pub const CARD_DECLINED: &str = "card_declined";

/// What happens to an authorization request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Authorized,
    Declined(String),
    /// Answer `pending`; after `pending_delay_ms` decide `resolves_to` (None = authorized, else
    /// the decline code) and call back, twice when `duplicate_callback`, out of order (held
    /// back `callback_reorder_delay_ms`) when `reordered`.
    Pending {
        resolves_to: Option<String>,
        duplicate_callback: bool,
        reordered: bool,
    },
    /// Answer 502 and create nothing.
    Error,
    /// Hang for `timeout_delay_ms`, then authorize (too late for any client timeout).
    Hang,
}

/// The plan for one authorization request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The PSP reference the authorization gets.
    pub psp_id: String,
    /// The event id of its callback, if it has one.
    pub event_id: String,
    /// How long the answer takes (for `Hang`: the hang).
    pub delay_ms: u64,
    pub outcome: Outcome,
}

fn key_seed(seed: u64, idempotency_key: &str) -> u64 {
    let digest = Sha256::digest(idempotency_key.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    seed ^ u64::from_be_bytes(first)
}

/// The plan for `req` sent with `idempotency_key`.
pub(crate) fn plan(
    behaviour: &Behaviour,
    seed: u64,
    idempotency_key: &str,
    req: &AuthorizationRequest,
) -> Plan {
    let mut rng = StdRng::seed_from_u64(key_seed(seed, idempotency_key));
    // Always draw the same numbers in the same order, whatever rule decides.
    let psp_id = format!("auth_{:016x}", rng.random::<u64>());
    let event_id = format!("evt_{:016x}", rng.random::<u64>());
    let latency_ms = if behaviour.latency_max_ms > behaviour.latency_min_ms {
        rng.random_range(behaviour.latency_min_ms..=behaviour.latency_max_ms)
    } else {
        behaviour.latency_min_ms
    };
    let roll: f64 = rng.random();
    let duplicate_roll: f64 = rng.random();
    let duplicate_callback = duplicate_roll < behaviour.duplicate_callback_rate;
    // Drawn last, so the draws above (and every earlier outcome) stay what they were.
    let reorder_roll: f64 = rng.random();
    let reordered = reorder_roll < behaviour.callback_reorder_rate;
    let ends_in_99 = req.amount_minor.rem_euclid(100) == 99;
    let token = req.payment_method.as_str();

    let outcome = if token == "tok_timeout" {
        Outcome::Hang
    } else if token == "tok_error" {
        Outcome::Error
    } else if token == "tok_pending" {
        Outcome::Pending {
            resolves_to: ends_in_99.then(|| DO_NOT_HONOR.to_owned()),
            duplicate_callback,
            reordered,
        }
    } else if let Some(code) = token.strip_prefix("tok_decline_") {
        Outcome::Declined(code.to_owned())
    } else if ends_in_99 {
        Outcome::Declined(DO_NOT_HONOR.to_owned())
    } else if token == "tok_visa" || token == "tok_ok" {
        Outcome::Authorized
    } else if roll < behaviour.timeout_rate {
        Outcome::Hang
    } else if roll < behaviour.timeout_rate + behaviour.error_rate {
        Outcome::Error
    } else if roll < behaviour.timeout_rate + behaviour.error_rate + behaviour.decline_rate {
        Outcome::Declined(CARD_DECLINED.to_owned())
    } else {
        Outcome::Authorized
    };
    let delay_ms = match outcome {
        Outcome::Hang => behaviour.timeout_delay_ms,
        _ => latency_ms,
    };
    Plan {
        psp_id,
        event_id,
        delay_ms,
        outcome,
    }
}

//! Outputs the broker refuses for what they are (too large, a timestamp outside the topic's
//! window): telling them apart from transient delivery failures, finding the input record
//! behind them (alone in a transaction of its own when the broker refused a whole batch), and
//! remembering it across aborts and thread restarts so that the replay dead-letters it
//! ([`process`](super::process)) or stops the application, per `on_bad_record`. Dead-letter
//! copies of bad input are made by the task ([`StreamTask`](crate::task::StreamTask)).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rdkafka::producer::Producer as _;

use super::Core;
use crate::error::{Error, ProcessError};
use crate::runtime::kafka;

/// Input records whose output the broker refused (see [`Core::delivery_failed`]).
#[derive(Debug, Default)]
pub(crate) struct Poisoned {
    /// Culprits, with why: on the replay they are dead-lettered instead of processed (or stop
    /// the application, per `on_bad_record`).
    pub(super) refused: HashMap<(Arc<str>, i32, i64), Refused>,
    /// Input records whose output was in a batch the broker refused (it refuses the whole
    /// batch for one record): each is replayed in a transaction of its own, so the culprit is
    /// the only record of the transaction that fails.
    pub(super) suspects: HashSet<(Arc<str>, i32, i64)>,
}

/// The [`Poisoned`] records of the application, shared by its stream threads; kept across
/// thread restarts. Every input record asks whether it is one of them, and almost always none
/// was ever found: until one is, that question is an atomic load instead of a lock.
#[derive(Debug, Default)]
pub(crate) struct PoisonLedger {
    entries: Mutex<Poisoned>,
    /// Set (for good) before the first entry goes in.
    ever_held: AtomicBool,
}

impl PoisonLedger {
    /// The entries, to add to them.
    pub(super) fn to_add(&self) -> MutexGuard<'_, Poisoned> {
        self.ever_held.store(true, Ordering::Release);
        self.lock()
    }

    /// The entries, to read or remove from; `None` while there never was one.
    pub(super) fn if_any(&self) -> Option<MutexGuard<'_, Poisoned>> {
        self.ever_held.load(Ordering::Acquire).then(|| self.lock())
    }

    fn lock(&self) -> MutexGuard<'_, Poisoned> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// An input record whose output the broker refused.
#[derive(Debug)]
pub(super) struct Refused {
    /// The topic that refused it.
    pub(super) topic: String,
    pub(super) reason: String,
    /// Whether its dead-letter copy was sent (refused again: stop).
    pub(super) dead_lettered: bool,
}

impl Core {
    /// A record that could not be delivered. A transient failure aborts and replays the
    /// interval. A record the broker refused for what it is (too large, a timestamp outside the
    /// topic's window) would be refused on every replay: its input record is remembered, the
    /// interval aborts, and the replay dead-letters that input instead of processing it
    /// (`on_bad_record = stop`: the application stops with the reason). A refused record with
    /// no input behind it (punctuation output, a changelog record) stops the application.
    pub(super) fn delivery_failed(&mut self, failure: kafka::DeliveryFailure) -> Error {
        let origin = |tag: usize| {
            tag.checked_sub(1)
                .and_then(|i| self.origins.get(i))
                .cloned()
        };
        let mut suspects: Vec<(Arc<str>, i32, i64)> = self
            .producer
            .context()
            .take_refused_origins()
            .into_iter()
            .filter_map(origin)
            .collect();
        suspects.sort();
        suspects.dedup();
        let input = origin(failure.origin);
        match (failure.refused(), input) {
            (true, Some(_)) if suspects.len() > 1 => {
                tracing::warn!(thread = self.index, error = %failure, suspects = suspects.len(), "the broker refused a batch of outputs; replaying each of their inputs in a transaction of its own to find the one it refuses");
                self.shared.poisoned.to_add().suspects.extend(suspects);
                // A refused batch leaves the idempotent producer's sequence numbers behind the
                // broker's: a new producer (thread restart) starts clean.
                self.producer_fatal = true;
                Error::Refused {
                    context: failure.to_string(),
                }
            }
            (true, Some(coordinates)) => {
                let coordinates = suspects.pop().unwrap_or(coordinates);
                self.producer_fatal = true;
                let shared = self.shared.clone();
                let mut poison = shared.poisoned.to_add();
                poison.suspects.remove(&coordinates);
                tracing::warn!(thread = self.index, error = %failure, input = ?coordinates, "the broker refused an output; the interval is replayed without it");
                let entry = poison.refused.entry(coordinates).or_insert(Refused {
                    topic: failure.topic.clone(),
                    reason: failure.error.to_string(),
                    dead_lettered: false,
                });
                if entry.dead_lettered {
                    // The dead-letter copy itself was refused: the replay stops (see `process`).
                    tracing::error!(thread = self.index, error = %failure, "the dead-letter copy was refused too");
                }
                Error::Refused {
                    context: failure.to_string(),
                }
            }
            (true, None) => Error::Processor {
                processor: format!("sink to {}", failure.topic),
                source: ProcessError::Fatal(format!(
                    "the broker refused a record that no input record produced (punctuation output or a changelog record), so there is nothing to dead-letter: {failure}"
                )),
            },
            (false, _) => Error::Transient {
                context: failure.to_string(),
            },
        }
    }
}

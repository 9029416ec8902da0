//! The Processor API: what a processor implements and the [`Context`] it works through.
//!
//! # What a processor may do with a store
//!
//! [`Context::kv`], [`Context::ttl`] and [`Context::timers`] hand out the *data views* of the
//! task's stores ([`KeyValueStore`], [`TtlStore`], [`TimerStore`]): reads, writes, ranges,
//! prefixes, timers and expiries. The lifecycle that exactly-once rests on — draining the
//! changelog, applying or dropping the interval's writes, savepoints, restore, checkpoints — is
//! on `keel_state::TaskState` and `keel_state::Store`, which only the runtime holds; a processor
//! cannot name a way to reach it. A processor that does what it should compiles:
//!
//! ```
//! use keel_topology::{Context, ProcessError, Processor, Record};
//!
//! struct Count;
//!
//! impl Processor for Count {
//!     type Key = String;
//!     type Value = i64;
//!     fn process(&mut self, ctx: &mut Context<'_>, r: Record<String, i64>) -> Result<(), ProcessError> {
//!         let store = ctx.kv("counts")?;
//!         let n = store.get(r.key.as_bytes())?.map_or(0, |v| v.len());
//!         store.put(r.key.into_bytes(), vec![0; n + 1]);
//!         Ok(())
//!     }
//! }
//! ```
//!
//! and one that reaches for the lifecycle does not (each of these is a `compile_fail` test):
//!
//! ```compile_fail,E0599
//! # use keel_topology::{Context, ProcessError};
//! fn misuse(ctx: &mut Context<'_>) -> Result<(), ProcessError> {
//!     let _ = ctx.kv("counts")?.take_changelog();
//!     Ok(())
//! }
//! ```
//!
//! ```compile_fail,E0599
//! # use keel_topology::{Context, ProcessError};
//! fn misuse(ctx: &mut Context<'_>) -> Result<(), ProcessError> {
//!     ctx.kv("counts")?.commit(Some(1))?;
//!     Ok(())
//! }
//! ```
//!
//! ```compile_fail,E0599
//! # use keel_topology::{Context, ProcessError};
//! fn misuse(ctx: &mut Context<'_>) -> Result<(), ProcessError> {
//!     ctx.timers("deadlines")?.abort();
//!     Ok(())
//! }
//! ```
//!
//! ```compile_fail,E0599
//! # use keel_topology::{Context, ProcessError};
//! fn misuse(ctx: &mut Context<'_>) -> Result<(), ProcessError> {
//!     let _ = ctx.ttl("holds")?.take_changelog();
//!     Ok(())
//! }
//! ```
//!
//! ```compile_fail,E0616
//! # use keel_topology::{Context, ProcessError};
//! fn misuse(ctx: &mut Context<'_>) -> Result<(), ProcessError> {
//!     ctx.state.commit([("counts", 1)])?; // the task's state is the runtime's
//!     Ok(())
//! }
//! ```

use std::any::{Any, type_name};
use std::time::Duration;

use keel_state::{KeyValueStore, TaskState, TimerStore, TtlStore};

use crate::error::ProcessError;
use crate::record::{Record, RecordMeta};
use crate::topology::{Graph, TaskId};

/// A record between nodes, its types erased; the receiving node downcasts it.
pub(crate) type Payload = Box<dyn Any + Send>;

/// One step of a topology. A fresh instance is made per task (per partition), so fields are
/// per-partition state that does not need to survive a restart; what must survive goes in a
/// store.
pub trait Processor: Send + 'static {
    /// The key of the records this processor accepts.
    type Key: Send + 'static;
    /// The value of the records this processor accepts.
    type Value: Send + 'static;

    /// Called once when the task starts, after its stores are restored: schedule punctuators.
    fn init(&mut self, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let _ = ctx;
        Ok(())
    }

    /// Handle one record: read and write stores, forward records downstream.
    fn process(
        &mut self,
        ctx: &mut Context<'_>,
        record: Record<Self::Key, Self::Value>,
    ) -> Result<(), ProcessError>;

    /// A punctuator scheduled in `init` fired.
    fn punctuate(
        &mut self,
        ctx: &mut Context<'_>,
        punctuation: &Punctuation,
    ) -> Result<(), ProcessError> {
        let _ = (ctx, punctuation);
        Ok(())
    }

    /// Called once when the task closes cleanly (its partition is revoked, the application
    /// shuts down), after its last commit: release what the processor holds. Store writes and
    /// forwarded records made here are dropped (the interval is already committed), and an
    /// error is logged, not raised. Not called when the task is closed dirty (after an error)
    /// or the process dies, so nothing that matters for correctness may depend on it.
    fn close(&mut self, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let _ = ctx;
        Ok(())
    }
}

/// Which clock drives a punctuator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PunctuationType {
    /// The largest timestamp of the records the task has processed (decoded and taken by every
    /// processor; dead-lettered records do not count); advances only with input.
    StreamTime,
    /// The machine's clock (the test driver's clock under test); advances with no input.
    WallClock,
}

/// A punctuator firing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Punctuation {
    /// The name given to [`Context::schedule`].
    pub name: String,
    pub kind: PunctuationType,
    /// The stream time or wall-clock time it fired at, in epoch milliseconds.
    pub timestamp: i64,
}

#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    pub(crate) node: usize,
    pub(crate) name: String,
    pub(crate) kind: PunctuationType,
    pub(crate) interval_ms: i64,
    /// When it fires next; `None` until the clock is first known.
    pub(crate) next: Option<i64>,
}

impl Schedule {
    /// Whether it fires at `now`; moves `next` past `now` on the interval's grid.
    pub(crate) fn due(&mut self, now: i64) -> bool {
        match self.next {
            None => {
                self.next = Some(now.saturating_add(self.interval_ms));
                false
            }
            Some(next) if next <= now => {
                let missed = (now - next) / self.interval_ms + 1;
                self.next = Some(next.saturating_add(missed.saturating_mul(self.interval_ms)));
                true
            }
            Some(_) => false,
        }
    }
}

/// What a processor sees of its task while it runs.
pub struct Context<'a> {
    pub(crate) node: usize,
    pub(crate) graph: &'a Graph,
    pub(crate) task: TaskId,
    pub(crate) state: &'a mut TaskState,
    pub(crate) meta: Option<&'a RecordMeta>,
    pub(crate) emitted: &'a mut Vec<(usize, Payload)>,
    pub(crate) schedules: &'a mut Vec<Schedule>,
    pub(crate) stream_time: i64,
    pub(crate) wall_clock: i64,
}

impl std::fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("node", &self.graph.node_name(self.node))
            .field("task", &self.task)
            .field("meta", &self.meta)
            .field("stream_time", &self.stream_time)
            .finish_non_exhaustive()
    }
}

impl Context<'_> {
    /// Sends `record` to every child of this processor.
    pub fn forward<K, V>(&mut self, record: Record<K, V>)
    where
        K: Clone + Send + 'static,
        V: Clone + Send + 'static,
    {
        let children = self.graph.children(self.node);
        if let Some((last, rest)) = children.split_last() {
            for &child in rest {
                self.emitted.push((child, Box::new(record.clone())));
            }
            self.emitted.push((*last, Box::new(record)));
        }
    }

    /// Sends `record` to the child named `child` only.
    pub fn forward_to<K, V>(
        &mut self,
        child: &str,
        record: Record<K, V>,
    ) -> Result<(), ProcessError>
    where
        K: Send + 'static,
        V: Send + 'static,
    {
        let found = self
            .graph
            .children(self.node)
            .iter()
            .copied()
            .find(|&c| self.graph.node_name(c) == child);
        match found {
            Some(index) => {
                self.emitted.push((index, Box::new(record)));
                Ok(())
            }
            None => Err(ProcessError::Fatal(format!(
                "{:?} has no child named {child:?}",
                self.graph.node_name(self.node)
            ))),
        }
    }

    fn connected(&self, store: &str) -> Result<(), ProcessError> {
        if self.graph.stores_of(self.node).iter().any(|s| s == store) {
            Ok(())
        } else {
            Err(ProcessError::Fatal(format!(
                "processor {:?} is not connected to store {store:?} (add_state_store names its processors)",
                self.graph.node_name(self.node)
            )))
        }
    }

    /// A key-value store connected to this processor: its data view (get, put, delete, range,
    /// prefix, iter), never its lifecycle (see [the module docs](self)).
    ///
    /// # Errors
    /// [`ProcessError::Fatal`] if the processor is not connected to `store`; a store error if
    /// `store` is not a key-value store.
    pub fn kv(&mut self, store: &str) -> Result<&mut KeyValueStore, ProcessError> {
        self.connected(store)?;
        Ok(self.state.kv_mut(store)?)
    }

    /// A TTL store connected to this processor: its data view (put, get, delete, expire,
    /// prefix), never its lifecycle.
    pub fn ttl(&mut self, store: &str) -> Result<&mut TtlStore, ProcessError> {
        self.connected(store)?;
        Ok(self.state.ttl_mut(store)?)
    }

    /// A timer store connected to this processor: its data view (schedule, cancel, get, due,
    /// prefix), never its lifecycle. Its timers are changelogged, so they survive restarts and
    /// move with the task.
    pub fn timers(&mut self, store: &str) -> Result<&mut TimerStore, ProcessError> {
        self.connected(store)?;
        Ok(self.state.timers_mut(store)?)
    }

    /// Calls [`Processor::punctuate`] every `interval` of `kind` time.
    pub fn schedule(&mut self, name: impl Into<String>, interval: Duration, kind: PunctuationType) {
        let interval_ms = i64::try_from(interval.as_millis())
            .unwrap_or(i64::MAX)
            .max(1);
        self.schedules.push(Schedule {
            node: self.node,
            name: name.into(),
            kind,
            interval_ms,
            next: None,
        });
    }

    /// Topic, partition (and the topic's partition count, [`RecordMeta::partitions`]), offset
    /// and timestamp of the input record being processed (`None` in `init` and `punctuate`).
    pub fn metadata(&self) -> Option<&RecordMeta> {
        self.meta
    }

    /// This task: its sub-topology and partition.
    pub fn task_id(&self) -> TaskId {
        self.task
    }

    /// The largest timestamp of the records this task has processed, the current one included
    /// (epoch ms; `i64::MIN` before any). Dead-lettered records do not move it.
    pub fn stream_time(&self) -> i64 {
        self.stream_time
    }

    /// The wall-clock time of this step (epoch ms; the driver's clock under test).
    pub fn wall_clock_time(&self) -> i64 {
        self.wall_clock
    }

    /// This processor's name.
    pub fn processor_name(&self) -> &str {
        self.graph.node_name(self.node)
    }
}

/// A processor behind a type-erased interface, so one graph holds processors of any types.
pub(crate) trait ErasedProcessor: Send {
    fn init(&mut self, ctx: &mut Context<'_>) -> Result<(), ProcessError>;
    fn process(&mut self, ctx: &mut Context<'_>, payload: Payload) -> Result<(), NodeFailure>;
    fn punctuate(&mut self, ctx: &mut Context<'_>, p: &Punctuation) -> Result<(), ProcessError>;
    fn close(&mut self, ctx: &mut Context<'_>) -> Result<(), ProcessError>;
}

/// Why one node could not take a record.
#[derive(Debug)]
pub(crate) enum NodeFailure {
    WrongType { expected: &'static str },
    Process(ProcessError),
}

impl<P: Processor> ErasedProcessor for P {
    fn init(&mut self, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        Processor::init(self, ctx)
    }

    fn process(&mut self, ctx: &mut Context<'_>, payload: Payload) -> Result<(), NodeFailure> {
        let record = payload
            .downcast::<Record<P::Key, P::Value>>()
            .map_err(|_| NodeFailure::WrongType {
                expected: type_name::<(P::Key, P::Value)>(),
            })?;
        Processor::process(self, ctx, *record).map_err(NodeFailure::Process)
    }

    fn punctuate(&mut self, ctx: &mut Context<'_>, p: &Punctuation) -> Result<(), ProcessError> {
        Processor::punctuate(self, ctx, p)
    }

    fn close(&mut self, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        Processor::close(self, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_fires_on_its_grid_and_skips_missed_beats_once() {
        let mut s = Schedule {
            node: 0,
            name: "p".into(),
            kind: PunctuationType::StreamTime,
            interval_ms: 10,
            next: None,
        };
        assert!(!s.due(100), "first sight of the clock only arms it");
        assert!(!s.due(105));
        assert!(s.due(110));
        assert!(!s.due(115));
        assert!(s.due(145), "a jump fires once, not once per missed beat");
        assert_eq!(s.next, Some(150));
    }
}

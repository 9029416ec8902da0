//! What goes into the open transaction between commits: one polled input record through its
//! task (or, if its output was refused before, its dead-letter copy), the wall-clock
//! punctuators of every task, and sending what they produced, tagged with the input it came
//! from. Also the conversion of a polled Kafka message into a [`RawRecord`].

use std::sync::Arc;
use std::time::Instant;

use prometheus::IntCounterVec;
use prometheus::local::LocalIntCounter;
use rdkafka::message::{Headers as _, Message};
use rustc_hash::FxHashMap;

use super::{Core, WALL_CLOCK_CHECK, now_ms};
use crate::error::{Action, Error, ProcessError, Result};
use crate::processor::PunctuationType;
use crate::record::{Headers, RawRecord};
use crate::runtime::kafka;
use crate::task::{self, BadRecordPolicy};
use crate::topology::TaskId;

/// The thread-local counter of `locals` labelled `label`, made from `family` the first
/// time (a label lookup hashes and locks: resolved once per label, not per record).
fn local_counter<'a>(
    locals: &'a mut FxHashMap<String, LocalIntCounter>,
    family: &IntCounterVec,
    label: &str,
) -> &'a LocalIntCounter {
    if !locals.contains_key(label) {
        locals.insert(label.to_owned(), family.with_label_values(&[label]).local());
    }
    &locals[label]
}

impl Core {
    /// Runs `raw` through its task; `started` is when this loop turn began (its processing
    /// time and wall-clock time are taken from it).
    pub(super) fn process(&mut self, raw: RawRecord, started: Instant) -> Result<()> {
        let Some(&sub) = self.shared.topic_subs.get(&*raw.topic) else {
            return Err(Error::Topology(format!(
                "no sub-topology reads {:?}",
                raw.topic
            )));
        };
        let id = TaskId {
            sub_topology: sub,
            partition: raw.partition,
        };
        self.begin()?;
        let wall = self.wall_ms(started);
        let task = self.tasks.get_mut(&id).ok_or_else(|| {
            Error::Topology(format!(
                "record from {}/{} but task {id} is not set up",
                raw.topic, raw.partition
            ))
        })?;
        let coordinates = (raw.topic.clone(), raw.partition, raw.offset);
        let mut output = std::mem::take(&mut self.output);
        let mut poison = self.shared.poisoned.if_any();
        // Almost always empty: no hash of the coordinates then.
        let refused = match poison.as_mut() {
            Some(poison) if !poison.refused.is_empty() => poison.refused.get_mut(&coordinates),
            _ => None,
        };
        if let Some(refused) = refused {
            // Its output was refused in an earlier (aborted) try: the record leaves no trace
            // but its dead-letter copy, or the application stops, as for bad input.
            if task.policy() == BadRecordPolicy::Stop || refused.dead_lettered {
                return Err(Error::Processor {
                    processor: format!("sink to {}", refused.topic),
                    source: ProcessError::Fatal(format!(
                        "the broker refused {} from input {}/{}@{}: {}{}",
                        if refused.dead_lettered {
                            "the dead-letter copy of the output"
                        } else {
                            "the output"
                        },
                        raw.topic,
                        raw.partition,
                        raw.offset,
                        refused.reason,
                        if refused.dead_lettered {
                            ""
                        } else {
                            " (on_bad_record = stop)"
                        }
                    )),
                });
            }
            refused.dead_lettered = true;
            output.clear();
            tracing::warn!(
                task = %id, topic = %raw.topic, partition = raw.partition, offset = raw.offset,
                output = %refused.topic, error = %refused.reason,
                "the broker refused this record's output; dead-lettering the record"
            );
            output.push(task.dead_letter(
                &raw,
                format!("sink to {}", refused.topic),
                format!("output refused by the broker: {}", refused.reason),
                wall,
            ));
            drop(poison);
        } else {
            drop(poison);
            if let Err(e) = task.process(&raw, wall) {
                let e = e.in_task(id);
                if e.action() == Action::RestoreTask {
                    self.corrupt.push(id);
                }
                return Err(e);
            }
            task.swap_output(&mut output);
        }
        let metrics = &self.shared.metrics;
        let (records_in, age) = self
            .topic_metrics
            .entry(raw.topic.clone())
            .or_insert_with(|| {
                (
                    metrics.records_in.with_label_values(&[&raw.topic]).local(),
                    metrics.end_to_end.with_label_values(&[&raw.topic]).local(),
                )
            });
        records_in.inc();
        if raw.timestamp > 0 {
            age.observe((wall - raw.timestamp).max(0) as f64 / 1000.0);
        }
        self.process_latency.observe(
            Instant::now()
                .saturating_duration_since(started)
                .as_secs_f64(),
        );
        self.origins.push(coordinates);
        let origin = self.origins.len();
        let sent = self.send_all(&output, origin);
        self.output = output;
        sent?;
        // The record's store writes go out now, not at the commit: the commit then only waits
        // for what is still in flight. (The stores keep them pending until the commit; an
        // abort discards both.)
        self.send_changelog(Some(id), wall)?;
        self.positions
            .insert((raw.topic.clone(), raw.partition), raw.offset + 1);
        self.dirty = true;
        Ok(())
    }

    /// Sends `output`, tagged with `origin` (the index + 1 in `origins` of the input record it
    /// came from; 0 for punctuation output).
    pub(super) fn send_all(
        &mut self,
        output: &[crate::record::OutRecord],
        origin: usize,
    ) -> Result<()> {
        for out in output {
            kafka::send_from(&self.producer, out, origin)?;
            if out.topic == self.shared.dead_letter_topic {
                let source = out
                    .headers
                    .get_str(task::dlq_headers::SOURCE_TOPIC)
                    .unwrap_or("?");
                local_counter(
                    &mut self.dead_letters,
                    &self.shared.metrics.dead_letters,
                    source,
                )
                .inc();
            } else {
                // Resolved once per topic: a label lookup hashes and locks.
                local_counter(
                    &mut self.records_out,
                    &self.shared.metrics.records_out,
                    &out.topic,
                )
                .inc();
            }
        }
        if !output.is_empty() {
            self.dirty = true;
        }
        Ok(())
    }

    /// Every [`WALL_CLOCK_CHECK`] (`now` is when this loop turn began): reads the wall clock
    /// ([`Core::wall_ms`] derives from it) and runs the wall-clock punctuators that are due.
    pub(super) fn punctuate_wall_clock(&mut self, now: Instant) -> Result<()> {
        if now.saturating_duration_since(self.wall_base.0) < WALL_CLOCK_CHECK {
            return Ok(());
        }
        let wall = now_ms();
        self.wall_base = (now, wall);
        if self.tasks.is_empty() {
            return Ok(());
        }
        self.begin()?;
        let mut output = Vec::new();
        for (id, task) in self.tasks.iter_mut() {
            if let Err(e) = task.punctuate(PunctuationType::WallClock, wall, wall) {
                let e = e.in_task(*id);
                if e.action() == Action::RestoreTask {
                    self.corrupt.push(*id);
                }
                return Err(e);
            }
            output.extend(task.take_output());
        }
        self.send_all(&output, 0)?;
        self.send_changelog(None, wall)?;
        kafka::serve_delivery_reports(&self.producer);
        Ok(())
    }
}

/// `m` as a [`RawRecord`]; its topic name is shared from `topics` (the thread's input topics,
/// a handful), so a record costs no allocation for it.
pub(super) fn to_raw(
    m: &rdkafka::message::BorrowedMessage<'_>,
    topics: &mut Vec<Arc<str>>,
) -> RawRecord {
    let name = m.topic();
    let topic = match topics.iter().find(|t| ***t == *name) {
        Some(t) => Arc::clone(t),
        None => {
            let t: Arc<str> = name.into();
            topics.push(Arc::clone(&t));
            t
        }
    };
    let mut headers = Headers::default();
    if let Some(h) = m.headers() {
        for header in h.iter() {
            match header.value {
                Some(value) => headers.insert(header.key, value),
                None => headers.insert_null(header.key),
            }
        }
    }
    RawRecord {
        topic,
        partition: m.partition(),
        offset: m.offset(),
        timestamp: crate::record::timestamp_ms(m.timestamp()),
        key: m.key().map(<[u8]>::to_vec),
        value: m.payload().map(<[u8]>::to_vec),
        headers,
    }
}

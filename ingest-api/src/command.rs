//! Writing commands to Kafka, for every route that does: encode each command with the schema
//! registry, produce it keyed by its entity (`acks=all`, idempotent, see [`crate::kafka`]) and
//! wait for Kafka's confirmation. Anything short of a confirmation is a 503 problem (with
//! `Retry-After`): the route answers `202` only once Kafka has the command, and a retry
//! re-sends the same command ids, which the processors de-duplicate.

use keel_avro::Record;

use crate::kafka::produce;
use crate::problem::{Kind, Problem};
use crate::routes::App;

impl App {
    /// Encode every command, then write all of them to `topic` at once and wait until Kafka
    /// confirmed each (or `produce_timeout_ms` passed). Errors, as 503 problems: the registry
    /// could not encode one (nothing is sent), or Kafka did not confirm one (the others may be
    /// on the topic; a retry re-sends the same ids).
    /// The key of each is [`Record::key`]: the order id for order and payment commands, the SKU
    /// for inventory ones.
    pub(crate) async fn send_commands<C: Record>(
        &self,
        topic: &str,
        commands: &[C],
    ) -> Result<(), Problem> {
        let mut payloads = Vec::with_capacity(commands.len());
        for command in commands {
            let payload = self.0.codec.encode_to(topic, command).await.map_err(|e| {
                tracing::error!(
                    error = %e,
                    record = C::contract().rust_type,
                    key = %command.key(),
                    "encoding a command failed"
                );
                Problem::new(
                    Kind::DependencyUnavailable,
                    "the schema registry could not encode the command; retry later",
                )
            })?;
            payloads.push(payload);
        }
        let timeout = self.produce_timeout();
        let sends = commands.iter().zip(&payloads).map(|(command, payload)| {
            produce(&self.0.producer, topic, command.key(), payload, timeout)
        });
        let results = futures::future::join_all(sends).await;
        let mut failure = None;
        for (command, result) in commands.iter().zip(results) {
            match result {
                Ok((partition, offset)) => tracing::info!(
                    record = C::contract().rust_type,
                    key = %command.key(),
                    command_id = %command.envelope().id,
                    correlation_id = %command.envelope().correlation_id,
                    topic = %topic,
                    partition,
                    offset,
                    "command accepted"
                ),
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        record = C::contract().rust_type,
                        key = %command.key(),
                        "producing a command failed"
                    );
                    failure.get_or_insert(e);
                }
            }
        }
        match failure {
            None => Ok(()),
            Some(e) => Err(Problem::new(
                Kind::DependencyUnavailable,
                format!("Kafka did not confirm the command: {e}; retry later"),
            )),
        }
    }
}

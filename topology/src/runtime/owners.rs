//! Which instance owns which partition: the group's current assignment, read from the broker
//! (DescribeGroups) and decoded from the consumer protocol, mapped to the instance ids the
//! stream threads put in their `client.id` (`<application_id>@<instance_id>#<thread>`).

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::config::StreamsConfig;
use crate::error::{Error, Result};
use crate::runtime::kafka::{self, Role};

/// The `client.id` of a stream thread's consumer.
pub(crate) fn client_id(application_id: &str, instance: &str, thread: usize) -> String {
    format!("{application_id}@{instance}#{thread}")
}

fn instance_of(client_id: &str) -> Option<&str> {
    let (_, rest) = client_id.split_once('@')?;
    Some(rest.rsplit_once('#').map_or(rest, |(instance, _)| instance))
}

/// (topic, partition) → instance id, for every partition currently assigned in the group.
pub(crate) fn partition_owners(config: &StreamsConfig) -> Result<HashMap<(String, i32), String>> {
    let mut cc = kafka::client_config(config, Role::Consumer);
    cc.set("group.id", format!("{}-metadata", config.application_id));
    let consumer: BaseConsumer = cc
        .create()
        .map_err(Error::kafka("creating the metadata client"))?;
    let groups = consumer
        .fetch_group_list(Some(&config.application_id), Duration::from_secs(10))
        .map_err(Error::kafka("describing the group"))?;
    let mut owners = HashMap::new();
    for group in groups
        .groups()
        .iter()
        .filter(|g| g.name() == config.application_id)
    {
        for member in group.members() {
            let Some(instance) = instance_of(member.client_id()) else {
                continue;
            };
            let Some(bytes) = member.assignment() else {
                continue;
            };
            for (topic, partitions) in decode_assignment(bytes).unwrap_or_default() {
                for p in partitions {
                    owners.insert((topic.clone(), p), instance.to_owned());
                }
            }
        }
    }
    Ok(owners)
}

/// Decodes the consumer protocol's Assignment: `int16 version`, `[string topic, [int32]]`, the
/// rest (user data) ignored. `None` if the bytes are not one.
fn decode_assignment(bytes: &[u8]) -> Option<Vec<(String, Vec<i32>)>> {
    let mut r = Reader { bytes, at: 0 };
    let _version = r.i16()?;
    let topics = r.i32()?;
    let mut out = Vec::new();
    for _ in 0..topics.max(0) {
        let len = usize::try_from(r.i16()?).ok()?;
        let topic = String::from_utf8(r.take(len)?.to_vec()).ok()?;
        let n = r.i32()?;
        let mut partitions = Vec::new();
        for _ in 0..n.max(0) {
            partitions.push(r.i32()?);
        }
        out.push((topic, partitions));
    }
    Some(out)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let slice = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(slice)
    }
    fn i16(&mut self) -> Option<i16> {
        self.take(2).map(|b| i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self) -> Option<i32> {
        self.take(4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_an_assignment_and_refuses_truncated_bytes() {
        let mut bytes = vec![
            0, 1, 0, 0, 0, 1, 0, 2, b'i', b'n', 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3,
        ];
        bytes.extend_from_slice(&[0, 0, 0, 0]); // empty user data
        assert_eq!(
            decode_assignment(&bytes),
            Some(vec![("in".to_owned(), vec![0, 3])])
        );
        assert_eq!(decode_assignment(&bytes[..9]), None);
        assert_eq!(instance_of("app@inst-a#0"), Some("inst-a"));
        assert_eq!(instance_of("rdkafka"), None);
    }
}

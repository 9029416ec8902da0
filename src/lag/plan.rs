//! Which partitions each group is asked about, and the join of its committed offsets with the
//! partitions' watermarks: pure functions, no I/O.
//!
//! librdkafka matches an offset-fetch answer to the request list one partition at a time with a
//! linear search (`rd_kafka_topic_partition_list_find`, in the response handler and again in
//! `rd_kafka_committed`), so asking one group about `n` partitions costs `O(n²)`: asking about the
//! 13,884 partitions of a shared dev cluster cost seconds of CPU per group. Hence: a group is asked
//! only about the topics it reads ([`requests`]), and a request holds at most [`CHUNK`]
//! partitions, which bounds that search whatever the list.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rdkafka::Offset;

use super::PartitionLag;

/// The most partitions asked about in one offset fetch.
pub const CHUNK: usize = 256;

/// How a listed group is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One of this configuration's groups ([`super::keel_groups`]).
    Keel,
    /// A Kafka Connect worker group (protocol type `connect`): it coordinates the workers and
    /// never commits offsets (a source connector's position is in Connect's offsets topic, a
    /// Debezium connector's lag is the CDC lag metric), so it is asked about nothing.
    ConnectWorker,
    /// The group of a sink connector of this configuration (`connect-<application id>-…`).
    KeelConnector,
    /// Any other group (`--all`, `--group`).
    Other,
}

/// The kind of the group `name` of `protocol_type`; `keel` is [`super::keel_groups`].
pub fn kind(keel: &[String], app: &str, name: &str, protocol_type: &str) -> Kind {
    if keel.iter().any(|g| g == name) {
        Kind::Keel
    } else if protocol_type == "connect" {
        Kind::ConnectWorker
    } else if name.starts_with(&format!("connect-{app}-")) {
        Kind::KeelConnector
    } else {
        Kind::Other
    }
}

/// The topics of a consumer-protocol member assignment (`ConsumerProtocolAssignment`, versions
/// 0–3: `int16 version`, `[string topic, [int32 partition]]`, `bytes user_data`); `None` when the
/// bytes are not one (another protocol type, or truncated).
pub fn assigned_topics(bytes: &[u8]) -> Option<BTreeSet<String>> {
    let mut r = Reader(bytes);
    let _version = r.i16()?;
    let topics = r.i32()?;
    let mut out = BTreeSet::new();
    for _ in 0..topics.max(0) {
        let len = usize::try_from(r.i16()?).ok()?;
        let name = std::str::from_utf8(r.take(len)?).ok()?;
        let partitions = usize::try_from(r.i32()?.max(0)).ok()?;
        r.take(partitions.checked_mul(4)?)?;
        out.insert(name.to_owned());
    }
    Some(out)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn i16(&mut self) -> Option<i16> {
        Some(i16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    fn i32(&mut self) -> Option<i32> {
        Some(i32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
}

/// The partitions to ask a group of `kind` about, in requests of at most [`CHUNK`]: its members'
/// `assigned` topics, plus for this configuration's groups and connectors every topic of `cluster`
/// that `keel_topic` accepts (so a stopped consumer's lag is still seen); nothing for a Connect
/// worker group; for another group without members (whose topics nobody can tell without a
/// group-wide offset fetch, which rdkafka 0.39 does not offer) every topic of `cluster`. Topics
/// not in `cluster` (deleted) are left out. `cluster`: topic → partition ids.
pub fn requests(
    kind: Kind,
    assigned: &BTreeSet<String>,
    cluster: &BTreeMap<String, Vec<i32>>,
    keel_topic: impl Fn(&str) -> bool,
) -> Vec<Vec<(String, i32)>> {
    let topics: Vec<&String> = match kind {
        Kind::ConnectWorker => Vec::new(),
        Kind::Keel | Kind::KeelConnector => cluster
            .keys()
            .filter(|t| assigned.contains(*t) || keel_topic(t))
            .collect(),
        Kind::Other if assigned.is_empty() => cluster.keys().collect(),
        Kind::Other => cluster.keys().filter(|t| assigned.contains(*t)).collect(),
    };
    let partitions: Vec<(String, i32)> = topics
        .into_iter()
        .flat_map(|t| cluster[t].iter().map(move |p| (t.clone(), *p)))
        .collect();
    partitions.chunks(CHUNK).map(<[_]>::to_vec).collect()
}

/// The rows of `group`: one per partition of each topic it has committed on (`committed`: the
/// offset fetch's answers; a partition without a commit counts from its log start), joined with
/// `watermarks` ((topic, partition) → (log start, high watermark)) by a map lookup; a partition
/// without watermarks is left out.
pub fn rows(
    group: &str,
    committed: &[(String, i32, Offset)],
    watermarks: &HashMap<(String, i32), (i64, i64)>,
) -> Vec<PartitionLag> {
    let read: BTreeSet<&str> = committed
        .iter()
        .filter(|(_, _, o)| matches!(o, Offset::Offset(_)))
        .map(|(t, _, _)| t.as_str())
        .collect();
    committed
        .iter()
        .filter(|(t, _, _)| read.contains(t.as_str()))
        .filter_map(|(topic, partition, offset)| {
            let &(low, end) = watermarks.get(&(topic.clone(), *partition))?;
            let committed = match offset {
                Offset::Offset(o) => *o,
                _ => low,
            };
            Some(PartitionLag {
                group: group.to_owned(),
                topic: topic.clone(),
                partition: *partition,
                committed,
                end,
                lag: (end - committed).max(0),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(topics: &[(&str, i32)]) -> BTreeMap<String, Vec<i32>> {
        topics
            .iter()
            .map(|(t, n)| ((*t).to_owned(), (0..*n).collect()))
            .collect()
    }

    fn topics_of(requests: &[Vec<(String, i32)>]) -> BTreeSet<String> {
        requests.iter().flatten().map(|(t, _)| t.clone()).collect()
    }

    /// A consumer-protocol assignment as Kafka encodes it.
    fn assignment(topics: &[(&str, &[i32])]) -> Vec<u8> {
        let mut b = 1i16.to_be_bytes().to_vec();
        b.extend(i32::try_from(topics.len()).expect("few").to_be_bytes());
        for (t, ps) in topics {
            b.extend(i16::try_from(t.len()).expect("short").to_be_bytes());
            b.extend(t.as_bytes());
            b.extend(i32::try_from(ps.len()).expect("few").to_be_bytes());
            for p in *ps {
                b.extend(p.to_be_bytes());
            }
        }
        b.extend((-1i32).to_be_bytes());
        b
    }

    #[test]
    fn a_member_assignment_names_its_topics_and_garbage_names_none() {
        let bytes = assignment(&[("a.v1", &[0, 2]), ("b.v1", &[1])]);
        let topics = assigned_topics(&bytes).expect("parses");
        assert_eq!(
            topics,
            ["a.v1", "b.v1"].map(str::to_owned).into_iter().collect()
        );
        assert_eq!(assigned_topics(&bytes[..bytes.len() - 9]), None, "cut");
        assert_eq!(assigned_topics(&[0, 1]), None);
    }

    #[test]
    fn each_group_is_asked_only_about_the_topics_it_reads() {
        // A shared cluster: this run's topics and other runs' leftovers.
        let cluster = cluster(&[
            ("orders.commands.v1", 3),
            ("keel_e2e_1.orders.commands.v1", 3),
            ("keel_e2e_2.payments.commands.v1", 3),
            ("other.topic", 2),
        ]);
        let keel_topic = |t: &str| t == "orders.commands.v1";
        let none = BTreeSet::new();

        let keel = requests(Kind::Keel, &none, &cluster, keel_topic);
        assert_eq!(topics_of(&keel), ["orders.commands.v1".to_owned()].into());
        assert_eq!(keel.iter().flatten().count(), 3);

        assert!(requests(Kind::ConnectWorker, &none, &cluster, keel_topic).is_empty());

        let sink: BTreeSet<String> = ["other.topic".to_owned()].into();
        assert_eq!(
            topics_of(&requests(Kind::KeelConnector, &sink, &cluster, keel_topic)),
            ["orders.commands.v1".to_owned(), "other.topic".to_owned()].into(),
            "a connector's group: its members' topics and this run's"
        );
        assert_eq!(
            topics_of(&requests(Kind::Other, &sink, &cluster, keel_topic)),
            sink,
            "a foreign group with members: their topics only"
        );
        assert_eq!(
            requests(Kind::Other, &none, &cluster, keel_topic)
                .iter()
                .flatten()
                .count(),
            11,
            "a foreign group without members: every partition"
        );
        let gone: BTreeSet<String> = ["deleted.topic".to_owned()].into();
        assert!(requests(Kind::Other, &gone, &cluster, keel_topic).is_empty());
    }

    #[test]
    fn a_large_list_is_asked_in_bounded_chunks_covering_every_partition_once() {
        let cluster = cluster(&[("big", 600), ("small", 3)]);
        let chunks = requests(Kind::Other, &BTreeSet::new(), &cluster, |_| false);
        assert!(chunks.iter().all(|c| !c.is_empty() && c.len() <= CHUNK));
        let all: Vec<&(String, i32)> = chunks.iter().flatten().collect();
        let distinct: BTreeSet<&(String, i32)> = all.iter().copied().collect();
        assert_eq!((all.len(), distinct.len()), (603, 603));
    }

    #[test]
    fn kinds_follow_names_and_protocol_types() {
        let keel = vec!["app-saga".to_owned()];
        let k = |name: &str, protocol: &str| kind(&keel, "app", name, protocol);
        assert_eq!(k("app-saga", "consumer"), Kind::Keel);
        assert_eq!(k("keel-connect", "connect"), Kind::ConnectWorker);
        assert_eq!(
            k("connect-app-ledger-sink", "consumer"),
            Kind::KeelConnector
        );
        assert_eq!(k("connect-other-sink", "consumer"), Kind::Other);
        assert_eq!(k("app-saga-x", "consumer"), Kind::Other);
    }

    #[test]
    fn rows_join_offsets_to_watermarks_and_skip_unread_topics() {
        let committed = vec![
            ("t".to_owned(), 0, Offset::Offset(5)),
            ("t".to_owned(), 1, Offset::Invalid),
            ("u".to_owned(), 0, Offset::Invalid),
            ("t".to_owned(), 2, Offset::Offset(9)),
        ];
        let watermarks: HashMap<(String, i32), (i64, i64)> = [
            (("t".to_owned(), 0), (0, 9)),
            (("t".to_owned(), 1), (3, 4)),
            (("u".to_owned(), 0), (0, 7)),
        ]
        .into();
        let rows = rows("g", &committed, &watermarks);
        let got: Vec<(&str, i32, i64, i64, i64)> = rows
            .iter()
            .map(|r| (r.topic.as_str(), r.partition, r.committed, r.end, r.lag))
            .collect();
        // t/1 has no commit: from its log start; u was never committed on; t/2 has no watermark.
        assert_eq!(got, vec![("t", 0, 5, 9, 4), ("t", 1, 3, 4, 1)]);
    }
}

//! Deleting a benchmark run's Kafka topics when the run ends.
//!
//! A broker keeps files open for every partition of every topic it holds, so benchmark runs that
//! leave their topics behind exhaust its file descriptors ("Too many open files"). Each run
//! names its topics by prefixes only it can have (a random tag, or an isolated run's topic prefix
//! and application id) and deletes every topic they match once its engine has stopped, with
//! [`keel_topology::runtime::delete_topics_matching`] (one metadata request, one DeleteTopics
//! request), the whole bounded by the caller's `within`.

use std::time::Duration;

use rdkafka::ClientConfig;

/// How long a run's cleanup may take (listing and deleting together).
pub(crate) const CLEANUP_WITHIN: Duration = Duration::from_secs(15);

/// Whether `topic` starts with one of `prefixes`.
fn matches_any(prefixes: &[String], topic: &str) -> bool {
    prefixes.iter().any(|p| topic.starts_with(p.as_str()))
}

/// Deletes every topic on `bootstrap` whose name starts with one of `prefixes` (e.g.
/// `["<prefix>.", "<application id>-"]`), with the client settings `client` (librdkafka
/// key/value pairs, e.g. `[kafka.client]`). Returns the names it deleted (empty when none
/// matched). Waits at most about `within` (at least 1 s for the deletion); a topic deleted
/// meanwhile by someone else counts as deleted.
///
/// Errors: an empty prefix (it would match every topic), no admin client, the metadata request
/// failing, the DeleteTopics request failing, or the topics the broker could not delete (named
/// with their error codes).
pub(crate) async fn delete_topics_with_prefixes<'a>(
    bootstrap: &str,
    client: impl IntoIterator<Item = (&'a String, &'a String)>,
    prefixes: &[String],
    within: Duration,
) -> anyhow::Result<Vec<String>> {
    anyhow::ensure!(
        !prefixes.is_empty() && prefixes.iter().all(|p| !p.is_empty()),
        "topic prefixes {prefixes:?}: an empty one would match every topic"
    );
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    for (k, v) in client {
        config.set(k, v);
    }
    let deleted = keel_topology::runtime::delete_topics_matching(
        &config,
        |topic| matches_any(prefixes, topic),
        within,
    )
    .await?;
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_topics_starting_with_a_prefix_match() {
        let prefixes = vec!["bench-in-0a1b2c3d".to_owned(), "bench-0a1b2c3d-".to_owned()];
        assert!(matches_any(&prefixes, "bench-in-0a1b2c3d"));
        assert!(matches_any(&prefixes, "bench-0a1b2c3d-sums-changelog"));
        assert!(!matches_any(&prefixes, "bench-out-0a1b2c3e"));
        assert!(!matches_any(&prefixes, "bench-0a1b2c3d"));
        assert!(!matches_any(&prefixes, "x-bench-0a1b2c3d-sums-changelog"));
    }

    #[test]
    fn an_empty_prefix_is_refused_before_any_request() {
        for prefixes in [vec![], vec!["bench-x-".to_owned(), String::new()]] {
            let result = futures::executor::block_on(delete_topics_with_prefixes(
                "unused:9092",
                &std::collections::BTreeMap::new(),
                &prefixes,
                Duration::from_secs(1),
            ));
            let error = result.expect_err("refused").to_string();
            assert!(error.contains("match every topic"), "{error}");
        }
    }
}

//! Deleting a test's own Kafka topics when the test ends.
//!
//! A broker keeps files open for every partition of every topic it holds, so tests that leave
//! their random topics behind exhaust its file descriptors: ~6,400 leftover topics (19,267
//! partition directories, `ulimit -n` 20,000) stopped the shared broker with "Too many open
//! files". Every fixture that creates topics therefore holds a [`TopicCleanup`] that names them
//! — exact names and/or prefixes only the fixture's random names can have — and deletes them
//! when it drops: one metadata request finds the names, one DeleteTopics request deletes them
//! all, the whole bounded by [`CLEANUP_WITHIN`]. Dropping never panics; a failure is printed to
//! stderr and the test goes on.
//!
//! ```no_run
//! # fn demo(bootstrap: &str) {
//! let app = keel_tests::unique("sums_app");
//! let input = keel_tests::unique("sums_in");
//! // The input topic, and the application's internal topics `<app>-<store>-changelog`, ...
//! let _topics = keel_tests::topics::TopicCleanup::new(bootstrap)
//!     .topic(&input)
//!     .prefix(format!("{app}-"));
//! # }
//! ```

use std::sync::{Mutex, PoisonError, mpsc};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;

/// How long a cleanup may take (metadata and delete together); past it, the test goes on and
/// the deletion finishes, or not, on its own thread.
pub const CLEANUP_WITHIN: Duration = Duration::from_secs(10);

/// The shortest prefix a [`TopicCleanup`] accepts: `_` and the 12 hex digits of
/// [`crate::unique`]. A shorter one could not hold a random part, so it could match topics that
/// are not the test's own.
pub const MIN_PREFIX_LEN: usize = 13;

/// The topics a test owns: exact names and name prefixes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owned {
    names: Vec<String>,
    prefixes: Vec<String>,
}

impl Owned {
    /// Whether `topic` is one of these.
    pub fn matches(&self, topic: &str) -> bool {
        self.names.iter().any(|n| n == topic) || self.prefixes.iter().any(|p| topic.starts_with(p))
    }

    /// Nothing named.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.prefixes.is_empty()
    }
}

/// Deletes the topics it names when dropped (see the module docs). Build it right after the
/// names are drawn and before anything creates a topic, and keep it alive until every client
/// of those topics has stopped: a producer that still runs would create them again (the
/// broker auto-creates topics).
#[must_use = "the topics are deleted when this value drops"]
#[derive(Debug)]
pub struct TopicCleanup {
    bootstrap: String,
    /// Behind a lock so a fixture shared behind an `Arc` can name topics it creates later.
    owned: Mutex<Owned>,
}

impl TopicCleanup {
    /// Nothing named yet, on the broker(s) at `bootstrap`.
    pub fn new(bootstrap: impl Into<String>) -> Self {
        Self {
            bootstrap: bootstrap.into(),
            owned: Mutex::new(Owned::default()),
        }
    }

    /// Also the topic `name` (exactly).
    pub fn topic(self, name: impl Into<String>) -> Self {
        self.add_topic(name);
        self
    }

    /// Also every topic named in `names` (exactly).
    pub fn topics<S: Into<String>>(self, names: impl IntoIterator<Item = S>) -> Self {
        for name in names {
            self.add_topic(name);
        }
        self
    }

    /// Also every topic whose name starts with `prefix`, e.g. `"<app>-"` for an application's
    /// changelog, repartition and dead-letter topics. Panics (when built, never when dropped)
    /// on a prefix shorter than [`MIN_PREFIX_LEN`].
    pub fn prefix(self, prefix: impl Into<String>) -> Self {
        self.add_prefix(prefix);
        self
    }

    /// [`TopicCleanup::topic`] on a fixture that holds one (e.g. a topic a worker it starts
    /// will create).
    pub fn add_topic(&self, name: impl Into<String>) {
        self.lock().names.push(name.into());
    }

    /// [`TopicCleanup::prefix`] on a fixture that holds one.
    pub fn add_prefix(&self, prefix: impl Into<String>) {
        let prefix = prefix.into();
        assert!(
            prefix.len() >= MIN_PREFIX_LEN,
            "topic prefix {prefix:?} is too short to be a test's own (at least {MIN_PREFIX_LEN} characters)"
        );
        self.lock().prefixes.push(prefix);
    }

    /// What it deletes.
    pub fn owned(&self) -> Owned {
        self.lock().clone()
    }

    /// Deletes the named topics now; returns the names it asked the broker to delete.
    pub fn delete_now(&self) -> Result<Vec<String>, String> {
        delete_owned(&self.bootstrap, &self.owned(), CLEANUP_WITHIN)
    }

    /// The names, also after a panic while another thread held the lock (it only pushes).
    fn lock(&self) -> std::sync::MutexGuard<'_, Owned> {
        self.owned.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for TopicCleanup {
    fn drop(&mut self) {
        if self.owned().is_empty() {
            return;
        }
        if let Err(e) = self.delete_now() {
            eprintln!("topic cleanup on {}: {e}", self.bootstrap);
        }
    }
}

/// Every topic name the broker lists (internal ones included), within `within`.
pub fn list_topics(bootstrap: &str, within: Duration) -> Result<Vec<String>, String> {
    let bootstrap = bootstrap.to_owned();
    on_own_thread(within, move || {
        let admin = admin(&bootstrap)?;
        names(&admin, within)
    })
}

/// Deletes every topic on `bootstrap` that `owned` matches with
/// [`keel_topology::runtime::delete_topics_matching`]: one metadata request, then one
/// DeleteTopics request for all of them; returns the names it asked to delete (those the broker
/// could not delete are in the error). Runs on a thread of its own, so it works from `Drop`
/// inside or outside an async runtime, and returns after `within` at the latest.
pub fn delete_owned(
    bootstrap: &str,
    owned: &Owned,
    within: Duration,
) -> Result<Vec<String>, String> {
    if owned.is_empty() {
        return Ok(Vec::new());
    }
    let client = client_config(bootstrap);
    let owned = owned.clone();
    on_own_thread(within, move || {
        futures::executor::block_on(keel_topology::runtime::delete_topics_matching(
            &client,
            |topic| owned.matches(topic),
            within,
        ))
        .map_err(|e| e.to_string())
    })
}

/// The admin client's settings: `bootstrap` only, librdkafka's log quiet.
fn client_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        // Errors come back as results; librdkafka's own log would only repeat them.
        .set("log_level", "3");
    config
}

fn admin(bootstrap: &str) -> Result<AdminClient<DefaultClientContext>, String> {
    client_config(bootstrap)
        .create()
        .map_err(|e| format!("admin client: {e}"))
}

fn names(
    admin: &AdminClient<DefaultClientContext>,
    within: Duration,
) -> Result<Vec<String>, String> {
    let metadata = admin
        .inner()
        .fetch_metadata(None, within)
        .map_err(|e| format!("listing topics: {e}"))?;
    Ok(metadata
        .topics()
        .iter()
        .map(|t| t.name().to_owned())
        .collect())
}

/// `work` on a fresh thread (no async runtime of the caller's is touched), waiting for it at
/// most `within` plus a second for the clients to start.
fn on_own_thread<T: Send + 'static>(
    within: Duration,
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("topic-cleanup".to_owned())
        .spawn(move || {
            let _ = tx.send(work());
        })
        .map_err(|e| format!("starting the cleanup thread: {e}"))?;
    match rx.recv_timeout(within + Duration::from_secs(1)) {
        Ok(result) => result,
        Err(mpsc::RecvTimeoutError::Timeout) => Err(format!("no answer within {within:?}")),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err("the cleanup thread panicked".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_matches_exact_names_and_prefixes_only() {
        let c = TopicCleanup::new("unused:9092")
            .topic("eos_in_0123456789ab")
            .prefix("eos_app_0123456789ab-");
        let owned = c.owned();
        std::mem::forget(c);
        assert!(owned.matches("eos_in_0123456789ab"));
        assert!(owned.matches("eos_app_0123456789ab-sums-changelog"));
        assert!(!owned.matches("eos_in_0123456789ab_other"));
        assert!(!owned.matches("eos_app_0123456789ab"));
        assert!(!owned.matches("eos_app_0123456789ac-sums-changelog"));
    }

    #[test]
    #[should_panic(expected = "too short")]
    fn a_prefix_without_a_random_part_is_refused() {
        let _ = TopicCleanup::new("unused:9092").prefix("keel_");
    }
}

//! `keel run` watches the Kafka Connect connectors it registered for its roles: the carts CDC
//! connector of the `saga` role (`[carts].source = "cdc"`) and the outbox connectors of the
//! `relay` role (`[outbox].mode = "debezium"`). A connector that is deleted, paused or failed
//! while Keel runs stops feeding it without any error of Keel's own — with the carts connector
//! gone, every checkout waits out `[saga].cart_wait_ms` and ends `CART_NOT_FOUND` — so the
//! watch makes it visible once two checks in a row, `[connectors].watch_interval_ms` apart,
//! found it not running (a task restarting during one of Connect's rebalances is not worth an
//! alarm):
//! - an ERROR log when a connector stops running (with Connect's reason), INFO when it runs
//!   again;
//! - the gauge `keel_connector_running{connector}`: 1 while it and all its tasks run, else 0;
//! - `/ready` answers 503 naming the connector and what to do, while one does not run.
//!
//! Keel does not act on it by itself (the operator who deleted or paused it may mean it): the
//! problem names the command that does — `keel connectors register` for a deleted connector,
//! `resume` for a paused one, `restart` for a failed one (after `keel connectors status` and
//! the cause). Kafka Connect itself
//! unreachable is reported the same way (the connectors' state is unknown, and a Connect that
//! is down feeds nothing either).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_connectors::{ConnectClient, Error as ConnectError};
use prometheus::{IntGaugeVec, Opts, Registry};
use tokio_util::sync::CancellationToken;

/// What the watch found wrong, per connector name: why it does not run. Empty while every
/// watched connector runs (also before the first check: `keel run` started them running).
#[derive(Debug, Clone, Default)]
pub struct ConnectorProblems(Arc<Mutex<BTreeMap<String, String>>>);

impl ConnectorProblems {
    /// `None` while every watched connector runs; else one line naming each one that does not
    /// and why, for `/ready`'s problem detail.
    pub fn describe(&self) -> Option<String> {
        let problems = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if problems.is_empty() {
            return None;
        }
        let each: Vec<String> = problems
            .iter()
            .map(|(name, why)| format!("connector {name} {why}"))
            .collect();
        Some(each.join("; "))
    }

    /// Records `name`'s state; returns whether it went from running to not or back (so the
    /// watch logs those transitions only, not each new reason while it stays down).
    fn set(&self, name: &str, problem: Option<String>) -> bool {
        let mut problems = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let was_down = match &problem {
            Some(why) => problems.insert(name.to_owned(), why.clone()),
            None => problems.remove(name),
        }
        .is_some();
        was_down != problem.is_some()
    }
}

/// Why `name` does not run and what brings it back, from Connect's answer; `None` when it and
/// its tasks run.
async fn check(connect: &ConnectClient, name: &str) -> Option<String> {
    use keel_connectors::ConnectorState;
    match connect.status(name).await {
        Ok(status) if status.is_running() => None,
        Ok(status) if status.connector.state == ConnectorState::Paused => Some(format!(
            "is PAUSED: keel connectors resume {name} runs it again"
        )),
        Ok(status) => Some(match status.short_failure() {
            Some(failure) => format!(
                "is FAILED: {failure}; keel connectors status {name} shows why, keel connectors \
                 restart {name} runs it again once the cause is gone"
            ),
            None if status.tasks.is_empty() => format!(
                "has no task (connector {}): keel connectors status {name}",
                status.connector.state
            ),
            None => format!(
                "is not running ({}): keel connectors status {name}",
                status.summary()
            ),
        }),
        Err(ConnectError::NotFound(_)) => Some(
            "is not registered in Kafka Connect (deleted?): keel connectors register registers \
             it again"
                .to_owned(),
        ),
        Err(e) => Some(format!("cannot be checked: {e}")),
    }
}

/// The watch of `names` on Connect at `url`, every `interval` until `shutdown`, recording what
/// it finds in `problems` (a future for the caller to run); registers `keel_connector_running`
/// in `registry` at once (every series 1: `keel run` registered them and waited until they
/// ran). Errors: the gauge cannot be registered.
pub fn watch(
    url: &str,
    names: Vec<String>,
    interval: Duration,
    registry: &Registry,
    problems: ConnectorProblems,
    shutdown: CancellationToken,
) -> prometheus::Result<impl std::future::Future<Output = ()> + use<>> {
    let gauge = IntGaugeVec::new(
        Opts::new(
            "keel_connector_running",
            "1 while the Kafka Connect connector keel run registered for its roles runs with all its tasks, else 0",
        ),
        &["connector"],
    )?;
    registry.register(Box::new(gauge.clone()))?;
    for name in &names {
        gauge.with_label_values(&[name]).set(1);
    }
    let connect = ConnectClient::new(url);
    Ok(async move {
        // Per connector: whether the last check found it not running.
        let mut last_failed: BTreeMap<String, bool> = BTreeMap::new();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            for name in &names {
                let problem = check(&connect, name).await;
                let failed_before = last_failed
                    .insert(name.clone(), problem.is_some())
                    .unwrap_or(false);
                if problem.is_some() && !failed_before {
                    // Seen once: reported if the next check finds it so too.
                    continue;
                }
                gauge
                    .with_label_values(&[name])
                    .set(i64::from(problem.is_none()));
                if problems.set(name, problem.clone()) {
                    match problem {
                        Some(why) => tracing::error!(
                            connector = %name,
                            "connector {why}; Keel gets nothing from it until it runs again, \
                             and /ready answers 503"
                        ),
                        None => tracing::info!(connector = %name, "connector runs again"),
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_name_each_connector_and_clear_when_it_runs_again() {
        let problems = ConnectorProblems::default();
        assert_eq!(problems.describe(), None);
        assert!(problems.set("a-carts-cdc", Some("is not registered".into())));
        let detail = problems.describe().expect("a problem");
        assert_eq!(detail, "connector a-carts-cdc is not registered");
        // Still down for another reason: no transition, the latest reason is shown.
        assert!(!problems.set("a-carts-cdc", Some("is not running".into())));
        assert!(
            problems
                .describe()
                .is_some_and(|d| d.contains("a-carts-cdc is not running")),
            "{:?}",
            problems.describe()
        );
        assert!(problems.set("a-carts-cdc", None));
        assert_eq!(problems.describe(), None);
    }
}

//! A client for Kafka Connect's REST API.
//!
//! Registration is idempotent: [`ConnectClient::apply`] PUTs the whole configuration to
//! `/connectors/{name}/config`, which creates the connector or replaces its configuration.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde::Deserialize;

use crate::config::ConnectorConfig;
use crate::error::{Error, Result};

/// Talks to one Kafka Connect cluster (any worker's REST listener).
#[derive(Debug, Clone)]
pub struct ConnectClient {
    base: String,
    http: reqwest::Client,
}

/// The lifecycle state Connect reports for a connector or one of its tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ConnectorState {
    Unassigned,
    Running,
    Paused,
    Stopped,
    Failed,
    Restarting,
}

/// The answer of `GET /connectors/{name}/status`.
#[derive(Debug, Clone, Deserialize)]
pub struct ConnectorStatus {
    pub name: String,
    pub connector: WorkerState,
    #[serde(default)]
    pub tasks: Vec<TaskState>,
}

/// State of the connector instance on its worker.
#[derive(Debug, Clone, Deserialize)]
pub struct WorkerState {
    pub state: ConnectorState,
    pub worker_id: String,
    #[serde(default)]
    pub trace: Option<String>,
}

/// State of one task of a connector.
#[derive(Debug, Clone, Deserialize)]
pub struct TaskState {
    pub id: u32,
    pub state: ConnectorState,
    pub worker_id: String,
    #[serde(default)]
    pub trace: Option<String>,
}

impl ConnectorStatus {
    /// Running means the connector and every task run, and at least one task exists.
    pub fn is_running(&self) -> bool {
        self.connector.state == ConnectorState::Running
            && !self.tasks.is_empty()
            && self
                .tasks
                .iter()
                .all(|t| t.state == ConnectorState::Running)
    }

    /// The first failure trace, from the connector or any task.
    pub fn failure(&self) -> Option<&str> {
        if self.connector.state == ConnectorState::Failed {
            return Some(
                self.connector
                    .trace
                    .as_deref()
                    .unwrap_or("connector failed"),
            );
        }
        self.tasks
            .iter()
            .find(|t| t.state == ConnectorState::Failed)
            .map(|t| t.trace.as_deref().unwrap_or("task failed"))
    }

    fn summary(&self) -> String {
        let tasks: Vec<String> = self
            .tasks
            .iter()
            .map(|t| format!("task {} {:?}", t.id, t.state))
            .collect();
        format!("connector {:?}; {}", self.connector.state, tasks.join(", "))
    }
}

/// One installed connector plugin, from `GET /connector-plugins`.
#[derive(Debug, Clone, Deserialize)]
pub struct Plugin {
    pub class: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub version: Option<String>,
}

#[derive(Deserialize)]
struct ConnectErrorBody {
    message: String,
}

impl ConnectClient {
    /// A client for the worker at `base_url`, e.g. `http://127.0.0.1:8083`.
    pub fn new(base_url: impl Into<String>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        Self {
            base: base_url.into().trim_end_matches('/').to_owned(),
            http,
        }
    }

    /// The worker URL this client talks to.
    pub fn url(&self) -> &str {
        &self.base
    }

    async fn call(
        &self,
        operation: &'static str,
        connector: Option<&str>,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<reqwest::Response> {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(|source| Error::Unreachable {
            url: self.base.clone(),
            operation,
            source,
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        if status == StatusCode::NOT_FOUND
            && let Some(name) = connector
        {
            return Err(Error::NotFound(name.to_owned()));
        }
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<ConnectErrorBody>(&text)
            .map(|b| b.message)
            .unwrap_or(text);
        Err(Error::Rejected {
            operation,
            connector: connector.map(str::to_owned),
            status: status.as_u16(),
            message,
        })
    }

    /// Installed connector plugins.
    pub async fn plugins(&self) -> Result<Vec<Plugin>> {
        let resp = self
            .call(
                "list plugins",
                None,
                Method::GET,
                "/connector-plugins",
                None,
            )
            .await?;
        resp.json().await.map_err(|source| Error::Decode {
            operation: "list plugins",
            source,
        })
    }

    /// Names of the registered connectors.
    pub async fn connectors(&self) -> Result<Vec<String>> {
        let resp = self
            .call("list connectors", None, Method::GET, "/connectors", None)
            .await?;
        resp.json().await.map_err(|source| Error::Decode {
            operation: "list connectors",
            source,
        })
    }

    /// Create the connector, or replace its configuration if it exists.
    pub async fn apply(&self, config: &ConnectorConfig) -> Result<()> {
        let body = serde_json::to_value(config.settings()).unwrap_or_default();
        self.call(
            "apply config",
            Some(config.name()),
            Method::PUT,
            &format!("/connectors/{}/config", config.name()),
            Some(&body),
        )
        .await?;
        Ok(())
    }

    /// The connector's current status.
    pub async fn status(&self, name: &str) -> Result<ConnectorStatus> {
        let resp = self
            .call(
                "get status",
                Some(name),
                Method::GET,
                &format!("/connectors/{name}/status"),
                None,
            )
            .await?;
        resp.json().await.map_err(|source| Error::Decode {
            operation: "get status",
            source,
        })
    }

    /// Pause the connector (its tasks stop reading; offsets are kept).
    pub async fn pause(&self, name: &str) -> Result<()> {
        let path = format!("/connectors/{name}/pause");
        self.call("pause", Some(name), Method::PUT, &path, None)
            .await
            .map(drop)
    }

    /// Resume a paused connector.
    pub async fn resume(&self, name: &str) -> Result<()> {
        let path = format!("/connectors/{name}/resume");
        self.call("resume", Some(name), Method::PUT, &path, None)
            .await
            .map(drop)
    }

    /// Delete the connector. Deleting one that does not exist is not an error.
    pub async fn delete(&self, name: &str) -> Result<()> {
        let path = format!("/connectors/{name}");
        match self
            .call("delete", Some(name), Method::DELETE, &path, None)
            .await
        {
            Ok(_) | Err(Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Wait until the connector and all its tasks run; a failure ends the wait at once with
    /// the failure trace.
    pub async fn wait_running(&self, name: &str, timeout: Duration) -> Result<ConnectorStatus> {
        let start = Instant::now();
        let mut last = String::from("no status yet");
        loop {
            match self.status(name).await {
                Ok(status) if status.is_running() => return Ok(status),
                Ok(status) => {
                    if let Some(trace) = status.failure() {
                        return Err(Error::Rejected {
                            operation: "run",
                            connector: Some(name.to_owned()),
                            status: 200,
                            message: trace.to_owned(),
                        });
                    }
                    last = status.summary();
                }
                // Right after creation the status may not exist yet.
                Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
            if start.elapsed() >= timeout {
                return Err(Error::Timeout {
                    connector: name.to_owned(),
                    wanted: "RUNNING",
                    waited_ms: start.elapsed().as_millis(),
                    last,
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

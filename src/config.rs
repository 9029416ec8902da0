//! Keel's typed, layered configuration: built-in defaults (`config/default.toml`, embedded),
//! then an optional file, then `KEEL__SECTION__KEY` environment variables. Unknown keys are
//! errors, and validation reports every problem at once.

use std::collections::BTreeMap;
use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

const DEFAULTS: &str = include_str!("../config/default.toml");

/// Everything the `keel` binary needs to reach the stack.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeelConfig {
    pub kafka: KafkaConfig,
    /// The schema registry: URL, auto-register, compatibility level, subject prefix.
    pub registry: keel_avro::RegistryConfig,
    pub connect: UrlConfig,
    pub cassandra: CassandraConfig,
    pub mysql: UrlConfig,
    pub postgres: UrlConfig,
}

/// Kafka: where the brokers are, plus librdkafka settings passed through untouched.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub bootstrap_servers: String,
    #[serde(default)]
    pub client: BTreeMap<String, String>,
}

/// A server reached by one URL.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UrlConfig {
    pub url: String,
}

/// Cassandra contact points (`host:port`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CassandraConfig {
    pub nodes: Vec<String>,
}

impl KeelConfig {
    /// Defaults, then `file` (if given), then the environment; then validate.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        Self::from_figment(Self::figment(file))
    }

    fn figment(file: Option<&Path>) -> Figment {
        let mut fig = Figment::from(Toml::string(DEFAULTS));
        if let Some(path) = file {
            fig = fig.merge(Toml::file_exact(path));
        }
        fig.merge(Env::prefixed("KEEL__").split("__").lowercase(true))
    }

    fn from_figment(fig: Figment) -> anyhow::Result<Self> {
        let config: Self = fig
            .extract()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        let problems = config.problems();
        if !problems.is_empty() {
            anyhow::bail!("invalid configuration:\n  - {}", problems.join("\n  - "));
        }
        Ok(config)
    }

    /// Every validation problem, not just the first.
    fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.kafka.bootstrap_servers.trim().is_empty() {
            out.push("kafka.bootstrap_servers is empty".to_owned());
        }
        for (key, url, schemes) in [
            ("connect.url", &self.connect.url, &["http", "https"][..]),
            ("mysql.url", &self.mysql.url, &["mysql", "mariadb"][..]),
            (
                "postgres.url",
                &self.postgres.url,
                &["postgres", "postgresql"][..],
            ),
        ] {
            let scheme = url.split_once("://").map(|(s, _)| s);
            if !scheme.is_some_and(|s| schemes.contains(&s)) {
                out.push(format!(
                    "{key} = {url:?} must start with {}://",
                    schemes.join(":// or ")
                ));
            }
        }
        match self.registry.validate() {
            Ok(()) => {}
            Err(keel_avro::Error::Config { problems }) => {
                out.extend(problems.iter().map(|p| format!("registry.{p}")));
            }
            Err(other) => out.push(format!("registry: {other}")),
        }
        if self.cassandra.nodes.is_empty() {
            out.push("cassandra.nodes is empty".to_owned());
        }
        for node in &self.cassandra.nodes {
            let port_ok = node
                .rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok());
            if !port_ok {
                out.push(format!("cassandra.nodes entry {node:?} is not host:port"));
            }
        }
        out
    }
}

#[cfg(test)]
#[allow(
    clippy::result_large_err,
    reason = "figment::Jail closures must return figment::Error by value"
)]
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn defaults_point_at_the_local_stack() {
        Jail::expect_with(|_| {
            let c = KeelConfig::load(None).map_err(|e| e.to_string())?;
            assert_eq!(c.kafka.bootstrap_servers, "127.0.0.1:9092");
            assert_eq!(c.cassandra.nodes, vec!["127.0.0.1:9042".to_owned()]);
            Ok(())
        });
    }

    #[test]
    fn a_file_then_the_environment_override_the_defaults() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "keel.toml",
                "[kafka]\nbootstrap_servers = \"file:9092\"\n[kafka.client]\n\"acks\" = \"all\"\n",
            )?;
            jail.set_env("KEEL__CONNECT__URL", "http://env:8083");
            let c = KeelConfig::load(Some(Path::new("keel.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.kafka.bootstrap_servers, "file:9092");
            assert_eq!(c.kafka.client.get("acks").map(String::as_str), Some("all"));
            assert_eq!(c.connect.url, "http://env:8083");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_refused() {
        Jail::expect_with(|jail| {
            jail.create_file("keel.toml", "[kafka]\nbootstrap_server = \"typo:9092\"\n")?;
            let err = KeelConfig::load(Some(Path::new("keel.toml")))
                .expect_err("a misspelt key must not be ignored")
                .to_string();
            assert!(err.contains("bootstrap_server"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn validation_reports_every_problem_at_once() {
        Jail::expect_with(|jail| {
            jail.set_env("KEEL__REGISTRY__URL", "ftp://x");
            jail.set_env("KEEL__POSTGRES__URL", "localhost:5432");
            jail.set_env("KEEL__KAFKA__BOOTSTRAP_SERVERS", " ");
            let err = KeelConfig::load(None)
                .expect_err("three problems")
                .to_string();
            assert!(err.contains("registry.url"), "{err}");
            assert!(err.contains("postgres.url"), "{err}");
            assert!(err.contains("kafka.bootstrap_servers"), "{err}");
            Ok(())
        });
    }
}

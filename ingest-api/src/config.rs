//! [`ApiConfig`]: where the API listens and how much it accepts.

use std::net::SocketAddr;

use serde::Deserialize;

/// The `api` section of Keel's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address to listen on; port 0 picks a free port (tests).
    pub listen: SocketAddr,
    /// The largest request body accepted, in bytes; larger → 413.
    pub max_body_bytes: usize,
    /// Bearer tokens accepted on writes (`POST`). Empty: authentication is off.
    pub auth_tokens: Vec<String>,
    /// How long a command may take to be acknowledged by Kafka (all in-sync replicas), in
    /// milliseconds; past it the request answers 503 with `Retry-After`.
    pub produce_timeout_ms: u64,
    /// Order requests handled at once; beyond it → 503 with `Retry-After`.
    pub max_in_flight: usize,
    /// Where place and cancel commands go.
    pub orders_topic: String,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8088)),
            max_body_bytes: 16 * 1024,
            auth_tokens: Vec::new(),
            produce_timeout_ms: 5_000,
            max_in_flight: 256,
            orders_topic: "orders.commands.v1".to_owned(),
        }
    }
}

impl ApiConfig {
    /// Every problem at once, or `Ok`.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if self.max_body_bytes == 0 {
            problems.push("max_body_bytes must be greater than 0".to_owned());
        }
        if self.produce_timeout_ms == 0 {
            problems.push("produce_timeout_ms must be greater than 0".to_owned());
        }
        if self.max_in_flight == 0 {
            problems.push("max_in_flight must be greater than 0".to_owned());
        }
        if self.orders_topic.trim().is_empty() {
            problems.push("orders_topic must not be empty".to_owned());
        }
        if self.auth_tokens.iter().any(|t| t.trim().is_empty()) {
            problems.push("auth_tokens must not contain an empty token".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_values() {
        let c = ApiConfig::default();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8088");
        assert_eq!(c.max_body_bytes, 16_384);
        assert!(c.auth_tokens.is_empty());
        assert_eq!(c.produce_timeout_ms, 5_000);
        assert_eq!(c.max_in_flight, 256);
        assert_eq!(c.orders_topic, "orders.commands.v1");
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn unknown_keys_are_refused_and_missing_keys_default() {
        let err = serde_json::from_str::<ApiConfig>(r#"{"listen":"0.0.0.0:1","max_body":1}"#)
            .expect_err("unknown key");
        assert!(
            err.to_string().contains("unknown field `max_body`"),
            "{err}"
        );
        let c: ApiConfig = serde_json::from_str(r#"{"max_in_flight":3}"#).expect("parse");
        assert_eq!(c.max_in_flight, 3);
        assert_eq!(c.produce_timeout_ms, 5_000);
    }

    #[test]
    fn validation_reports_every_problem() {
        let c = ApiConfig {
            max_body_bytes: 0,
            max_in_flight: 0,
            auth_tokens: vec![" ".into()],
            ..ApiConfig::default()
        };
        let problems = c.validate().expect_err("invalid");
        assert_eq!(problems.len(), 3, "{problems:?}");
    }
}

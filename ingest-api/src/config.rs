//! [`ApiConfig`]: where the API listens and how much it accepts.

use std::fmt;
use std::net::SocketAddr;

use serde::Deserialize;

/// The longest `idempotency_retention_hours` accepted: a year.
const MAX_IDEMPOTENCY_RETENTION_HOURS: u64 = 24 * 365;
/// The longest `idempotency_purge_interval_s` accepted: a day.
const MAX_IDEMPOTENCY_PURGE_INTERVAL_S: u64 = 86_400;

/// The `api` section of Keel's configuration. `Debug` shows the secrets as `<redacted>`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
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
    /// Where refund commands and verified PSP callbacks go.
    pub payments_topic: String,
    /// Where adjust, reserve and release commands go (key: SKU).
    pub inventory_topic: String,
    /// How long a read of the inventory store (Cassandra) may take, in milliseconds; past it
    /// the request answers 503 with `Retry-After`.
    pub inventory_read_timeout_ms: u64,
    /// The HMAC-SHA256 secret PSP callbacks are signed with (`Keel-Psp-Signature`); the
    /// default is the PSP mock's default secret.
    pub psp_callback_secret: String,
    /// How far a callback's `Keel-Psp-Timestamp` may be from now, in seconds, in either
    /// direction (older: a replay; newer: a forged or skewed clock); beyond it → 401.
    pub psp_callback_tolerance_s: u64,
    /// How long an `Idempotency-Key` is remembered, in hours (1 to 8760), one window for
    /// every route that takes one (`POST /orders`, `POST /payments`,
    /// `POST /payments/{id}/refund`): within it a retry gets the first answer; after it the
    /// key's row is purged and the key is new again ([`crate::idempotency::retention`]).
    pub idempotency_retention_hours: u64,
    /// How often the API purges expired `Idempotency-Key` rows, in seconds (1 to 86400).
    pub idempotency_purge_interval_s: u64,
}

impl fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiConfig")
            .field("listen", &self.listen)
            .field("max_body_bytes", &self.max_body_bytes)
            .field(
                "auth_tokens",
                &format_args!("<{} redacted>", self.auth_tokens.len()),
            )
            .field("produce_timeout_ms", &self.produce_timeout_ms)
            .field("max_in_flight", &self.max_in_flight)
            .field("orders_topic", &self.orders_topic)
            .field("payments_topic", &self.payments_topic)
            .field("inventory_topic", &self.inventory_topic)
            .field("inventory_read_timeout_ms", &self.inventory_read_timeout_ms)
            .field("psp_callback_secret", &format_args!("<redacted>"))
            .field("psp_callback_tolerance_s", &self.psp_callback_tolerance_s)
            .field(
                "idempotency_retention_hours",
                &self.idempotency_retention_hours,
            )
            .field(
                "idempotency_purge_interval_s",
                &self.idempotency_purge_interval_s,
            )
            .finish()
    }
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
            payments_topic: keel_processors::payment::COMMANDS_TOPIC.to_owned(),
            inventory_topic: keel_processors::topics::INVENTORY_COMMANDS.to_owned(),
            inventory_read_timeout_ms: 2_000,
            psp_callback_secret: keel_processors::psp_mock::PspMockConfig::default()
                .callback_secret,
            psp_callback_tolerance_s: 300,
            idempotency_retention_hours: 24,
            idempotency_purge_interval_s: 300,
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
        if self.payments_topic.trim().is_empty() {
            problems.push("payments_topic must not be empty".to_owned());
        }
        if self.inventory_topic.trim().is_empty() {
            problems.push("inventory_topic must not be empty".to_owned());
        }
        if self.inventory_read_timeout_ms == 0 {
            problems.push("inventory_read_timeout_ms must be greater than 0".to_owned());
        }
        if self.psp_callback_secret.is_empty() {
            problems.push("psp_callback_secret must not be empty".to_owned());
        }
        if self.psp_callback_tolerance_s == 0 {
            problems.push("psp_callback_tolerance_s must be greater than 0".to_owned());
        }
        if self.auth_tokens.iter().any(|t| t.trim().is_empty()) {
            problems.push("auth_tokens must not contain an empty token".to_owned());
        }
        if !(1..=MAX_IDEMPOTENCY_RETENTION_HOURS).contains(&self.idempotency_retention_hours) {
            problems.push(format!(
                "idempotency_retention_hours must be between 1 and \
                 {MAX_IDEMPOTENCY_RETENTION_HOURS} (a year), got {}",
                self.idempotency_retention_hours
            ));
        } else if self.idempotency_retention_hours.saturating_mul(3_600_000)
            <= self.produce_timeout_ms.saturating_add(30_000)
        {
            problems.push(
                "idempotency_retention_hours must be longer than produce_timeout_ms + 30 s \
                 (how long a request may hold its key)"
                    .to_owned(),
            );
        }
        if !(1..=MAX_IDEMPOTENCY_PURGE_INTERVAL_S).contains(&self.idempotency_purge_interval_s) {
            problems.push(format!(
                "idempotency_purge_interval_s must be between 1 and \
                 {MAX_IDEMPOTENCY_PURGE_INTERVAL_S} (a day), got {}",
                self.idempotency_purge_interval_s
            ));
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
        assert_eq!(c.payments_topic, "payments.commands.v1");
        assert_eq!(c.inventory_topic, "inventory.commands.v1");
        assert_eq!(c.inventory_read_timeout_ms, 2_000);
        assert_eq!(c.psp_callback_secret, "keel-psp-dev-secret");
        assert_eq!(c.psp_callback_tolerance_s, 300);
        assert_eq!(c.idempotency_retention_hours, 24);
        assert_eq!(c.idempotency_purge_interval_s, 300);
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

    #[test]
    fn idempotency_retention_and_purge_interval_are_bounded() {
        for (hours, interval) in [(0, 300), (24 * 365 + 1, 300), (24, 0), (24, 86_401)] {
            let c = ApiConfig {
                idempotency_retention_hours: hours,
                idempotency_purge_interval_s: interval,
                ..ApiConfig::default()
            };
            let problems = c.validate().expect_err("invalid");
            assert_eq!(problems.len(), 1, "{hours} h, {interval} s: {problems:?}");
            assert!(problems[0].starts_with("idempotency_"), "{problems:?}");
        }
        let c = ApiConfig {
            idempotency_retention_hours: 1,
            produce_timeout_ms: 3_600_000,
            ..ApiConfig::default()
        };
        let problems = c.validate().expect_err("a request may outlive its key");
        assert!(problems[0].contains("produce_timeout_ms"), "{problems:?}");
        let c = ApiConfig {
            idempotency_retention_hours: 24 * 365,
            idempotency_purge_interval_s: 86_400,
            ..ApiConfig::default()
        };
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn debug_does_not_show_the_secrets() {
        let c = ApiConfig {
            auth_tokens: vec!["tok-visible?".into()],
            psp_callback_secret: "psp-visible?".into(),
            ..ApiConfig::default()
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("visible?"), "{shown}");
        assert!(shown.contains("psp_callback_tolerance_s: 300"), "{shown}");
    }
}

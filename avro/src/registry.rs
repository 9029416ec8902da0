//! Subject setup and the deployment gate: what `keel schemas register` and `keel schemas check`
//! do. [`register_all`] sets the registry's GLOBAL compatibility level (`PUT /config`, so
//! subjects that Connect or a foreign producer create on first write are BACKWARD too), then
//! registers every contract's schema under `<prefix><topic>-value` after setting the subject's
//! own level; [`check_all`] judges every local schema against the latest registered version
//! and reports drift (the latest version is a newer schema that is not Keel's), and
//! [`render_check_table`] prints the verdicts.
//!
//! The registry calls go through `schema_registry_converter`'s Confluent API client; only
//! `GET`/`PUT /config[/{subject}]`, which the converter lacks, are plain HTTP calls. Apicurio
//! answers `GET /config/{subject}` with `NONE` for a subject without a level of its own; the
//! level the registry enforces is `GET /config/{subject}?defaultToGlobal=true`
//! ([`SchemaRegistry::effective_compatibility`]).

use std::error::Error as StdError;
use std::fmt::{self, Write as _};

use apache_avro::Schema;
use apache_avro::schema_compatibility::SchemaCompatibility;
use schema_registry_converter::async_impl::schema_registry::{
    SrSettings, get_schema_by_subject_and_version, is_compatible_schema, perform_sr_call,
    post_schema,
};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{
    RawError, SchemaType, SrCall, SuppliedSchema,
};

use crate::config::{CompatibilityLevel, RegistryConfig};
use crate::contract::{CONTRACTS, subject_for_topic};
use crate::error::{Error, Result};

/// Confluent error codes the registry answers with.
const SUBJECT_NOT_FOUND: u32 = 40401;
const VERSION_NOT_FOUND: u32 = 40402;
const SCHEMA_NOT_FOUND: u32 = 40403;
const CONFLICT: u32 = 409;

/// A schema as registered under a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectVersion {
    pub subject: String,
    /// The registry-wide schema id that framed payloads carry.
    pub id: u32,
    /// The subject's version number (`None` if the registry did not say).
    pub version: Option<u32>,
}

/// The latest schema registered under a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatestSchema {
    pub id: u32,
    pub version: Option<u32>,
    pub schema: String,
}

/// One line of `keel schemas register`'s output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub topic: &'static str,
    pub subject: String,
    pub schema_id: u32,
    pub version: Option<u32>,
    pub compatibility: CompatibilityLevel,
}

/// What the registry thinks of a local schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It can be registered as the next version (or already is).
    Compatible,
    /// Registering it would be refused; the reason says which field and why.
    Incompatible(String),
    /// Nothing is registered under the subject yet; the schema will be its first version.
    NewSubject,
}

impl Verdict {
    pub fn is_incompatible(&self) -> bool {
        matches!(self, Self::Incompatible(_))
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Compatible => f.write_str("compatible"),
            Self::Incompatible(reason) => write!(f, "INCOMPATIBLE: {reason}"),
            Self::NewSubject => f.write_str("new subject"),
        }
    }
}

/// One line of `keel schemas check`'s table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRow {
    pub topic: &'static str,
    pub subject: String,
    /// The subject's version that already holds exactly the local schema, if any.
    pub local_version: Option<u32>,
    /// The subject's latest version, if it has one.
    pub latest_version: Option<u32>,
    pub verdict: Verdict,
    /// `Some(what differs)` when the subject's latest version is a newer schema than Keel's
    /// (someone else registered it): producers may be writing fields Keel does not know.
    pub drift: Option<String>,
}

/// The verdict on one schema text, before it is tied to a contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectCheck {
    pub local_version: Option<u32>,
    pub latest_version: Option<u32>,
    pub verdict: Verdict,
    /// See [`CheckRow::drift`].
    pub drift: Option<String>,
}

/// Register every contract's schema (`keel schemas register`): for each topic, set the
/// subject's compatibility to the configured level, then register the `.avsc` (a no-op that
/// returns the existing id when it is already the registered schema). Stops at the first
/// refusal with [`Error::Incompatible`], which names the subject and the reason.
pub async fn register_all(config: &RegistryConfig) -> Result<Vec<Registered>> {
    register_all_topics(config, "").await
}

/// [`register_all`] for topics named `<topic_prefix><topic>` (`[topics].prefix`: the subjects
/// an isolated run's producers write to are `<subject_prefix><topic_prefix><topic>-value`).
/// Sets the registry's global level to the configured one first.
pub async fn register_all_topics(
    config: &RegistryConfig,
    topic_prefix: &str,
) -> Result<Vec<Registered>> {
    let registry = SchemaRegistry::new(config)?;
    let level = config.compatibility;
    with_retries(REGISTER_BACKOFF, async || {
        registry.set_global_compatibility(level).await
    })
    .await?;
    let mut registered = Vec::with_capacity(CONTRACTS.len());
    for contract in CONTRACTS {
        contract.schema()?;
        let subject = registry.subject(&format!("{topic_prefix}{}", contract.topic));
        with_retries(REGISTER_BACKOFF, async || {
            registry.set_compatibility(&subject, level).await
        })
        .await?;
        let version = with_retries(REGISTER_BACKOFF, async || {
            registry.register(&subject, contract.schema_source).await
        })
        .await?;
        tracing::info!(
            subject = %subject,
            schema_id = version.id,
            version = ?version.version,
            compatibility = %config.compatibility,
            "schema registered"
        );
        registered.push(Registered {
            topic: contract.topic,
            subject,
            schema_id: version.id,
            version: version.version,
            compatibility: config.compatibility,
        });
    }
    Ok(registered)
}

/// How many times [`register_all_topics`] makes a registry call that failed for the registry
/// (unreachable, no answer within `[registry].timeout_ms`, HTTP 5xx), and the first wait
/// between tries (doubled each time). A registry that stalled for over 10 s once failed a
/// `keel schemas register` (and with it `make demo`); every call it makes is idempotent (a PUT
/// of a level, a POST of a schema the registry answers with the id it already has).
const REGISTER_ATTEMPTS: u32 = 4;
const REGISTER_BACKOFF: std::time::Duration = std::time::Duration::from_millis(500);

/// `call`, made again after a failure of the registry ([`crate::Fault::Dependency`]) up to
/// [`REGISTER_ATTEMPTS`] times in all, waiting `backoff`, then twice that, and so on; any other
/// error, or the last attempt's, is returned as it is.
async fn with_retries<T>(
    backoff: std::time::Duration,
    mut call: impl AsyncFnMut() -> Result<T>,
) -> Result<T> {
    let mut wait = backoff;
    let mut attempt = 1;
    loop {
        match call().await {
            Err(e) if e.fault() == crate::Fault::Dependency && attempt < REGISTER_ATTEMPTS => {
                tracing::warn!(error = %e, attempt, wait_ms = wait.as_millis() as u64, "schema registry call failed; trying again");
                tokio::time::sleep(wait).await;
                wait *= 2;
                attempt += 1;
            }
            done => return done,
        }
    }
}

/// Judge every local schema against its subject's latest version (`keel schemas check`).
/// Only registry failures are errors; an incompatible schema is a row with
/// [`Verdict::Incompatible`], so the caller can print the whole table and then fail.
pub async fn check_all(config: &RegistryConfig) -> Result<Vec<CheckRow>> {
    check_all_topics(config, "").await
}

/// [`check_all`] for topics named `<topic_prefix><topic>` (see [`register_all_topics`]).
pub async fn check_all_topics(
    config: &RegistryConfig,
    topic_prefix: &str,
) -> Result<Vec<CheckRow>> {
    let registry = SchemaRegistry::new(config)?;
    let mut rows = Vec::with_capacity(CONTRACTS.len());
    for contract in CONTRACTS {
        contract.schema()?;
        let subject = registry.subject(&format!("{topic_prefix}{}", contract.topic));
        let check = registry.check(&subject, contract.schema_source).await?;
        rows.push(CheckRow {
            topic: contract.topic,
            subject,
            local_version: check.local_version,
            latest_version: check.latest_version,
            verdict: check.verdict,
            drift: check.drift,
        });
    }
    Ok(rows)
}

/// Whether any row would be refused: the gate's exit status.
pub fn any_incompatible(rows: &[CheckRow]) -> bool {
    rows.iter().any(|row| row.verdict.is_incompatible())
}

/// Whether any subject drifted from Keel's schema (see [`CheckRow::drift`]): also a failed gate.
pub fn any_drift(rows: &[CheckRow]) -> bool {
    rows.iter().any(|row| row.drift.is_some())
}

/// The check as a table: subject, local version, latest version, verdict.
pub fn render_check_table(rows: &[CheckRow]) -> String {
    let version = |v: Option<u32>, none: &str| v.map_or_else(|| none.to_owned(), |v| v.to_string());
    let cells: Vec<[String; 4]> = rows
        .iter()
        .map(|row| {
            [
                row.subject.clone(),
                version(row.local_version, "unregistered"),
                version(row.latest_version, "-"),
                match &row.drift {
                    Some(drift) => format!("{}; DRIFT: {drift}", row.verdict),
                    None => row.verdict.to_string(),
                },
            ]
        })
        .collect();
    render_table(["SUBJECT", "LOCAL VERSION", "LATEST", "VERDICT"], &cells)
}

/// `keel schemas register`'s output as a table: subject, id, version, level.
pub fn render_registered_table(rows: &[Registered]) -> String {
    let cells: Vec<[String; 4]> = rows
        .iter()
        .map(|row| {
            [
                row.subject.clone(),
                row.schema_id.to_string(),
                row.version
                    .map_or_else(|| "?".to_owned(), |v| v.to_string()),
                row.compatibility.to_string(),
            ]
        })
        .collect();
    render_table(["SUBJECT", "SCHEMA ID", "VERSION", "COMPATIBILITY"], &cells)
}

fn render_table(header: [&str; 4], rows: &[[String; 4]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: [&str; 4]| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<width$}  ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header);
    for row in rows {
        line([&row[0], &row[1], &row[2], &row[3]]);
    }
    out
}

/// The registry's subject and compatibility API, for one configuration.
#[derive(Debug, Clone)]
pub struct SchemaRegistry {
    config: RegistryConfig,
    settings: SrSettings,
    http: reqwest::Client,
}

impl SchemaRegistry {
    pub fn new(config: &RegistryConfig) -> Result<Self> {
        let settings = config.sr_settings()?;
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_millis(config.timeout_ms))
            .build()
            .map_err(|e| Error::Config {
                problems: vec![format!("cannot build the registry HTTP client: {e}")],
            })?;
        Ok(Self {
            config: config.clone(),
            settings,
            http,
        })
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    /// The subject of a topic's values under this configuration's prefix.
    pub fn subject(&self, topic: &str) -> String {
        subject_for_topic(&self.config.subject_prefix, topic)
    }

    /// `PUT /config/{subject}`: the level every later registration under it is judged by.
    pub async fn set_compatibility(&self, subject: &str, level: CompatibilityLevel) -> Result<()> {
        let url = format!("{}/config/{subject}", self.config.url);
        self.put_config(&url, subject, "set compatibility", level)
            .await
    }

    /// `PUT /config`: the registry's global level, which every subject without a level of its
    /// own is judged by — including subjects a producer or Connect creates on first write.
    pub async fn set_global_compatibility(&self, level: CompatibilityLevel) -> Result<()> {
        self.put_config(
            &format!("{}/config", self.config.url),
            "(global)",
            "set global compatibility",
            level,
        )
        .await
    }

    /// `GET /config`: the registry's global level.
    pub async fn global_compatibility(&self) -> Result<CompatibilityLevel> {
        let url = format!("{}/config", self.config.url);
        self.get_config(&url, "(global)", "get global compatibility")
            .await?
            .ok_or_else(|| Error::Registry {
                subject: "(global)".to_owned(),
                operation: "get global compatibility",
                detail: "HTTP 404".to_owned(),
                retriable: false,
            })
    }

    /// `GET /config/{subject}?defaultToGlobal=true`: the level the registry enforces for the
    /// subject (its own, else the global one), `None` if the registry has neither.
    pub async fn effective_compatibility(
        &self,
        subject: &str,
    ) -> Result<Option<CompatibilityLevel>> {
        let url = format!("{}/config/{subject}?defaultToGlobal=true", self.config.url);
        self.get_config(&url, subject, "get effective compatibility")
            .await
    }

    async fn put_config(
        &self,
        url: &str,
        subject: &str,
        operation: &'static str,
        level: CompatibilityLevel,
    ) -> Result<()> {
        let failed = |detail: String, retriable: bool| Error::Registry {
            subject: subject.to_owned(),
            operation,
            detail,
            retriable,
        };
        let response = self
            .http
            .put(url)
            .header("Content-Type", "application/vnd.schemaregistry.v1+json")
            .json(&serde_json::json!({ "compatibility": level.as_str() }))
            .send()
            .await
            .map_err(|e| failed(error_chain(&e), true))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            let body = response.text().await.unwrap_or_default();
            Err(failed(
                format!("HTTP {status}: {body}"),
                status.is_server_error(),
            ))
        }
    }

    async fn get_config(
        &self,
        url: &str,
        subject: &str,
        operation: &'static str,
    ) -> Result<Option<CompatibilityLevel>> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Config {
            compatibility_level: CompatibilityLevel,
        }
        let failed = |detail: String, retriable: bool| Error::Registry {
            subject: subject.to_owned(),
            operation,
            detail,
            retriable,
        };
        let response = self
            .http
            .get(url)
            .header("Accept", "application/vnd.schemaregistry.v1+json")
            .send()
            .await
            .map_err(|e| failed(error_chain(&e), true))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(failed(
                format!("HTTP {status}: {body}"),
                status.is_server_error(),
            ));
        }
        let config: Config = response
            .json()
            .await
            .map_err(|e| failed(error_chain(&e), false))?;
        Ok(Some(config.compatibility_level))
    }

    /// `GET /config/{subject}`: the subject's own level, or `None` if it has none (then the
    /// registry's global default applies). Apicurio answers `NONE` rather than nothing for a
    /// subject without a level of its own; [`Self::effective_compatibility`] is what it enforces.
    pub async fn compatibility(&self, subject: &str) -> Result<Option<CompatibilityLevel>> {
        let url = format!("{}/config/{subject}", self.config.url);
        self.get_config(&url, subject, "get compatibility").await
    }

    /// Register `schema` (Avro JSON) under `subject`. An incompatible schema is refused with
    /// [`Error::Incompatible`] saying why, in the registry's words and field by field.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<SubjectVersion> {
        match post_schema(&self.settings, subject.to_owned(), supplied(schema)).await {
            Ok(registered) => {
                // Apicurio answers a registration with the id only; ask for the version.
                let version = match self.lookup(subject, schema).await? {
                    Some(found) => found.version,
                    None => registered.version,
                };
                Ok(SubjectVersion {
                    subject: subject.to_owned(),
                    id: registered.id,
                    version,
                })
            }
            Err(e) if raw_error_code(&e) == Some(CONFLICT) => {
                let registry_says =
                    raw_error(&e).map_or_else(|| describe(&e), |raw| raw.message.clone());
                let local = match self.latest(subject).await {
                    Ok(Some(latest)) => explain_incompatibility(
                        &latest.schema,
                        latest.version,
                        schema,
                        self.config.compatibility,
                    ),
                    _ => None,
                };
                let reason = match local {
                    Some(local) => format!("{local} (registry: {registry_says})"),
                    None => registry_says,
                };
                Err(Error::Incompatible {
                    subject: subject.to_owned(),
                    reason,
                })
            }
            Err(e) => Err(registry_error(subject, "register schema", &e)),
        }
    }

    /// The version of `subject` that holds exactly `schema`, if any.
    pub async fn lookup(&self, subject: &str, schema: &str) -> Result<Option<SubjectVersion>> {
        let body = serde_json::json!({ "schema": schema, "schemaType": "AVRO" }).to_string();
        match perform_sr_call(&self.settings, SrCall::PostForVersion(subject, &body)).await {
            Ok(raw) => match raw.id {
                Some(id) => Ok(Some(SubjectVersion {
                    subject: subject.to_owned(),
                    id,
                    version: raw.version,
                })),
                None => Err(Error::Registry {
                    subject: subject.to_owned(),
                    operation: "look up schema",
                    detail: "the registry's answer has no schema id".to_owned(),
                    retriable: false,
                }),
            },
            Err(e)
                if matches!(
                    raw_error_code(&e),
                    Some(SUBJECT_NOT_FOUND | SCHEMA_NOT_FOUND)
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(registry_error(subject, "look up schema", &e)),
        }
    }

    /// The latest schema under `subject`, or `None` if the subject has none.
    pub async fn latest(&self, subject: &str) -> Result<Option<LatestSchema>> {
        match get_schema_by_subject_and_version(&self.settings, subject, None).await {
            Ok(registered) => Ok(Some(LatestSchema {
                id: registered.id,
                version: registered.version,
                schema: registered.schema,
            })),
            Err(e)
                if matches!(
                    raw_error_code(&e),
                    Some(SUBJECT_NOT_FOUND | VERSION_NOT_FOUND)
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(registry_error(subject, "get latest schema", &e)),
        }
    }

    /// Judge `schema` against the latest version under `subject`. The registry answers for the
    /// subject's own level; the configured level is also checked locally, so a subject whose
    /// level was never set (the registry's default may be NONE) still gets a real verdict.
    pub async fn check(&self, subject: &str, schema: &str) -> Result<SubjectCheck> {
        let Some(latest) = self.latest(subject).await? else {
            return Ok(SubjectCheck {
                local_version: None,
                latest_version: None,
                verdict: Verdict::NewSubject,
                drift: None,
            });
        };
        let local_version = self
            .lookup(subject, schema)
            .await?
            .and_then(|found| found.version);
        let registry_accepts =
            is_compatible_schema(&self.settings, subject.to_owned(), supplied(schema))
                .await
                .map_err(|e| registry_error(subject, "check compatibility", &e))?;
        let local = explain_incompatibility(
            &latest.schema,
            latest.version,
            schema,
            self.config.compatibility,
        );
        let verdict = match (registry_accepts, local) {
            (_, Some(reason)) => Verdict::Incompatible(reason),
            (true, None) => Verdict::Compatible,
            (false, None) => Verdict::Incompatible(format!(
                "the registry refuses it against {} under the subject's compatibility level",
                version_name(latest.version)
            )),
        };
        let drift = match (local_version, latest.version) {
            (Some(keel), Some(newest)) if newest > keel => {
                Some(describe_drift(schema, keel, &latest.schema, newest))
            }
            _ => None,
        };
        Ok(SubjectCheck {
            local_version,
            latest_version: latest.version,
            verdict,
            drift,
        })
    }
}

/// What a newer registered version changes against Keel's schema (version `keel`), by field.
fn describe_drift(local: &str, keel: u32, latest: &str, newest: u32) -> String {
    let fields = |text: &str| -> Vec<(String, String)> {
        serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|v| v["fields"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|f| {
                (
                    f["name"].as_str().unwrap_or_default().to_owned(),
                    f["type"].to_string(),
                )
            })
            .collect()
    };
    let (ours, theirs) = (fields(local), fields(latest));
    let mut changes = Vec::new();
    for (name, ty) in &theirs {
        match ours.iter().find(|(n, _)| n == name) {
            None => changes.push(format!("adds field '{name}'")),
            Some((_, our_ty)) if our_ty != ty => {
                changes.push(format!("changes the type of '{name}'"));
            }
            Some(_) => {}
        }
    }
    for (name, _) in &ours {
        if !theirs.iter().any(|(n, _)| n == name) {
            changes.push(format!("removes field '{name}'"));
        }
    }
    if changes.is_empty() {
        changes.push("differs in names, docs or defaults".to_owned());
    }
    format!(
        "latest version {newest} is not Keel's schema (version {keel}), registered by another \
         producer: {}",
        changes.join(", ")
    )
}

fn supplied(schema: &str) -> SuppliedSchema {
    SuppliedSchema::new(None, SchemaType::Avro, schema.to_owned())
}

fn version_name(version: Option<u32>) -> String {
    version.map_or_else(
        || "the latest version".to_owned(),
        |v| format!("version {v}"),
    )
}

/// Why `new` may not follow `old` under `level`, field by field, or `None` if it may.
fn explain_incompatibility(
    old: &str,
    old_version: Option<u32>,
    new: &str,
    level: CompatibilityLevel,
) -> Option<String> {
    let old_schema = match Schema::parse_str(old) {
        Ok(schema) => schema,
        Err(e) => return Some(format!("the registered schema does not parse: {e}")),
    };
    let new_schema = match Schema::parse_str(new) {
        Ok(schema) => schema,
        Err(e) => return Some(format!("the local schema does not parse: {e}")),
    };
    let old_name = version_name(old_version);
    let mut reasons = Vec::new();
    if level.new_reads_old()
        && let Err(e) = SchemaCompatibility::can_read(&old_schema, &new_schema)
    {
        reasons.push(format!(
            "{level}: the new schema cannot read data written with {old_name}: {}",
            error_chain(&e)
        ));
    }
    if level.old_reads_new()
        && let Err(e) = SchemaCompatibility::can_read(&new_schema, &old_schema)
    {
        reasons.push(format!(
            "{level}: {old_name} cannot read data written with the new schema: {}",
            error_chain(&e)
        ));
    }
    (!reasons.is_empty()).then(|| reasons.join("; "))
}

/// The registry's error body, when the converter's error came from one.
pub(crate) fn raw_error(e: &SRCError) -> Option<&RawError> {
    e.source()
        .and_then(|source| source.downcast_ref::<RawError>())
}

pub(crate) fn raw_error_code(e: &SRCError) -> Option<u32> {
    raw_error(e).map(|raw| raw.error_code)
}

/// The converter's error in one line, without its cache bookkeeping.
pub(crate) fn describe(e: &SRCError) -> String {
    match &e.cause {
        Some(cause) => format!("{}: {cause}", e.error),
        None => e.error.clone(),
    }
}

pub(crate) fn registry_error(subject: &str, operation: &'static str, e: &SRCError) -> Error {
    Error::Registry {
        subject: subject.to_owned(),
        operation,
        detail: describe(e),
        retriable: e.retriable,
    }
}

/// An error and its sources, joined with ": ".
pub(crate) fn error_chain(e: &dyn StdError) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block_on;

    fn registry_down(retriable: bool) -> Error {
        Error::Registry {
            subject: "s".to_owned(),
            operation: "set compatibility",
            detail: "timed out".to_owned(),
            retriable,
        }
    }

    #[test]
    fn a_registry_failure_is_tried_again_and_anything_else_is_not() {
        let calls = std::cell::Cell::new(0);
        let got = block_on(with_retries(std::time::Duration::ZERO, async || {
            calls.set(calls.get() + 1);
            if calls.get() < 3 {
                Err(registry_down(true))
            } else {
                Ok(calls.get())
            }
        }));
        assert_eq!(got.expect("the third call answered"), 3);

        calls.set(0);
        let got: Result<()> = block_on(with_retries(std::time::Duration::ZERO, async || {
            calls.set(calls.get() + 1);
            Err(registry_down(true))
        }));
        assert_eq!(
            got.expect_err("never answered").fault(),
            crate::Fault::Dependency
        );
        assert_eq!(calls.get(), REGISTER_ATTEMPTS);

        calls.set(0);
        let got: Result<()> = block_on(with_retries(std::time::Duration::ZERO, async || {
            calls.set(calls.get() + 1);
            Err(registry_down(false))
        }));
        assert_eq!(got.expect_err("refused").fault(), crate::Fault::Bug);
        assert_eq!(calls.get(), 1, "a refusal is not asked again");
    }

    /// A registry on 127.0.0.1 that reads the first `stalls` requests and never answers them
    /// (it closes the connection after 3 s), then answers every request `200 {"id":7}`: enough
    /// for a PUT of a level, a registration and its look-up. Returns its URL and the requests
    /// it got.
    fn stalling_registry(
        stalls: usize,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{BufRead as _, Read as _, Write as _};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let mut reader = std::io::BufReader::new(stream.try_clone().expect("clone"));
                    loop {
                        let mut length = 0;
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        while line != "\r\n" {
                            if let Some(v) =
                                line.to_ascii_lowercase().strip_prefix("content-length:")
                            {
                                length = v.trim().parse().unwrap_or(0);
                            }
                            line.clear();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                        }
                        let mut body = vec![0; length];
                        let _ = reader.read_exact(&mut body);
                        if seen.fetch_add(1, Ordering::SeqCst) < stalls {
                            std::thread::sleep(std::time::Duration::from_secs(3));
                            return;
                        }
                        let answer = r#"{"id":7}"#;
                        let _ = write!(
                            stream,
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                             content-length: {}\r\n\r\n{answer}",
                            answer.len()
                        );
                    }
                });
            }
        });
        (url, requests)
    }

    #[test]
    fn a_registry_that_stalls_on_one_call_does_not_fail_the_registration() {
        let (url, requests) = stalling_registry(1);
        let config = RegistryConfig {
            timeout_ms: 300,
            ..RegistryConfig::with_url(url)
        };
        let registered = block_on(register_all_topics(&config, "stall.")).expect("registered");
        assert_eq!(registered.len(), CONTRACTS.len());
        assert!(registered.iter().all(|r| r.schema_id == 7));
        // The stalled PUT of the global level, its retry, then three calls per contract.
        assert_eq!(
            requests.load(std::sync::atomic::Ordering::SeqCst),
            2 + 3 * CONTRACTS.len()
        );
    }

    const V1: &str = r#"{"type":"record","name":"T","namespace":"t","fields":[
        {"name":"a","type":"string"},{"name":"b","type":"long"}]}"#;
    const V2_OPTIONAL: &str = r#"{"type":"record","name":"T","namespace":"t","fields":[
        {"name":"a","type":"string"},{"name":"b","type":"long"},
        {"name":"c","type":["null","string"],"default":null}]}"#;
    const V2_REQUIRED: &str = r#"{"type":"record","name":"T","namespace":"t","fields":[
        {"name":"a","type":"string"},{"name":"b","type":"long"},{"name":"c","type":"string"}]}"#;
    const V2_REMOVED: &str = r#"{"type":"record","name":"T","namespace":"t","fields":[
        {"name":"a","type":"string"}]}"#;

    #[test]
    fn a_new_optional_field_is_compatible_at_every_level() {
        for level in [
            CompatibilityLevel::Backward,
            CompatibilityLevel::Forward,
            CompatibilityLevel::Full,
        ] {
            assert_eq!(
                explain_incompatibility(V1, Some(1), V2_OPTIONAL, level),
                None,
                "{level}"
            );
        }
    }

    #[test]
    fn a_new_required_field_breaks_backward_and_names_the_field() {
        let reason =
            explain_incompatibility(V1, Some(1), V2_REQUIRED, CompatibilityLevel::Backward)
                .expect("a new required field is not BACKWARD compatible");
        assert!(reason.contains("'c'"), "{reason}");
        assert!(reason.contains("version 1"), "{reason}");
        assert_eq!(
            explain_incompatibility(V1, Some(1), V2_REQUIRED, CompatibilityLevel::Forward),
            None,
            "old readers ignore a new field"
        );
    }

    #[test]
    fn a_removed_field_without_default_breaks_forward_and_full_but_not_backward() {
        assert_eq!(
            explain_incompatibility(V1, Some(1), V2_REMOVED, CompatibilityLevel::Backward),
            None,
            "a new reader ignores the field old data still has"
        );
        for level in [CompatibilityLevel::Forward, CompatibilityLevel::Full] {
            let reason = explain_incompatibility(V1, Some(1), V2_REMOVED, level)
                .expect("old readers need the removed field");
            assert!(reason.contains("'b'"), "{level}: {reason}");
        }
    }

    #[test]
    fn the_table_has_a_header_and_aligned_columns() {
        let rows = vec![
            CheckRow {
                topic: "order.created",
                subject: "order.created-value".to_owned(),
                local_version: Some(2),
                latest_version: Some(2),
                verdict: Verdict::Compatible,
                drift: None,
            },
            CheckRow {
                topic: "inventory.adjusted.v1",
                subject: "inventory.adjusted.v1-value".to_owned(),
                local_version: None,
                latest_version: Some(1),
                verdict: Verdict::Incompatible("field 'x' needs a default".to_owned()),
                drift: None,
            },
            CheckRow {
                topic: "payment.failed.v1",
                subject: "payment.failed.v1-value".to_owned(),
                local_version: None,
                latest_version: None,
                verdict: Verdict::NewSubject,
                drift: None,
            },
        ];
        let table = render_check_table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(lines[0].starts_with("SUBJECT"), "{table}");
        let verdict_column = lines[0].find("VERDICT").expect("a VERDICT column");
        assert_eq!(lines[1].find("compatible"), Some(verdict_column), "{table}");
        assert!(lines[2].contains("unregistered") && lines[2].contains("INCOMPATIBLE: field 'x'"));
        assert!(lines[3].ends_with("new subject"), "{table}");
        assert!(any_incompatible(&rows));
        assert!(!any_incompatible(&rows[..1]));
    }

    #[test]
    fn drift_names_what_the_newer_version_adds_removes_or_retypes() {
        let drift = describe_drift(V1, 1, V2_OPTIONAL, 2);
        assert!(drift.contains("latest version 2"), "{drift}");
        assert!(drift.contains("adds field 'c'"), "{drift}");
        let drift = describe_drift(V1, 1, V2_REMOVED, 3);
        assert!(drift.contains("removes field 'b'"), "{drift}");
        let mut rows = vec![CheckRow {
            topic: "payment.authorized.v1",
            subject: "payment.authorized.v1-value".to_owned(),
            local_version: Some(1),
            latest_version: Some(2),
            verdict: Verdict::Compatible,
            drift: None,
        }];
        assert!(!any_drift(&rows));
        rows[0].drift = Some(describe_drift(V1, 1, V2_OPTIONAL, 2));
        assert!(any_drift(&rows));
        let table = render_check_table(&rows);
        assert!(
            table.contains("compatible; DRIFT: latest version 2"),
            "{table}"
        );
    }
}

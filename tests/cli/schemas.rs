//! `keel schemas register` and `keel schemas check` against the real registry: register every
//! local schema, check them clean, then make one subject's latest version something the local
//! schema cannot read and see `check` name it and exit non-zero (the deployment gate).

use std::process::{Command, Output};

use keel_avro::{RegistryConfig, SchemaRegistry};
use keel_tests::{Stack, unique};

fn keel(prefix: &str, args: &[&str]) -> Output {
    let stack = Stack::from_env();
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .env("KEEL__REGISTRY__URL", &stack.registry_url)
        .env("KEEL__REGISTRY__SUBJECT_PREFIX", prefix)
        .output()
        .expect("the keel binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The local `payment.failed.v1` schema without its required `reason` field.
fn payment_failed_without_reason() -> String {
    let contract = keel_avro::contract_for_topic("payment.failed.v1").expect("a contract");
    let mut schema: serde_json::Value =
        serde_json::from_str(contract.schema_source).expect("the .avsc is JSON");
    let fields = schema["fields"].as_array_mut().expect("a record's fields");
    let before = fields.len();
    fields.retain(|f| f["name"] != "reason");
    assert_eq!(
        fields.len(),
        before - 1,
        "the fixture removes exactly one field"
    );
    schema.to_string()
}

#[tokio::test]
async fn register_then_check_passes_and_an_unreadable_latest_version_fails_the_gate() {
    let prefix = format!("{}-", unique("cli"));

    let out = keel(&prefix, &["schemas", "register"]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "register failed: {}{}",
        stdout,
        text(&out.stderr)
    );
    for contract in keel_avro::CONTRACTS {
        let subject = format!("{prefix}{}-value", contract.topic);
        assert!(
            stdout.contains(&subject),
            "{subject} missing from:\n{stdout}"
        );
    }
    assert!(stdout.contains("BACKWARD"), "{stdout}");

    let out = keel(&prefix, &["schemas", "check"]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "check failed: {}{}",
        stdout,
        text(&out.stderr)
    );
    assert!(!stdout.contains("INCOMPATIBLE"), "{stdout}");

    // Removing a field is a BACKWARD-compatible step, so the registry takes it as version 2 ...
    let registry = SchemaRegistry::new(&RegistryConfig {
        subject_prefix: prefix.clone(),
        ..RegistryConfig::with_url(Stack::from_env().registry_url)
    })
    .expect("a registry client");
    let subject = registry.subject("payment.failed.v1");
    registry
        .register(&subject, &payment_failed_without_reason())
        .await
        .expect("version 2 registers");

    // ... but the local schema requires `reason` with no default: it cannot read version 2.
    let out = keel(&prefix, &["schemas", "check"]);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "check must fail the gate:\n{stdout}"
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&subject))
        .unwrap_or_else(|| panic!("no row for {subject} in:\n{stdout}"));
    assert!(line.contains("INCOMPATIBLE"), "{line}");
    assert!(
        line.contains("reason"),
        "the verdict names the field: {line}"
    );
    let others_incompatible = stdout
        .lines()
        .filter(|l| l.contains("INCOMPATIBLE") && !l.starts_with(&subject))
        .count();
    assert_eq!(others_incompatible, 0, "{stdout}");
}

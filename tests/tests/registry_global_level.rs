//! Every registry subject is BACKWARD, including subjects a producer (or Connect) creates on
//! first write (issue 13): `keel schemas register` (`register_all_topics`) and the stack's
//! `registry_after_up` set the registry's GLOBAL level. Read back through the Confluent
//! compatibility API (`GET /config`, `GET /config/{subject}?defaultToGlobal=true`), and an
//! incompatible version under a subject nobody configured is refused with 409.

use keel_avro::registry::register_all_topics;
use keel_avro::{CompatibilityLevel, RegistryConfig, SchemaRegistry};
use keel_tests::{Stack, unique};

const V1: &str = r#"{"type":"record","name":"FirstWrite","namespace":"keel.test",
  "fields":[{"name":"id","type":"string"}]}"#;
/// A new required field without a default: readers of v2 cannot read v1 data (not BACKWARD).
const V2_INCOMPATIBLE: &str = r#"{"type":"record","name":"FirstWrite","namespace":"keel.test",
  "fields":[{"name":"id","type":"string"},{"name":"region","type":"string"}]}"#;
/// A new optional field with a default: BACKWARD compatible.
const V2_COMPATIBLE: &str = r#"{"type":"record","name":"FirstWrite","namespace":"keel.test",
  "fields":[{"name":"id","type":"string"},{"name":"note","type":["null","string"],"default":null}]}"#;

/// `POST /subjects/{subject}/versions` as any producer does on first write: no level set.
async fn post_version(
    http: &reqwest::Client,
    url: &str,
    subject: &str,
    schema: &str,
) -> (u16, serde_json::Value) {
    let response = http
        .post(format!("{url}/subjects/{subject}/versions"))
        .header("Content-Type", "application/vnd.schemaregistry.v1+json")
        .json(&serde_json::json!({ "schema": schema }))
        .send()
        .await
        .expect("the registry answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

#[tokio::test]
async fn the_global_level_is_backward_and_a_subject_created_on_first_write_refuses_an_incompatible_version()
 {
    let stack = Stack::from_env();
    let prefix = format!("{}-", unique("global"));
    let config = RegistryConfig {
        subject_prefix: prefix.clone(),
        ..RegistryConfig::with_url(stack.registry_url.clone())
    };
    // What `keel schemas register` does first: the global level, then each subject.
    register_all_topics(&config, "").await.expect("registers");
    let registry = SchemaRegistry::new(&config).expect("a client");
    assert_eq!(
        registry.global_compatibility().await.expect("GET /config"),
        CompatibilityLevel::Backward
    );
    let http = reqwest::Client::new();
    let raw: serde_json::Value = http
        .get(format!("{}/config", stack.registry_url))
        .send()
        .await
        .expect("GET /config")
        .json()
        .await
        .expect("JSON");
    assert_eq!(raw["compatibilityLevel"], "BACKWARD", "{raw}");

    // A subject nobody configured, created by a producer's first write.
    let subject = format!("{prefix}first.write.v1-value");
    let (status, body) = post_version(&http, &stack.registry_url, &subject, V1).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        registry
            .effective_compatibility(&subject)
            .await
            .expect("GET /config/{subject}?defaultToGlobal=true"),
        Some(CompatibilityLevel::Backward),
        "the subject inherits the global level"
    );

    let (status, body) = post_version(&http, &stack.registry_url, &subject, V2_INCOMPATIBLE).await;
    assert_eq!(
        status, 409,
        "an incompatible version must be refused: {body}"
    );
    assert_eq!(body["error_code"], 409, "{body}");
    let (status, body) = post_version(&http, &stack.registry_url, &subject, V2_COMPATIBLE).await;
    assert_eq!(status, 200, "a compatible version is accepted: {body}");
    assert_eq!(
        registry
            .latest(&subject)
            .await
            .expect("latest")
            .and_then(|l| l.version),
        Some(2),
        "only the compatible version was added"
    );
}

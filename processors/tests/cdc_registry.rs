//! Debezium's table topics read through the schema registry ([`CdcValues::Registry`]) against
//! the stack's registry: a value framed with a schema id the registry does not know (yet) is
//! asked again, logged as a not-yet-known id (not as an unreachable registry), no later than
//! the end of `[registry].unknown_id_patience_ms`, and then refused as not Avro (the record's
//! fault: dead-lettered by the topology).

use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use keel_avro::{Codec, RegistryConfig};
use keel_processors::cdc::{CdcValues, DecodeError};
use keel_tests::{Stack, unique};

/// The unknown-id window. Backoff steps of 100, 200, 400, 800, 1,600 ms end 200 ms before it,
/// so a backoff that is not capped at its end waits the next step (3.2 s) past it: 6.3 s in
/// all, against 3.3 s capped (the test allows 1.5 s of slack for a loaded machine).
const WINDOW: Duration = Duration::from_millis(3_300);

/// What the decode logged (a `tracing` writer).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_schema_id_is_asked_again_as_not_yet_known_until_its_window_ends()
-> anyhow::Result<()> {
    let stack = Stack::from_env();
    let codec = Codec::new(RegistryConfig {
        subject_prefix: format!("{}-", unique("cdc")),
        ..RegistryConfig::with_url(stack.registry_url.clone())
    })?
    .with_unknown_id_patience(WINDOW);
    let values = CdcValues::Registry {
        codec,
        handle: tokio::runtime::Handle::current(),
    };
    let topic = unique("cdc.keel.orders");
    // Magic byte, schema id 88888888 (big-endian; the registry has no such id), a datum.
    let mut framed = vec![0];
    framed.extend_from_slice(&88_888_888_u32.to_be_bytes());
    framed.extend_from_slice(b"zz");

    let logs = Logs::default();
    let writer = logs.clone();
    // A stream thread's decode: blocking, on a thread of its own.
    let (decoded, took) = tokio::task::spawn_blocking(move || {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let started = Instant::now();
            (values.decode(&topic, &framed), started.elapsed())
        })
    })
    .await?;

    match decoded {
        Err(DecodeError::NotAvro(why)) => {
            assert!(why.contains("88888888"), "{why}");
        }
        other => panic!("an unknown id is the record's fault, got {other:?}"),
    }
    let logs = logs.text();
    assert!(
        logs.contains("schema id not known to the registry (yet); asking again"),
        "{logs}"
    );
    assert!(!logs.contains("unreachable"), "{logs}");
    assert!(took >= WINDOW, "refused after {took:?}, before the window");
    assert!(
        took < WINDOW + Duration::from_millis(1_500),
        "refused {took:?} after the first miss: the backoff went past the {WINDOW:?} window"
    );
    Ok(())
}

//! Two `keel run`s of one role, application and instance id on one machine: the second
//! refuses to start (it would take over the first's static membership and fence it), and the
//! first keeps running.

mod common;

use std::time::{Duration, Instant};

use common::{Run, wait_ready};
use keel_tests::Stack;

#[tokio::test(flavor = "multi_thread")]
async fn a_second_keel_run_with_the_same_instance_id_refuses_and_the_first_keeps_running() {
    let stack = Stack::from_env();
    let (name, run) = Run::new(&stack).await;
    let mut first = run.spawn("keel run", &["run", "--roles", "api,inventory"]);
    let client = reqwest::Client::new();
    wait_ready(&client, &run.api, Duration::from_secs(120)).await;

    let mut second = run
        .keel(&["run", "--roles", "inventory"])
        .env("KEEL__API__LISTEN", "127.0.0.1:0")
        .env("KEEL__METRICS__LISTEN", "127.0.0.1:0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("keel starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = second.try_wait().expect("status") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            let _ = second.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = second.stderr.take() {
        use std::io::Read as _;
        let _ = pipe.read_to_string(&mut stderr);
    }
    let Some(status) = status else {
        first.terminate(Duration::from_secs(30));
        run.clean_up(&stack, &name).await;
        panic!("the second keel run was still running after 20 s: {stderr}");
    };
    assert!(!status.success(), "the second keel run exited 0: {stderr}");
    assert!(
        stderr.contains("instance id") && stderr.contains("inventory"),
        "{stderr}"
    );
    // The first one is still serving.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        first.child.try_wait().expect("status").is_none(),
        "the first keel run exited"
    );
    let ready = client
        .get(format!("{}/ready", run.api))
        .send()
        .await
        .expect("the first keel run answers");
    assert!(ready.status().is_success(), "{}", ready.status());

    first.terminate(Duration::from_secs(30));
    run.clean_up(&stack, &name).await;
}

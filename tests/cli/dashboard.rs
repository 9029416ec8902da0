//! The live page `/dashboard` in a real headless browser (Chromium from Debian's packages,
//! installed by `scripts/bootstrap`): a `keel run` takes checkouts, Chromium loads the page
//! while they run and again once they settled, and the DOM it dumps shows charts drawn from the
//! real figures (the page writes what it drew into `data-*` attributes) and the latest sagas.
//! A screenshot is kept as the test's artifact: `<target>/tmp/dashboard.png` (the path is
//! printed).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Run, place, settled, wait_ready};
use keel_tests::Stack;

/// Chromium, headless, on a profile of its own; `extra` picks the output (`--dump-dom`,
/// `--screenshot=…`). Returns stdout.
fn chromium(url: &str, extra: &str, profile: &Path) -> String {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--window-size=1280,1300",
            // Virtual time: the page's 2 s polls run back to back while the fetches answer.
            "--virtual-time-budget=9000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(extra)
        .arg(url)
        .output()
        .expect("chromium runs (apt-get install chromium; scripts/bootstrap installs it)");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 DOM")
}

/// The value of `attr` on the element whose `id` is given (the dumped DOM is Chromium's
/// serialization: `<tag id="x" …attrs…>`).
fn attr(dom: &str, id: &str, attr: &str) -> Option<String> {
    let at = dom.find(&format!("id=\"{id}\""))?;
    let start = dom[..at].rfind('<')?;
    let end = at + dom[at..].find('>')?;
    let tag = &dom[start..end];
    let key = format!("{attr}=\"");
    let from = tag.find(&key)? + key.len();
    let len = tag[from..].find('"')?;
    Some(tag[from..from + len].to_owned())
}

fn number(dom: &str, id: &str, name: &str) -> f64 {
    attr(dom, id, name)
        .unwrap_or_else(|| panic!("#{id} has no {name}; the page did not draw it:\n{dom}"))
        .parse()
        .expect("a number")
}

/// `data-status` of each saga row, by `data-order`.
fn saga_rows(dom: &str) -> Vec<(String, String)> {
    dom.split("<tr data-order=\"")
        .skip(1)
        .map(|rest| {
            let id = rest[..rest.find('"').expect("quote")].to_owned();
            let status = rest
                .split("data-status=\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .expect("data-status")
                .to_owned();
            (id, status)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_draws_the_checkout_flow_in_headless_chromium() {
    let stack = Stack::from_env();
    let (name, run) = Run::new(&stack).await;
    let carts = [
        ("cart-1", "tok_visa"),
        ("cart-2", "tok_visa"),
        ("cart-3", "tok_visa"),
        ("cart-4", "tok_decline_insufficient_funds"),
    ];
    for (cart, _) in carts {
        run.ok(&["carts", "seed", "--cart-id", cart, "--item", "SKU-D:1:900"]);
    }
    run.ok(&["inventory", "seed", "--skus", "SKU-D", "--quantity", "10"]);
    let _psp = run.spawn("psp-mock", &["psp-mock"]);
    let mut keel = run.spawn("keel run", &["run"]);
    let client = reqwest::Client::new();
    wait_ready(&client, &run.api, Duration::from_secs(120)).await;
    let url = format!("{}/dashboard", run.api);
    let profile = tempfile::tempdir().expect("a browser profile");

    // The first two checkouts settle; the page is loaded while the other two are placed.
    let mut ids = Vec::new();
    for (i, (cart, token)) in carts.iter().enumerate().take(2) {
        let body = place(&client, &run.api, cart, token, &format!("k{i}")).await;
        ids.push(body["orderId"].as_str().expect("id").to_owned());
    }
    for id in &ids {
        settled(&client, &run.api, id, Duration::from_secs(60)).await;
    }
    let during = {
        let (url, profile) = (url.clone(), profile.path().to_owned());
        tokio::task::spawn_blocking(move || chromium(&url, "--dump-dom", &profile))
    };
    for (i, (cart, token)) in carts.iter().enumerate().skip(2) {
        let body = place(&client, &run.api, cart, token, &format!("k{i}")).await;
        ids.push(body["orderId"].as_str().expect("id").to_owned());
    }
    let during = during.await.expect("chromium thread");
    assert!(
        number(&during, "summary", "data-placed") >= 2.0,
        "while checkouts ran the page showed fewer than the two settled ones"
    );
    assert!(number(&during, "chart-flow", "data-points") >= 1.0);

    let mut statuses = Vec::new();
    for id in &ids {
        let order = settled(&client, &run.api, id, Duration::from_secs(60)).await;
        statuses.push(order["status"].as_str().expect("status").to_owned());
    }
    assert_eq!(
        statuses,
        ["CONFIRMED", "CONFIRMED", "CONFIRMED", "CANCELLED"],
        "the PSP mock's tokens decide these"
    );

    let dom = chromium(&url, "--dump-dom", profile.path());
    // The flow chart sums to what happened: 4 placed, 3 confirmed, 1 cancelled.
    assert_eq!(number(&dom, "summary", "data-placed"), 4.0);
    assert_eq!(number(&dom, "summary", "data-confirmed"), 3.0);
    assert_eq!(number(&dom, "summary", "data-cancelled"), 1.0);
    for chart in ["chart-flow", "chart-payment", "chart-holds", "chart-lag"] {
        let points = number(&dom, chart, "data-points");
        assert!(points >= 2.0, "{chart} has {points} points");
    }
    // Non-empty: intervals with orders, with authorizations (latency, a 25 % failure rate).
    assert!(number(&dom, "chart-flow", "data-nonzero") >= 1.0);
    assert!(number(&dom, "chart-payment", "data-nonzero") >= 1.0);
    // The latest sagas, newest first, with their status.
    assert_eq!(number(&dom, "sagas", "data-rows"), 4.0);
    let mut rows = saga_rows(&dom);
    rows.sort();
    let mut expected: Vec<(String, String)> = ids.iter().cloned().zip(statuses).collect();
    expected.sort();
    assert_eq!(rows, expected);

    let shot: PathBuf = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    chromium(
        &url,
        &format!("--screenshot={}", shot.display()),
        profile.path(),
    );
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "not a drawn page"
    );
    eprintln!("dashboard screenshot: {}", shot.display());
    keel.terminate(Duration::from_secs(30));
    run.clean_up(&stack, &name).await;
}

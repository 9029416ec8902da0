//! `keel scenario oversell` (issue 13): a hold lapses while its payment is held back at the PSP,
//! another order takes the unit, and the late authorization meets inventory's oversell rule.
//!
//! Against a RUNNING Keel and PSP mock, through public interfaces only:
//! 1. reads the running Keel's `[inventory].hold_ttl_ms` and `[inventory].oversell` from
//!    `GET /metrics` (`inventory_hold_ttl_ms`, `inventory_oversell_policy{policy}`: the process
//!    reports what it runs with) and fails at once, saying what to change, when the TTL is not
//!    the one the scenario was asked for (`--hold-ttl-ms`, default 2 minutes, issue 13's, while
//!    `keel run`'s default `[inventory].hold_ttl_ms` is 10 minutes: start it with
//!    `KEEL__INVENTORY__HOLD_TTL_MS` set to match) or the policy is not `--oversell` (when
//!    given). The PSP delay must lie between the TTL and the payment service's PSP timeout: that
//!    timeout is read from the configuration this command is given (`[payment].psp_timeout_ms`,
//!    `[saga].payment_timeout_ms`), so run it with the same `--config`/`KEEL__*` as `keel run`;
//! 2. seeds one unit of a fresh SKU and two carts of one unit each;
//! 3. `PUT /admin/behaviour` on the PSP mock: every authorization answers after `--psp-delay-ms`
//!    (default [`default_psp_delay`]: TTL + 15 s, less when the timeouts leave less room);
//!    places order A (`tok_visa`); as soon as the mock has A's call
//!    (`GET /admin/stats`), restores the mock's behaviour (a plan is fixed when a call arrives);
//! 4. waits for A's hold to lapse (`inventory.released.v1`, `HOLD_EXPIRED`), places order B,
//!    which takes the unit and is `CONFIRMED`;
//! 5. A's authorization arrives after the TTL. `allow`: A is `CONFIRMED`, inventory answers
//!    `OVERSOLD` on `inventory.reserved.v1`, writes `OVERSOLD order <A>` on
//!    `inventory.adjusted.v1`, `inventory_oversell_total` rises and Cassandra's `stock_level`
//!    shows -1 on hand; A's payment is captured. `prevent`: the saga waited for the sale;
//!    inventory answers `SALE_REFUSED`, A is `CANCELLED` with `OVERSELL_PREVENTED`, its
//!    authorization is voided (nothing captured), `inventory_oversell_total` rises (the
//!    attempt is counted) and the stock stays at 0.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use keel_avro::Codec;
use keel_avro::records::{
    InventoryAdjusted, InventoryReleased, InventoryReserved, ReleaseReason, ReservationStatus,
};
use keel_processors::inventory::OversellPolicy;
use keel_processors::topics;
use rdkafka::ClientConfig;
use serde_json::{Value, json};

use crate::config::KeelConfig;
use crate::scenario::{Progress, Report, poll, stock_on_hand};
use crate::seed;

/// `keel scenario oversell` flags (ignored by the other scenarios).
#[derive(Debug, Clone, clap::Args)]
pub struct OversellArgs {
    /// oversell: the hold TTL (ms) the running Keel must have (`[inventory].hold_ttl_ms`);
    /// default 2 minutes (issue 13), while `keel run` defaults to 10 minutes: start it with
    /// KEEL__INVENTORY__HOLD_TTL_MS set to this value (e.g. 15000 for both). At least 1000, as
    /// keel run requires of `[inventory].hold_ttl_ms`.
    #[arg(long, default_value_t = 120_000, value_parser = hold_ttl_ms_arg)]
    pub hold_ttl_ms: u64,
    /// oversell: how long the PSP mock holds every authorization back (ms); default: the hold
    /// TTL + 15 s, or TTL + half the room left below the payment timeouts when that is less.
    /// Must be below `[payment].psp_timeout_ms` and `[saga].payment_timeout_ms`.
    #[arg(long)]
    pub psp_delay_ms: Option<u64>,
    /// oversell: the policy the running Keel must have (`allow`/`prevent`); default: whichever
    /// it reports, and the expectations follow it.
    #[arg(long, value_parser = ["allow", "prevent"])]
    pub oversell: Option<String>,
}

/// The least `[inventory].hold_ttl_ms` keel run starts with (Cassandra TTLs are whole seconds:
/// `src/config.rs`); `--hold-ttl-ms` below it names a Keel that cannot exist.
const MIN_HOLD_TTL_MS: u64 = 1_000;

/// `--hold-ttl-ms`: milliseconds, at least [`MIN_HOLD_TTL_MS`].
fn hold_ttl_ms_arg(value: &str) -> Result<u64, String> {
    let ms: u64 = value
        .trim()
        .parse()
        .map_err(|e| format!("not a number of milliseconds: {e}"))?;
    if ms < MIN_HOLD_TTL_MS {
        return Err(format!(
            "{ms} ms is below {MIN_HOLD_TTL_MS} ms, the least [inventory].hold_ttl_ms keel run \
             accepts (Cassandra TTLs are whole seconds)"
        ));
    }
    Ok(ms)
}

/// The check of the running Keel's hold TTL against `--hold-ttl-ms`: (expectation, passed,
/// what was seen). The expectation states what is wanted, what was seen states the running
/// value and, when they differ, the two ways to make them agree.
fn ttl_check(wanted_ms: u64, running_ms: u64) -> (String, bool, String) {
    let expectation =
        format!("the running Keel's [inventory].hold_ttl_ms is {wanted_ms} (--hold-ttl-ms)");
    if wanted_ms == running_ms {
        return (expectation, true, format!("{running_ms} ms"));
    }
    let saw = format!(
        "keel run has {running_ms} ms: restart keel run with \
         KEEL__INVENTORY__HOLD_TTL_MS={wanted_ms}, or pass --hold-ttl-ms {running_ms} here"
    );
    (expectation, false, saw)
}

/// What gets the order B's unit back in time: B is placed once A's hold lapsed and must be
/// confirmed before A's authorization comes back.
const MARGIN_MS: u64 = 15_000;

/// The PSP delay (ms) when `--psp-delay-ms` is not given: `ttl + min(MARGIN_MS, room / 2)`,
/// `room` being what lies between the hold TTL and the smaller of `psp_timeout_ms` and
/// `saga_timeout_ms`, so the delay is strictly above the TTL and strictly below both
/// timeouts. `None` when no delay fits (the TTL is not at least 2 ms below both timeouts).
fn default_psp_delay(ttl_ms: u64, psp_timeout_ms: u64, saga_timeout_ms: u64) -> Option<u64> {
    let half_room = psp_timeout_ms.min(saga_timeout_ms).checked_sub(ttl_ms)? / 2;
    (half_room > 0).then(|| ttl_ms + half_room.min(MARGIN_MS))
}

/// Runs the oversell scenario into `report`.
pub(crate) async fn drive(
    config: &KeelConfig,
    api: &str,
    args: &OversellArgs,
    timeout: Duration,
    suffix: &str,
    report: &mut Report,
) {
    let http = match crate::scenario::api_client(config) {
        Ok(h) => h,
        Err(e) => {
            report.check("an HTTP client", false, format!("{e}"));
            return;
        }
    };
    let s = Oversell {
        config,
        api: api.to_owned(),
        psp: config.payment.psp_url.trim_end_matches('/').to_owned(),
        http,
        timeout,
        suffix: suffix.to_owned(),
    };
    let saved = s.behaviour().await;
    s.run(args, saved.as_ref(), report).await;
    // Whatever happened, the PSP mock gets its behaviour back.
    if let Some(saved) = saved {
        let _ = s.put_behaviour(&saved).await;
    }
}

struct Oversell<'a> {
    config: &'a KeelConfig,
    api: String,
    psp: String,
    http: reqwest::Client,
    timeout: Duration,
    suffix: String,
}

/// One sample of a Prometheus text page: the sum of the lines of `name` whose labels include
/// every `labels` pair (`None` if no line matches).
pub(crate) fn sample(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in page.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_text, value) = if let Some(inner) = rest.strip_prefix('{') {
            match inner.split_once('}') {
                Some((l, v)) => (l, v),
                None => continue,
            }
        } else if rest.starts_with(' ') {
            ("", rest)
        } else {
            continue;
        };
        let matches = labels
            .iter()
            .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")));
        if let (true, Ok(v)) = (matches, value.trim().parse::<f64>()) {
            total = Some(total.unwrap_or(0.0) + v);
        }
    }
    total
}

impl Oversell<'_> {
    async fn page(&self) -> anyhow::Result<String> {
        Ok(self
            .http
            .get(format!("{}/metrics", self.api))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?)
    }

    async fn behaviour(&self) -> Option<Value> {
        let r = self
            .http
            .get(format!("{}/admin/behaviour", self.psp))
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }

    async fn put_behaviour(&self, body: &Value) -> anyhow::Result<()> {
        self.http
            .put(format!("{}/admin/behaviour", self.psp))
            .json(body)
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    async fn authorization_calls(&self) -> Option<u64> {
        let r = self
            .http
            .get(format!("{}/admin/stats", self.psp))
            .send()
            .await
            .ok()?;
        let v: Value = r.json().await.ok()?;
        v["authorization_calls"].as_u64()
    }

    async fn place(&self, report: &mut Report, cart: &str, label: &str) -> Option<String> {
        let key = format!("scenario-{}-{label}", self.suffix);
        let placed = self
            .http
            .post(format!("{}/orders", self.api))
            .header("Idempotency-Key", &key)
            .json(&json!({
                "cartId": cart,
                "paymentMethod": "tok_visa",
                "shippingAddress": {
                    "name": "Ada Lovelace", "line1": "12 Analytical Row", "city": "Berlin",
                    "postalCode": "10115", "country": "DE"
                }
            }))
            .send()
            .await;
        let what = format!("POST /orders for order {label} accepted (202)");
        match placed {
            Ok(r) => {
                let status = r.status().as_u16();
                let body: Value = r.json().await.unwrap_or(Value::Null);
                let id = body["orderId"].as_str().map(str::to_owned);
                let ok = status == 202 && id.is_some();
                if !ok {
                    report.check(what, false, format!("{status} {body}"));
                    return None;
                }
                report.did.push(format!(
                    "placed order {label} = {} (cart {cart}, tok_visa)",
                    id.as_deref().unwrap_or_default()
                ));
                id
            }
            Err(e) => {
                report.check(what, false, format!("{e}"));
                None
            }
        }
    }

    /// Polls `GET /orders/{id}` until the status is terminal.
    async fn settle(&self, id: &str, within: Duration) -> Option<Value> {
        let url = format!("{}/orders/{id}", self.api);
        let start = Instant::now();
        let mut progress = Progress::new();
        let mut last = String::from("not seen yet");
        while start.elapsed() < within {
            if let Ok(r) = self.http.get(&url).send().await
                && let Ok(body) = r.json::<Value>().await
            {
                let status = body["status"].as_str().unwrap_or("?").to_owned();
                if matches!(status.as_str(), "CONFIRMED" | "CANCELLED" | "REJECTED") {
                    progress.done();
                    return Some(body);
                }
                last = status;
            }
            progress.show(&format!("waiting for order {id} to settle: {last}"));
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        progress.done();
        None
    }

    fn kafka_client(&self) -> ClientConfig {
        let mut client = ClientConfig::new();
        client.set("bootstrap.servers", &self.config.kafka.bootstrap_servers);
        for (k, v) in &self.config.kafka.client {
            client.set(k, v);
        }
        client
            .set("group.id", format!("keel-scenario-{}", self.suffix))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed");
        client
    }

    /// `original`: the PSP mock's behaviour before the scenario touched it.
    async fn run(&self, args: &OversellArgs, original: Option<&Value>, report: &mut Report) {
        // The running Keel's settings, from its own metrics.
        let ready = self.http.get(format!("{}/ready", self.api)).send().await;
        let ok = matches!(&ready, Ok(r) if r.status().is_success());
        report.check(
            "keel is ready (GET /ready)",
            ok,
            match &ready {
                Ok(r) => r.status().to_string(),
                Err(e) => format!("{e}"),
            },
        );
        if !ok {
            return;
        }
        let page = match self.page().await {
            Ok(p) => p,
            Err(e) => {
                report.check("metrics served (GET /metrics)", false, format!("{e:#}"));
                return;
            }
        };
        let Some(ttl) = sample(&page, "inventory_hold_ttl_ms", &[]) else {
            report.check(
                "the running Keel reports its hold TTL (inventory_hold_ttl_ms on GET /metrics)",
                false,
                "no inventory_hold_ttl_ms: is the inventory role running in this process?",
            );
            return;
        };
        let ttl = ttl as u64;
        let (expectation, passed, saw) = ttl_check(args.hold_ttl_ms, ttl);
        report.check(expectation, passed, saw);
        if ttl != args.hold_ttl_ms {
            return;
        }
        let policy = if sample(
            &page,
            "inventory_oversell_policy",
            &[("policy", OversellPolicy::Prevent.label())],
        ) == Some(1.0)
        {
            OversellPolicy::Prevent
        } else {
            OversellPolicy::Allow
        };
        if let Some(wanted) = &args.oversell {
            report.check(
                format!("the running Keel's [inventory].oversell is {wanted}"),
                wanted == policy.label(),
                policy.label(),
            );
            if wanted != policy.label() {
                return;
            }
        }
        report.did.push(format!(
            "read the running Keel's hold TTL {ttl} ms and oversell policy {} (GET /metrics)",
            policy.label()
        ));
        let psp_timeout = self.config.payment.psp_timeout_ms;
        let saga_timeout = self.config.saga.payment_timeout_ms;
        let Some(delay) = args
            .psp_delay_ms
            .or_else(|| default_psp_delay(ttl, psp_timeout, saga_timeout))
        else {
            report.check(
                "a PSP delay fits between the hold TTL and the payment timeouts",
                false,
                format!(
                    "none fits: the hold TTL {ttl} ms must lie below [payment].psp_timeout_ms \
                     {psp_timeout} ms and [saga].payment_timeout_ms {saga_timeout} ms (as \
                     configured for this command). Lower the TTL (KEEL__INVENTORY__HOLD_TTL_MS \
                     on keel run and --hold-ttl-ms here) or raise both timeouts on keel run \
                     and for this command"
                ),
            );
            return;
        };
        let fits = delay > ttl && delay < psp_timeout && delay < saga_timeout;
        report.check(
            "PSP delay lies between the hold TTL and the payment timeouts",
            fits,
            format!(
                "TTL {ttl} ms < delay {delay} ms < [payment].psp_timeout_ms {psp_timeout} ms and \
                 [saga].payment_timeout_ms {saga_timeout} ms (the timeouts as configured for \
                 this command: give it keel run's --config / KEEL__* settings)"
            ),
        );
        if !fits {
            return;
        }
        let oversell_before = sample(&page, "inventory_oversell_total", &[]).unwrap_or(0.0);

        // Preconditions: one unit, two carts of one.
        let kafka_from_ms = chrono::Utc::now().timestamp_millis() - 5_000;
        if let Err(e) = seed::inventory(
            self.config,
            std::slice::from_ref(&report.sku),
            1,
            "keel scenario oversell",
        )
        .await
        {
            report.check("stock seeded", false, format!("{e:#}"));
            return;
        }
        report
            .did
            .push(format!("seeded 1 unit of {} (AdjustStock)", report.sku));
        let cart_b = format!("{}-b", report.cart_id);
        for cart in [report.cart_id.clone(), cart_b.clone()] {
            let item = seed::ItemArg {
                sku: report.sku.clone(),
                quantity: 1,
                unit_price_minor: 1250,
            };
            if let Err(e) = seed::carts(
                self.config,
                &cart,
                "scenario-customer",
                "EUR",
                std::slice::from_ref(&item),
            )
            .await
            {
                report.check("carts seeded", false, format!("{e:#}"));
                return;
            }
        }
        report.did.push(format!(
            "seeded carts {} and {cart_b}, 1 x {} each",
            report.cart_id, report.sku
        ));
        let session =
            match keel_processors::inventory::sink::connect(&self.config.cassandra.nodes).await {
                Ok(s) => s,
                Err(e) => {
                    report.check("Cassandra reachable", false, format!("{e}"));
                    return;
                }
            };
        if self
            .wait_on_hand(&session, &report.sku, 1, "the seeded unit in Cassandra")
            .await
            .is_none()
        {
            report.check("seeded stock visible in Cassandra stock_level", false, "no");
            return;
        }

        // Order A, its authorization held back.
        let calls_before = self.authorization_calls().await.unwrap_or(0);
        let patch = json!({"latency_min_ms": delay, "latency_max_ms": delay});
        if let Err(e) = self.put_behaviour(&patch).await {
            report.check(
                "PSP mock takes the delay (PUT /admin/behaviour)",
                false,
                format!("{e:#}"),
            );
            return;
        }
        report.did.push(format!(
            "PSP mock: every authorization answers after {delay} ms (PUT {}/admin/behaviour)",
            self.psp
        ));
        let cart_a = report.cart_id.clone();
        let Some(order_a) = self.place(report, &cart_a, "A").await else {
            return;
        };
        report.order_id = Some(order_a.clone());
        let arrived = poll(
            self.timeout,
            "order A's authorization at the PSP",
            || async {
                self.authorization_calls()
                    .await
                    .filter(|n| *n > calls_before)
            },
        )
        .await
        .map(|(v, _)| v);
        // Only A's call is held back: the mock fixes a call's plan when it arrives.
        let restore = original
            .cloned()
            .unwrap_or_else(|| json!({"latency_min_ms": 20, "latency_max_ms": 120}));
        let restored = self.put_behaviour(&restore).await;
        report.check(
            "order A's authorization reached the PSP and is held back",
            arrived.is_some(),
            format!("authorization calls {calls_before} -> {arrived:?}"),
        );
        if let Err(e) = &restored {
            report.check(
                "PSP mock's behaviour restored for the next orders (PUT /admin/behaviour)",
                false,
                format!("{e:#}"),
            );
        }
        if arrived.is_none() || restored.is_err() {
            return;
        }
        report.did.push(format!(
            "PSP mock back to its behaviour for the next orders ({} - {} ms)",
            restore["latency_min_ms"], restore["latency_max_ms"]
        ));

        // A's hold lapses.
        let codec = match Codec::new(self.config.registry.clone()) {
            Ok(c) => c,
            Err(e) => {
                report.check("registry codec", false, format!("{e}"));
                return;
            }
        };
        let names = self.config.topics.names();
        let released_topic = names.name(topics::INVENTORY_RELEASED);
        let lapse_within = Duration::from_millis(ttl + 30_000).max(self.timeout);
        let expired = scan(
            &self.kafka_client(),
            &released_topic,
            kafka_from_ms,
            lapse_within,
            &codec,
            |key, e: &InventoryReleased| key == order_a && e.reason == ReleaseReason::HoldExpired,
        )
        .await;
        report.check(
            "order A's hold lapsed (inventory.released.v1, HOLD_EXPIRED)",
            expired.as_ref().is_ok_and(Option::is_some),
            match &expired {
                Ok(Some(e)) => format!("released {} unit(s) of {}", e.quantity, e.sku),
                Ok(None) => format!("nothing within {} s", lapse_within.as_secs()),
                Err(e) => format!("{e:#}"),
            },
        );
        if !expired.as_ref().is_ok_and(Option::is_some) {
            return;
        }

        // Order B takes the unit.
        let Some(order_b) = self.place(report, &cart_b, "B").await else {
            return;
        };
        let b = self.settle(&order_b, self.timeout).await;
        let b_status = b
            .as_ref()
            .and_then(|o| o["status"].as_str())
            .unwrap_or("not settled")
            .to_owned();
        report.check(
            "order B takes the unit: CONFIRMED",
            b_status == "CONFIRMED",
            b_status,
        );

        // A's late authorization.
        let a_within = Duration::from_millis(delay) + self.timeout;
        let a = self.settle(&order_a, a_within).await;
        let a_status = a
            .as_ref()
            .and_then(|o| o["status"].as_str())
            .unwrap_or("not settled")
            .to_owned();
        let a_reason = a
            .as_ref()
            .and_then(|o| o["reason"].as_str())
            .map(str::to_owned);
        let (want_status, want_reason, want_answer, want_on_hand) = match policy {
            OversellPolicy::Allow => ("CONFIRMED", None, "OVERSOLD", -1),
            OversellPolicy::Prevent => ("CANCELLED", Some("OVERSELL_PREVENTED"), "SALE_REFUSED", 0),
        };
        report.check(
            format!(
                "order A {want_status} {} ({} policy)",
                want_reason.unwrap_or(""),
                policy.label()
            ),
            a_status == want_status && a_reason.as_deref() == want_reason,
            format!("{a_status} {a_reason:?}"),
        );

        // Inventory's answer to A's confirm and, under allow, the oversold sale.
        let reserved_topic = names.name(topics::INVENTORY_RESERVED);
        let answer = scan(
            &self.kafka_client(),
            &reserved_topic,
            kafka_from_ms,
            self.timeout.min(Duration::from_secs(60)),
            &codec,
            |key, e: &InventoryReserved| key == order_a && e.status != ReservationStatus::Held,
        )
        .await;
        let seen = match &answer {
            Ok(Some(e)) => serde_json::to_value(e.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            Ok(None) => "no answer".to_owned(),
            Err(e) => format!("{e:#}"),
        };
        report.check(
            format!("inventory answers A's confirm {want_answer} (inventory.reserved.v1)"),
            seen == want_answer,
            seen,
        );
        if policy == OversellPolicy::Allow {
            let adjusted = scan(
                &self.kafka_client(),
                &names.name(topics::INVENTORY_ADJUSTED),
                kafka_from_ms,
                self.timeout.min(Duration::from_secs(60)),
                &codec,
                |_, e: &InventoryAdjusted| e.reason == format!("OVERSOLD order {order_a}"),
            )
            .await;
            report.check(
                "the oversell event: inventory.adjusted.v1 OVERSOLD order A",
                adjusted.as_ref().is_ok_and(Option::is_some),
                match &adjusted {
                    Ok(Some(e)) => format!("delta {} on hand {}", e.delta, e.on_hand),
                    Ok(None) => "none".to_owned(),
                    Err(e) => format!("{e:#}"),
                },
            );
        }
        let after = self.page().await.unwrap_or_default();
        let oversell_after = sample(&after, "inventory_oversell_total", &[]).unwrap_or(0.0);
        report.check(
            "inventory_oversell_total rose",
            oversell_after >= oversell_before + 1.0,
            format!("{oversell_before} -> {oversell_after}"),
        );
        let on_hand = self
            .wait_on_hand(&session, &report.sku, want_on_hand, "the final stock")
            .await;
        report.check(
            format!("Cassandra stock_level on hand {want_on_hand}"),
            on_hand.is_some(),
            format!(
                "{:?}",
                on_hand.or(self.on_hand(&session, &report.sku).await)
            ),
        );
        self.check_ledger(report, &order_a, policy).await;
    }

    async fn on_hand(&self, session: &scylla::client::session::Session, sku: &str) -> Option<i32> {
        stock_on_hand(session, &self.config.cassandra.keyspace, sku).await
    }

    async fn wait_on_hand(
        &self,
        session: &scylla::client::session::Session,
        sku: &str,
        want: i32,
        what: &str,
    ) -> Option<i32> {
        poll(self.timeout, what, || async {
            self.on_hand(session, sku).await.filter(|v| *v == want)
        })
        .await
        .map(|(v, _)| v)
    }

    async fn check_ledger(&self, report: &mut Report, order_id: &str, policy: OversellPolicy) {
        let result: anyhow::Result<()> = async {
            let pg = sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect(&self.config.postgres.url)
                .await
                .context("connecting to postgres.url")?;
            let row = || {
                let pg = pg.clone();
                async move {
                    sqlx::query_as::<_, (String, i64)>(
                        "SELECT status, captured_minor FROM payments WHERE order_id = $1",
                    )
                    .bind(order_id)
                    .fetch_optional(&pg)
                    .await
                    .ok()
                    .flatten()
                }
            };
            let (want, what) = match policy {
                OversellPolicy::Allow => ("CAPTURED", "order A's payment CAPTURED"),
                OversellPolicy::Prevent => {
                    ("VOIDED", "order A's authorization voided, nothing captured")
                }
            };
            let seen = poll(self.timeout, "order A's payment", || async {
                row().await.filter(|(s, _)| s == want)
            })
            .await
            .map(|(v, _)| v);
            let last = match seen {
                Some(r) => Some(r),
                None => row().await,
            };
            let ok = last
                .as_ref()
                .is_some_and(|(s, c)| s == want && (policy == OversellPolicy::Allow || *c == 0));
            report.check(what, ok, format!("{last:?}"));
            Ok(())
        }
        .await;
        if let Err(e) = result {
            report.check("PostgreSQL ledger readable", false, format!("{e:#}"));
        }
    }
}

/// Reads `topic` from the records written since `from_ms` until one decodes (with Keel's codec)
/// into a `T` that `wanted` accepts, or `within` has passed.
pub(crate) async fn scan<T, P>(
    client: &ClientConfig,
    topic: &str,
    from_ms: i64,
    within: Duration,
    codec: &Codec,
    wanted: P,
) -> anyhow::Result<Option<T>>
where
    T: keel_avro::Record,
    P: Fn(&str, &T) -> bool,
{
    let records = raw_records(client, topic, from_ms, within).await?;
    let deadline = Instant::now() + within;
    let mut seen: BTreeMap<(i32, i64), ()> = BTreeMap::new();
    let mut batch = records;
    loop {
        for r in &batch {
            if seen.insert((r.partition, r.offset), ()).is_some() {
                continue;
            }
            let Some(value) = &r.value else { continue };
            if let Ok(v) = codec.decode_from::<T>(topic, value).await
                && wanted(&r.key, &v)
            {
                return Ok(Some(v));
            }
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        batch = raw_records(client, topic, from_ms, Duration::from_secs(2)).await?;
    }
}

/// One record as read.
#[derive(Debug, Clone)]
pub(crate) struct RawRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, String)>,
}

/// Every record of `topic` written since `from_ms` that can be read within `within`.
pub(crate) async fn raw_records(
    client: &ClientConfig,
    topic: &str,
    from_ms: i64,
    within: Duration,
) -> anyhow::Result<Vec<RawRecord>> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    use rdkafka::message::{Headers as _, Message as _};
    use rdkafka::{Offset, TopicPartitionList};
    let client = client.clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<RawRecord>> {
        let consumer: BaseConsumer = client.create()?;
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .with_context(|| format!("metadata of {topic}"))?;
        let mut by_time = TopicPartitionList::new();
        for t in metadata.topics() {
            for p in t.partitions() {
                by_time.add_partition_offset(&topic, p.id(), Offset::Offset(from_ms))?;
            }
        }
        let start = consumer.offsets_for_times(by_time, Duration::from_secs(10))?;
        let mut assign = TopicPartitionList::new();
        let mut live = 0;
        for e in start.elements() {
            if let Offset::Offset(o) = e.offset() {
                assign.add_partition_offset(e.topic(), e.partition(), Offset::Offset(o))?;
                live += 1;
            }
        }
        let mut out = Vec::new();
        if live == 0 {
            return Ok(out);
        }
        consumer.assign(&assign)?;
        let deadline = Instant::now() + within;
        let mut idle = 0;
        while Instant::now() < deadline && idle < 4 {
            let Some(m) = consumer.poll(Duration::from_millis(250)) else {
                idle += 1;
                continue;
            };
            idle = 0;
            let m = m?;
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|x| {
                            (
                                x.key.to_owned(),
                                String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(RawRecord {
                partition: m.partition(),
                offset: m.offset(),
                key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                value: m.payload().map(<[u8]>::to_vec),
                headers,
            });
        }
        Ok(out)
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_psp_delay_fits_below_the_payment_timeouts() {
        // Room enough: the TTL + 15 s.
        assert_eq!(default_psp_delay(3_000, 30_000, 60_000), Some(16_500));
        assert_eq!(default_psp_delay(120_000, 150_000, 180_000), Some(135_000));
        // Scaled down to 15 s with the default 30 s PSP timeout: TTL + 7.5 s, not TTL + 15 s.
        assert_eq!(default_psp_delay(15_000, 30_000, 60_000), Some(22_500));
        // The saga's timeout bounds it too.
        assert_eq!(default_psp_delay(15_000, 60_000, 25_000), Some(20_000));
        for (ttl, psp, saga) in [(15_000, 30_000, 60_000), (1, 4, 4), (100, 103, 500)] {
            let delay = default_psp_delay(ttl, psp, saga).expect("fits");
            assert!(
                ttl < delay && delay < psp && delay < saga,
                "{ttl} {delay} {psp}"
            );
        }
        // No room: issue 13's 2 minutes with the default 30 s PSP timeout, or a 1 ms gap.
        assert_eq!(default_psp_delay(120_000, 30_000, 60_000), None);
        assert_eq!(default_psp_delay(30_000, 30_000, 60_000), None);
        assert_eq!(default_psp_delay(29_999, 30_000, 60_000), None);
    }

    #[test]
    fn the_hold_ttl_flag_is_at_least_what_keel_run_accepts() {
        assert_eq!(hold_ttl_ms_arg("15000"), Ok(15_000));
        assert_eq!(hold_ttl_ms_arg("1000"), Ok(1_000));
        for bad in ["0", "999", "-1", "x", ""] {
            assert!(hold_ttl_ms_arg(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_ttl_check_says_what_runs_and_how_to_agree() {
        assert_eq!(
            ttl_check(120_000, 120_000),
            (
                "the running Keel's [inventory].hold_ttl_ms is 120000 (--hold-ttl-ms)".to_owned(),
                true,
                "120000 ms".to_owned()
            )
        );
        let (expectation, passed, saw) = ttl_check(120_000, 3_000);
        assert!(!passed);
        assert!(expectation.contains("[inventory].hold_ttl_ms is 120000"));
        assert_eq!(
            saw,
            "keel run has 3000 ms: restart keel run with KEEL__INVENTORY__HOLD_TTL_MS=120000, \
             or pass --hold-ttl-ms 3000 here"
        );
    }

    #[test]
    fn samples_are_read_by_name_and_labels() {
        let page = "# HELP inventory_hold_ttl_ms x\n\
                    inventory_hold_ttl_ms 120000\n\
                    inventory_hold_ttl_ms_other 5\n\
                    inventory_oversell_policy{policy=\"allow\"} 0\n\
                    inventory_oversell_policy{policy=\"prevent\"} 1\n\
                    keel_dead_letters_total{application=\"a-saga\",topic=\"t\"} 2\n\
                    keel_dead_letters_total{application=\"a-saga\",topic=\"u\"} 1\n";
        assert_eq!(sample(page, "inventory_hold_ttl_ms", &[]), Some(120_000.0));
        assert_eq!(
            sample(page, "inventory_oversell_policy", &[("policy", "prevent")]),
            Some(1.0)
        );
        assert_eq!(
            sample(
                page,
                "keel_dead_letters_total",
                &[("application", "a-saga")]
            ),
            Some(3.0)
        );
        assert_eq!(sample(page, "inventory_oversell_total", &[]), None);
    }
}

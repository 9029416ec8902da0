//! What `keel bench checkout` and `keel bench inventory` share: the open-loop pacing of
//! requests over a schedule of rate steps, and the figures from per-request samples (when a
//! request was due, when its outcome arrived): per-step results, the ramp's stop window,
//! saturation and p99-within-limit rates, and the per-second series.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::checkout::{Latency, Second, Step, latency, us};
use super::cpu::{self, CpuReport};
use crate::config::KeelConfig;

/// One request of an open-loop run: when it was due (the origin of its latency) and when its
/// outcome arrived (None: never, or it failed).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) due: Instant,
    pub(crate) done: Option<Instant>,
}

impl Sample {
    /// Due → done in microseconds, when done.
    pub(crate) fn latency_us(self) -> Option<u64> {
        self.done.map(|d| us(d.saturating_duration_since(self.due)))
    }
}

/// One step's shared figures: requests due, done, their latency, and the two verdicts.
#[derive(Debug, Clone)]
pub(crate) struct StepFigures {
    pub(crate) due: u64,
    pub(crate) done: u64,
    pub(crate) latency: Latency,
    /// p99 within `p99_limit_ms` and ≥ 99 % of the step's requests done.
    pub(crate) sustained: bool,
    /// ≥ 99 % of the step's requests done within `ramp_stop_ms`.
    pub(crate) kept_up: bool,
}

/// The figures of one step's `samples` against the p99 limit and the ramp's stop latency (ms).
pub(crate) fn step_figures(
    samples: impl IntoIterator<Item = Sample>,
    p99_limit_ms: u64,
    ramp_stop_ms: u64,
) -> StepFigures {
    let mut due = 0u64;
    let mut lats = Vec::new();
    for s in samples {
        due += 1;
        lats.extend(s.latency_us());
    }
    let l = latency(lats.iter().copied());
    let done = lats.len() as u64;
    let in_time = lats.iter().filter(|us| **us <= ramp_stop_ms * 1000).count() as u64;
    StepFigures {
        due,
        done,
        sustained: due > 0 && done * 100 >= due * 99 && l.p99_ms <= p99_limit_ms as f64,
        kept_up: due > 0 && in_time * 100 >= due * 99,
        latency: l,
    }
}

/// With a ramp, `(saturation rate, p99-within-limit rate)`: the last rate of the leading steps
/// that kept up, and of those that sustained; `(None, None)` without a ramp. `steps` are
/// `(rate, kept_up, sustained)` in schedule order.
pub(crate) fn ramp_rates(
    ramp: bool,
    steps: impl IntoIterator<Item = (f64, bool, bool)>,
) -> (Option<f64>, Option<f64>) {
    if !ramp {
        return (None, None);
    }
    let (mut saturation, mut within) = (None, None);
    let (mut keeping_up, mut sustaining) = (true, true);
    for (rate, kept_up, sustained) in steps {
        keeping_up &= kept_up;
        sustaining &= sustained;
        if keeping_up {
            saturation = Some(rate);
        }
        if sustaining {
            within = Some(rate);
        }
    }
    (saturation, within)
}

/// The ramp's stop check at `now`: of the requests due in the step-long window (`step_s`
/// seconds) that ended `ramp_stop_ms` ago, `(judged, not done within ramp_stop_ms, stop)`;
/// stop when more than 1 % of those judged were late or never done.
pub(crate) fn ramp_check(
    samples: impl IntoIterator<Item = Sample>,
    ramp_stop_ms: u64,
    step_s: u64,
    now: Instant,
) -> (u64, u64, bool) {
    let window = Duration::from_millis(ramp_stop_ms);
    let (from, to) = (
        now.checked_sub(window + Duration::from_secs(step_s)),
        now.checked_sub(window),
    );
    let (mut judged, mut bad) = (0u64, 0u64);
    for s in samples {
        if from.is_some_and(|f| s.due >= f) && to.is_some_and(|t| s.due < t) {
            judged += 1;
            if s.done
                .is_none_or(|d| d.saturating_duration_since(s.due) > window)
            {
                bad += 1;
            }
        }
    }
    (judged, bad, judged > 0 && bad * 100 > judged)
}

/// Per second since `t0`: requests by the second they were due in (with their latencies), and
/// completions by the second they arrived in; every second up to the last one either names.
pub(crate) fn per_second(samples: impl IntoIterator<Item = Sample>, t0: Instant) -> Vec<Second> {
    let mut by_second: BTreeMap<u64, (u64, Vec<u64>)> = BTreeMap::new();
    let mut arrived: BTreeMap<u64, u64> = BTreeMap::new();
    for s in samples {
        let e = by_second
            .entry(s.due.saturating_duration_since(t0).as_secs())
            .or_default();
        e.0 += 1;
        if let Some(done) = s.done {
            e.1.push(us(done.saturating_duration_since(s.due)));
            *arrived
                .entry(done.saturating_duration_since(t0).as_secs())
                .or_insert(0) += 1;
        }
    }
    let last_sec = by_second
        .keys()
        .chain(arrived.keys())
        .max()
        .copied()
        .unwrap_or(0);
    (0..=last_sec)
        .map(|t| {
            let (due, lats) = by_second.get(&t).cloned().unwrap_or_default();
            let l = latency(lats.iter().copied());
            Second {
                t,
                due,
                confirmed: lats.len() as u64,
                confirmed_arrived: arrived.get(&t).copied().unwrap_or(0),
                p50_ms: l.p50_ms,
                p99_ms: l.p99_ms,
                max_ms: l.max_ms,
            }
        })
        .collect()
}

/// The measured part of a run.
#[derive(Debug, Clone)]
pub(crate) struct Measured {
    /// When the first step started: the origin of the per-second series.
    pub(crate) t0: Instant,
    /// When the last step's time was over.
    pub(crate) last_due: Instant,
    /// The steps run (a ramp stopped early runs fewer than planned).
    pub(crate) steps_run: Vec<Step>,
    pub(crate) ramp_stopped_early: bool,
}

/// The requests a [`Pacer`] sends: how each is recorded, refused and sent.
pub(crate) trait Requests {
    /// Records a request due at `due` in schedule step `step` (None: the warm-up); its index.
    fn due(&mut self, due: Instant, step: Option<usize>) -> usize;
    /// Request `i` found the in-flight limit full: record it as failed.
    fn refused(&mut self, i: usize);
    /// Sends request `i` (run in a task of its own).
    fn send(&mut self, i: usize) -> impl Future<Output = ()> + Send + 'static;
}

/// Sends requests on schedule, each in its own task, at most `max_in_flight` at once (one
/// more is refused, never queued: the schedule stays open-loop).
#[derive(Debug)]
pub(crate) struct Pacer {
    in_flight: Arc<tokio::sync::Semaphore>,
    tasks: tokio::task::JoinSet<()>,
}

impl Pacer {
    pub(crate) fn new(max_in_flight: usize) -> Self {
        Self {
            in_flight: Arc::new(tokio::sync::Semaphore::new(max_in_flight.max(1))),
            tasks: tokio::task::JoinSet::new(),
        }
    }

    /// Sends `step.orders()` requests due `1/rate` apart from `start` (late ticks are sent at
    /// once, never skipped); returns when the step's time is over.
    pub(crate) async fn run(
        &mut self,
        requests: &mut impl Requests,
        step: Step,
        index: Option<usize>,
        start: Instant,
    ) -> Instant {
        let period = Duration::from_secs_f64(1.0 / step.rate);
        let mut interval = tokio::time::interval_at(start.into(), period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        for _ in 0..step.orders() {
            let due = interval.tick().await.into_std();
            let i = requests.due(due, index);
            let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
                requests.refused(i);
                continue;
            };
            let send = requests.send(i);
            self.tasks.spawn(async move {
                let _permit = permit;
                send.await;
            });
            while self.tasks.try_join_next().is_some() {}
        }
        start + Duration::from_secs(step.seconds)
    }

    /// The warm-up (not measured): `warmup` from now, then until its time is over.
    pub(crate) async fn warm_up(
        &mut self,
        requests: &mut impl Requests,
        warmup: Step,
        progress: &indicatif::ProgressBar,
    ) {
        if warmup.orders() > 0 {
            progress.set_prefix("warming up");
            let end = self.run(requests, warmup, None, Instant::now()).await;
            tokio::time::sleep_until(end.into()).await;
        }
    }

    /// The measured steps from 10 ms from now, one after the other. With `ramp`, after each
    /// step but the last `stop_after(step)` says whether to stop the ramp there.
    pub(crate) async fn measure(
        &mut self,
        requests: &mut impl Requests,
        steps: &[Step],
        ramp: bool,
        mut stop_after: impl FnMut(&Step) -> bool,
    ) -> Measured {
        let t0 = Instant::now() + Duration::from_millis(10);
        let mut step_start = t0;
        let mut ramp_stopped_early = false;
        let mut steps_run = Vec::new();
        for (s, step) in steps.iter().enumerate() {
            steps_run.push(*step);
            step_start = self.run(requests, *step, Some(s), step_start).await;
            if ramp && s + 1 < steps.len() && stop_after(step) {
                ramp_stopped_early = true;
                break;
            }
        }
        Measured {
            t0,
            last_due: Instant::now(),
            steps_run,
            ramp_stopped_early,
        }
    }

    /// The requests still running.
    pub(crate) fn into_tasks(self) -> tokio::task::JoinSet<()> {
        self.tasks
    }
}

/// A summary row: label, value (the benches' `render` closure).
pub(crate) type Row<'a> = dyn FnMut(&str, String) + 'a;

/// A schedule as `rate x seconds` pairs: "100x10 200x10".
pub(crate) fn schedule_text(schedule: &[(f64, u64)]) -> String {
    schedule
        .iter()
        .map(|(rate, s)| format!("{rate:.0}x{s}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One step's line of the summary.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StepLine<'a> {
    pub(crate) rate: f64,
    pub(crate) seconds: u64,
    pub(crate) done: u64,
    pub(crate) due: u64,
    pub(crate) latency: &'a Latency,
    pub(crate) sustained: bool,
    pub(crate) kept_up: bool,
}

/// The steps' rows, `unit` per second ("orders"), `done_word` for the count ("confirmed"),
/// latencies with `decimals` digits.
pub(crate) fn step_rows<'a>(
    row: &mut Row<'_>,
    unit: &str,
    done_word: &str,
    decimals: usize,
    steps: impl IntoIterator<Item = StepLine<'a>>,
) {
    for st in steps {
        row(
            &format!("  step {:.0} {unit}/s x {} s", st.rate, st.seconds),
            format!(
                "{done_word} {}/{}, p50 {:.decimals$} ms, p99 {:.decimals$} ms{}{}",
                st.done,
                st.due,
                st.latency.p50_ms,
                st.latency.p99_ms,
                if st.sustained {
                    ""
                } else {
                    ", p99 over the limit"
                },
                if st.kept_up { "" } else { ", NOT kept up" }
            ),
        );
    }
}

/// A ramp's two rates (nothing without a ramp), in `unit` per second.
pub(crate) fn ramp_rows(
    row: &mut Row<'_>,
    ramp: bool,
    unit: &str,
    saturation: Option<f64>,
    within_limit: Option<f64>,
) {
    if !ramp {
        return;
    }
    let rate = |r: Option<f64>| r.map_or_else(|| "none".to_owned(), |s| format!("{s:.0} {unit}/s"));
    row("saturation (highest rate kept up with)", rate(saturation));
    row("highest rate with p99 within the limit", rate(within_limit));
}

/// The machine's CPU and every watched process's, with its idle share when measured.
pub(crate) fn cpu_rows(row: &mut Row<'_>, cpu: &CpuReport, idle: Option<&CpuReport>) {
    row(
        "machine CPU busy",
        cpu.machine_busy_percent.map_or_else(
            || "?".to_owned(),
            |b| {
                format!(
                    "{b:.0} % of {} cores over {:.1} s",
                    cpu.cores, cpu.wall_seconds
                )
            },
        ),
    );
    for p in &cpu.processes {
        let idle = idle
            .and_then(|i| i.processes.iter().find(|q| q.pid == p.pid))
            .map(|q| format!(" (idle: {:.0} %)", q.percent_of_one_core))
            .unwrap_or_default();
        row(
            &format!("  cpu {} (pid {})", p.name, p.pid),
            format!(
                "{:.1} s = {:.0} % of one core{idle}",
                p.cpu_seconds, p.percent_of_one_core
            ),
        );
    }
}

/// Adds the stack's servers and this process to `watched` (after the benches' own).
pub(crate) fn watch_stack_and_self(watched: &mut Vec<cpu::Watched>) {
    for (name, pid) in cpu::stack_pids(&cpu::stack_pid_dir()) {
        watched.push(cpu::Watched { name, pid });
    }
    watched.push(cpu::Watched {
        name: "keel bench (this process)".into(),
        pid: std::process::id(),
    });
}

/// The run's progress bar over `planned` requests, counted as `what` (hidden with `hidden`).
pub(crate) fn progress_bar(
    hidden: bool,
    planned: u64,
    what: &str,
) -> anyhow::Result<indicatif::ProgressBar> {
    let progress = if hidden {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(planned)
    };
    progress.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{spinner}} {{prefix}} [{{elapsed_precise}}] {{bar:30}} {{pos}}/{{len}} {what}  {{msg}}"
        ))?
        .progress_chars("=> "),
    );
    Ok(progress)
}

/// A read-committed consumer of group `group` (no commits) assigned to every partition of
/// `topics` at its current end: it sees only what comes after the call. An error when a topic
/// has no partitions (`runner`: what should be running with this prefix, for the message).
pub(crate) fn consumer_at_ends(
    config: &KeelConfig,
    group: &str,
    topics: &[&str],
    runner: &str,
) -> anyhow::Result<StreamConsumer> {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", &config.kafka.bootstrap_servers);
    for (k, v) in &config.kafka.client {
        client.set(k, v);
    }
    client
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "10");
    let consumer: StreamConsumer = client.create()?;
    let mut tpl = TopicPartitionList::new();
    for &topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .with_context(|| format!("metadata of {topic}"))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        anyhow::ensure!(
            !partitions.is_empty(),
            "{topic} has no partitions: is {runner} running with this topic prefix?"
        );
        for p in partitions {
            let (_, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .with_context(|| format!("the end of {topic}/{p}"))?;
            tpl.add_partition_offset(topic, p, Offset::Offset(high))?;
        }
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}

/// The next message of `consumer` and when it arrived; None once `stop` is cancelled. A read
/// error is logged (`what`: what is being read) and skipped.
pub(crate) async fn next_message<'c>(
    consumer: &'c StreamConsumer,
    stop: &CancellationToken,
    what: &str,
) -> Option<(BorrowedMessage<'c>, Instant)> {
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => return None,
            m = consumer.recv() => m,
        };
        let at = Instant::now();
        match message {
            Ok(m) => return Some((m, at)),
            Err(e) => tracing::warn!(error = %e, "{what}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn a_step_with_one_in_a_hundred_undone_is_sustained_and_two_are_not() {
        let t0 = Instant::now();
        let samples = |undone: u64| {
            (0..100u64).map(move |i| Sample {
                due: at(t0, i),
                done: (i >= undone).then(|| at(t0, i + 5)),
            })
        };
        let one = step_figures(samples(1), 10, 100);
        assert_eq!((one.due, one.done), (100, 99));
        assert!(one.sustained && one.kept_up);
        let two = step_figures(samples(2), 10, 100);
        assert!(!two.sustained && !two.kept_up);
        let slow = step_figures(samples(0), 1, 100);
        assert!(
            !slow.sustained && slow.kept_up,
            "p99 of 5 ms over a 1 ms limit"
        );
    }

    #[test]
    fn ramp_rates_stop_at_the_first_failing_step() {
        let steps = [(10.0, true, true), (20.0, true, false), (30.0, false, true)];
        assert_eq!(ramp_rates(true, steps), (Some(20.0), Some(10.0)));
        assert_eq!(ramp_rates(false, steps), (None, None));
        assert_eq!(ramp_rates(true, [(10.0, false, false)]), (None, None));
    }

    #[test]
    fn per_second_counts_due_and_arrivals_in_their_own_seconds() {
        let t0 = Instant::now();
        let s = per_second(
            [
                Sample {
                    due: at(t0, 100),
                    done: Some(at(t0, 2_100)),
                },
                Sample {
                    due: at(t0, 200),
                    done: None,
                },
            ],
            t0,
        );
        assert_eq!(s.len(), 3);
        assert_eq!(
            (s[0].due, s[0].confirmed, s[0].confirmed_arrived),
            (2, 1, 0)
        );
        assert_eq!((s[2].due, s[2].confirmed_arrived), (0, 1));
        assert!((s[0].max_ms - 2000.0).abs() < 5.0, "{}", s[0].max_ms);
    }
}

//! docs/BENCHMARKS.md's benchmark commands, read from the doc when the test runs and run scaled
//! down (a benchmark is measured, never tested: these prove each command line works end to end,
//! not a speed). What changes in a command, and nothing else:
//!
//! - the binary: `~/.cache/keel/target/release/keel`, `$K` and `keel` → the `keel` this test
//!   was built with (`bench/checkout-run` gets it as `KEEL_BIN`, which the script reads);
//! - the size flags it has get tiny values (`--records`, `--keys`, `--rate`, `--duration-s`,
//!   `--latency-seconds`, `--rounds`, `--ramp-*` steps), and those that make a run quick are
//!   added when missing (`--records 3000 --keys 3000 --latency-seconds 1 --rate 300` for the
//!   engine; warm-up, drain and progress flags for the open-loop benches); every other flag
//!   (`--commit-interval-ms`, `--hot-share`, `--skus`, `--ramp-stop-ms`, `--vs kafka-streams`,
//!   `KEEL__…=` prefixes) is kept as written;
//! - `--out-dir` and perf's `-o`/`-i` files → a temporary directory (and `HOME`, for perf's
//!   build-id cache, so the profiled binary is not kept in `~/.debug`);
//! - the state store's `store_path` example runs from the debug build (`--release` dropped) on
//!   3,000 records.
//!
//! Commands that come out the same after scaling run once. `--vs kafka-streams` needs Maven and
//! Java (skipped without them or with `KEEL_SKIP_KSTREAMS=1`, as `tests/cli/bench_checkout.rs`).

mod docs_extract;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use keel_tests::Stack;
use keel_tests::topics::{TopicCleanup, list_topics};

const DOC: &str = "docs/BENCHMARKS.md";
const RELEASE_KEEL: &str = "~/.cache/keel/target/release/keel";

/// Flags whose value is replaced, and by what.
const TINY: [(&str, &str); 11] = [
    ("--records", "3000"),
    ("--keys", "3000"),
    ("--latency-seconds", "1"),
    ("--rounds", "1"),
    ("--duration-s", "3"),
    ("--ramp-start", "4"),
    ("--ramp-step", "4"),
    ("--ramp-step-s", "2"),
    ("--ramp-max", "8"),
    ("--warmup-s", "1"),
    ("--rate", "RATE"),
];

/// The words of `command` with the binary replaced and the size flags scaled; `added` flags
/// appended when the command does not have them.
fn scaled(command: &str, keel: &str, rate: &str, added: &[(&str, &str)]) -> Vec<String> {
    let mut words: Vec<String> = command
        .split_whitespace()
        .map(|w| match w {
            RELEASE_KEEL | "$K" | "keel" => keel.to_owned(),
            _ => w.to_owned(),
        })
        .collect();
    let mut i = 0;
    while i + 1 < words.len() {
        if let Some((_, v)) = TINY.iter().find(|(f, _)| *f == words[i]) {
            words[i + 1] = if *v == "RATE" { rate } else { v }.to_owned();
            i += 1;
        }
        i += 1;
    }
    for (flag, value) in added {
        if !words.iter().any(|w| w == flag) {
            words.push((*flag).to_owned());
            if !value.is_empty() {
                words.push((*value).to_owned());
            }
        }
    }
    words
}

/// A command's words in an order that does not depend on where a flag stands (flags and their
/// values keep their pairing), for running each scaled command once.
fn canonical(words: &[String]) -> Vec<String> {
    let mut pairs: Vec<String> = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let takes_value =
            words[i].starts_with("--") && words.get(i + 1).is_some_and(|v| !v.starts_with("--"));
        if takes_value {
            pairs.push(format!("{} {}", words[i], words[i + 1]));
            i += 2;
        } else {
            pairs.push(words[i].clone());
            i += 1;
        }
    }
    pairs.sort();
    pairs
}

fn kstreams_available() -> bool {
    if std::env::var_os("KEEL_SKIP_KSTREAMS").is_some() {
        return false;
    }
    ["mvn", "java"].iter().all(|tool| {
        Command::new(tool)
            .arg("-version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// Runs `words` (assignments first, then the program) with bash from the repository root; the
/// combined output. Panics naming the doc's command when it fails.
fn run_words(doc_command: &str, words: &[String], env: &[(&str, &str)]) -> String {
    let line = words.join(" ");
    eprintln!("$ {line}    # {DOC}: {doc_command}");
    let start = Instant::now();
    let out = Command::new("bash")
        .args(["-c", &line])
        .current_dir(docs_extract::repo())
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .output()
        .expect("bash runs");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{printed}[{} after {:?}]", out.status, start.elapsed());
    assert!(
        out.status.success(),
        "{DOC}: `{doc_command}`, scaled down to `{line}`, failed:\n{printed}"
    );
    printed
}

fn keel_bin() -> String {
    env!("CARGO_BIN_EXE_keel").to_owned()
}

/// One benchmark run's name, which every topic of the run contains, and the prefixes of its
/// topics.
#[derive(Debug)]
struct RunTopics {
    name: String,
    prefixes: Vec<String>,
}

/// The runs `printed` announces: `keel bench engine`'s (`[bench] keel: run 0a1b2c3d, topics
/// bench-in-0a1b2c3d*, bench-out-0a1b2c3d*, bench-0a1b2c3d-*`) and `bench/checkout-run`'s
/// (`[checkout-run] keel_bench_…: API …`, topics `<name>.…` and `<name>-…`).
fn runs_in(printed: &str) -> Vec<RunTopics> {
    printed
        .lines()
        .filter_map(|line| {
            if let Some(rest) = line.strip_prefix("[bench] ") {
                let (tag, topics) = rest.split_once(": run ")?.1.split_once(", topics ")?;
                Some(RunTopics {
                    name: tag.to_owned(),
                    prefixes: topics
                        .split(", ")
                        .map(|p| p.trim_end_matches('*').to_owned())
                        .collect(),
                })
            } else {
                let rest = line.strip_prefix("[checkout-run] ")?;
                let name = rest.split_once(": API ")?.0;
                Some(RunTopics {
                    name: name.to_owned(),
                    prefixes: vec![format!("{name}."), format!("{name}-")],
                })
            }
        })
        .collect()
}

/// Asserts that no topic whose name contains a run's name is left on `bootstrap` (the broker's
/// metadata may take a moment to show a deletion: up to 10 s). What is left is deleted
/// afterwards, so a failure does not leak it.
fn assert_no_topics_left(bootstrap: &str, runs: &[RunTopics]) {
    assert!(!runs.is_empty(), "no benchmark run announced its topics");
    let _leftovers = runs
        .iter()
        .flat_map(|r| r.prefixes.iter())
        .fold(TopicCleanup::new(bootstrap), |c, p| c.prefix(p.as_str()));
    let within = Duration::from_secs(10);
    let start = Instant::now();
    loop {
        let left: Vec<String> = list_topics(bootstrap, within)
            .expect("the topics")
            .into_iter()
            .filter(|t| runs.iter().any(|r| t.contains(r.name.as_str())))
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < within,
            "the runs {runs:?} left {} topics: {left:?}",
            left.len()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn doc_commands() -> Vec<String> {
    docs_extract::all_commands()
        .into_iter()
        .filter(|c| c.doc == DOC && c.fenced)
        .map(|c| c.text)
        .collect()
}

#[test]
fn the_engine_benchmark_commands_run_scaled_down() {
    let bootstrap = Stack::from_env().kafka_bootstrap;
    let keel = keel_bin();
    let kstreams = kstreams_available();
    let mut seen = BTreeSet::new();
    let engine: Vec<String> = doc_commands()
        .into_iter()
        .filter(|c| c.contains(" bench engine") && !c.starts_with("perf "))
        .collect();
    assert!(engine.len() >= 5, "{DOC}: {engine:?}");
    let mut runs = Vec::new();
    for command in &engine {
        let words = scaled(
            command,
            &keel,
            "300",
            &[
                ("--records", "3000"),
                ("--keys", "3000"),
                ("--latency-seconds", "1"),
                ("--rate", "300"),
            ],
        );
        if words.iter().any(|w| w == "kafka-streams") && !kstreams {
            eprintln!("skipped (no mvn/java, or KEEL_SKIP_KSTREAMS): {command}");
            continue;
        }
        if seen.insert(canonical(&words)) {
            let printed = run_words(
                command,
                &words,
                &[("KEEL__KAFKA__BOOTSTRAP_SERVERS", &bootstrap)],
            );
            assert!(
                printed.contains("records/s"),
                "no throughput in:\n{printed}"
            );
            runs.extend(runs_in(&printed));
        }
    }
    assert_no_topics_left(&bootstrap, &runs);
}

#[test]
fn the_engine_benchmark_deletes_every_topic_of_its_run() {
    let bootstrap = Stack::from_env().kafka_bootstrap;
    let command = "keel bench engine --records 3000 --keys 3000 --latency-seconds 1 --rate 300";
    let words = scaled(command, &keel_bin(), "300", &[]);
    let printed = run_words(
        command,
        &words,
        &[("KEEL__KAFKA__BOOTSTRAP_SERVERS", &bootstrap)],
    );
    let runs = runs_in(&printed);
    assert_eq!(runs.len(), 1, "one run announced in:\n{printed}");
    assert_no_topics_left(&bootstrap, &runs);
}

#[test]
fn bench_checkout_run_deletes_every_topic_of_its_run() {
    let stack = Stack::from_env();
    let keel = keel_bin();
    let dir = tempfile::tempdir().expect("an output directory");
    let command = format!(
        "bench/checkout-run --rate 4 --duration-s 3 --skus 3 --warmup-s 1 --drain-timeout-s 90 \
         --idle-s 1 --no-progress --out-dir {}",
        dir.path().display()
    );
    let words = scaled(&command, &keel, "4", &[]);
    let printed = run_words(
        &command,
        &words,
        &[
            ("KEEL_BIN", &keel),
            ("KEEL__KAFKA__BOOTSTRAP_SERVERS", &stack.kafka_bootstrap),
        ],
    );
    let runs = runs_in(&printed);
    assert_eq!(runs.len(), 1, "one run announced in:\n{printed}");
    assert_no_topics_left(&stack.kafka_bootstrap, &runs);
}

#[test]
fn the_profile_recipe_runs_scaled_down() {
    let bootstrap = Stack::from_env().kafka_bootstrap;
    let keel = keel_bin();
    let dir = tempfile::tempdir().expect("a directory");
    let data = dir.path().join("base.data");
    let home = dir.path().display().to_string();
    let perf: Vec<String> = doc_commands()
        .into_iter()
        .filter(|c| c.starts_with("perf "))
        .collect();
    assert!(
        perf.first().is_some_and(|c| c.starts_with("perf record")) && perf.len() >= 2,
        "{DOC}: {perf:?}"
    );
    let doc_data = perf[0]
        .split_whitespace()
        .skip_while(|w| *w != "-o")
        .nth(1)
        .expect("perf record -o FILE")
        .to_owned();
    for command in &perf {
        let command_here = command.replace(&doc_data, &data.display().to_string());
        let words = scaled(&command_here, &keel, "300", &[]);
        let printed = run_words(
            command,
            &words,
            &[
                ("KEEL__KAFKA__BOOTSTRAP_SERVERS", &bootstrap),
                // perf's build-id cache (~/.debug: a copy of each profiled binary, 130 MB for a
                // debug keel) goes with the temporary directory.
                ("HOME", &home),
            ],
        );
        // The first report (samples by thread) has shares at any size; a filtered one may be
        // empty on a tiny run.
        if command.starts_with("perf report") && command == &perf[1] {
            assert!(
                printed.contains('%'),
                "perf report shows no shares:\n{printed}"
            );
        }
    }
}

#[test]
fn the_store_path_example_runs_scaled_down() {
    let commands: Vec<String> = doc_commands()
        .into_iter()
        .filter(|c| c.contains("--example store_path"))
        .collect();
    let [command] = commands.as_slice() else {
        panic!("{DOC}: one store_path command, got {commands:?}");
    };
    // A debug build (CI has one; a release build of the example takes minutes) and 3,000 records
    // instead of the doc's count: the command is checked, not the figure.
    let mut words: Vec<String> = command
        .split_whitespace()
        .filter(|w| *w != "--release")
        .map(str::to_owned)
        .collect();
    let count = words.last_mut().expect("the record count");
    assert!(count.parse::<u64>().is_ok(), "{DOC}: {command}");
    *count = "3000".to_owned();
    let printed = run_words(command, &words, &[]);
    assert!(
        printed.contains("3000 records (3000 changelog records)"),
        "every record's write drained once:\n{printed}"
    );
}

#[test]
fn the_checkout_and_inventory_benchmark_commands_run_scaled_down() {
    let keel = keel_bin();
    let dir = tempfile::tempdir().expect("an output directory");
    let out_dir = dir.path().display().to_string();
    let mut seen = BTreeSet::new();
    let commands: Vec<String> = doc_commands()
        .into_iter()
        .filter(|c| c.contains("bench/checkout-run") || c.contains(" bench inventory"))
        .collect();
    assert!(commands.len() >= 8, "{DOC}: {commands:?}");
    let stack = Stack::from_env();
    let mut runs = Vec::new();
    for command in &commands {
        let checkout = command.contains("bench/checkout-run");
        let mut added: Vec<(&str, &str)> = vec![
            ("--out-dir", &out_dir),
            ("--warmup-s", "1"),
            ("--drain-timeout-s", "90"),
            ("--no-progress", ""),
        ];
        if checkout {
            added.push(("--idle-s", "1"));
        } else {
            added.push(("--store-timeout-s", "60"));
        }
        if command.contains("--ramp") {
            added.extend([
                ("--ramp-start", "4"),
                ("--ramp-step", "4"),
                ("--ramp-step-s", "2"),
                ("--ramp-max", "8"),
            ]);
        }
        let mut words = scaled(command, &keel, "4", &added);
        if let Some(i) = words.iter().position(|w| w == "--out-dir") {
            words[i + 1] = out_dir.clone();
        }
        if seen.insert(canonical(&words)) {
            let printed = run_words(
                command,
                &words,
                &[
                    ("KEEL_BIN", &keel),
                    ("KEEL__KAFKA__BOOTSTRAP_SERVERS", &stack.kafka_bootstrap),
                ],
            );
            if checkout {
                runs.extend(runs_in(&printed));
            }
        }
    }
    assert_no_topics_left(&stack.kafka_bootstrap, &runs);
    let written = std::fs::read_dir(Path::new(&out_dir))
        .expect("the output directory")
        .count();
    assert!(
        written >= 2,
        "the benches wrote {written} files into {out_dir}"
    );
}

//! "Every command shown in the docs is run by a test or by CI" (issue 13), checked: every command
//! of README.md and docs/*.md (`docs_extract`: shell blocks and inline `keel …`/`make …`/`curl …`
//! spans, read from the markdown when the test runs) must match an entry of
//! `tests/docs_commands.toml`, and each entry must hold:
//!
//! - `by`, the test or CI file that runs the command, exists and contains every `evidence`
//!   string (the arguments it passes, or the doc heading it extracts the block from);
//! - the entry matches at least one command of the docs (no entry outlives its command).
//!
//! `[[not_run]]` entries name the few commands no test can run here, with the reason; they are
//! listed by the test's output. A doc that gains a command no entry covers fails the test,
//! naming the doc, line and command. Needs no stack.

mod docs_extract;

use docs_extract::{DocCommand, all_commands, matches, read};
use serde::Deserialize;

const MANIFEST: &str = "tests/docs_commands.toml";

#[derive(Debug, Deserialize)]
struct Manifest {
    #[serde(default)]
    run: Vec<Entry>,
    #[serde(default)]
    not_run: Vec<Entry>,
}

/// One manifest entry: the commands it covers and who runs them (or why none does).
#[derive(Debug, Deserialize)]
struct Entry {
    /// Patterns over the command's text (`*`: any text).
    commands: Vec<String>,
    /// Only commands of these docs (default: any doc).
    #[serde(default)]
    docs: Vec<String>,
    /// Only commands under this heading (`## A checkout by hand`).
    #[serde(default)]
    section: Option<String>,
    /// Only commands of shell blocks (true) or only inline ones (false).
    #[serde(default)]
    fenced: Option<bool>,
    /// The file that runs them (a test, `.ci/run`, `Makefile`).
    #[serde(default)]
    by: Option<String>,
    /// Texts `by` must contain: how it runs the command.
    #[serde(default)]
    evidence: Vec<String>,
    /// As written, scaled down, extracted from the doc, ...; or, for `not_run`, why not.
    how: String,
}

impl Entry {
    fn covers(&self, c: &DocCommand) -> bool {
        (self.docs.is_empty() || self.docs.contains(&c.doc))
            && self.section.as_ref().is_none_or(|s| *s == c.section)
            && self.fenced.is_none_or(|f| f == c.fenced)
            && self.commands.iter().any(|p| matches(p, &c.text))
    }

    fn label(&self) -> String {
        format!(
            "{:?}{}{}",
            self.commands,
            if self.docs.is_empty() {
                String::new()
            } else {
                format!(" in {:?}", self.docs)
            },
            self.section
                .as_ref()
                .map(|s| format!(" under {s:?}"))
                .unwrap_or_default()
        )
    }
}

fn manifest(text: &str) -> Manifest {
    use figment::Figment;
    use figment::providers::{Format, Toml};
    Figment::from(Toml::string(text))
        .extract()
        .unwrap_or_else(|e| panic!("{MANIFEST}: {e}"))
}

/// What is wrong with `manifest` for `commands`, one line each; empty when every command is
/// covered by an entry whose file holds its evidence and every entry covers something.
fn problems(
    manifest: &Manifest,
    commands: &[DocCommand],
    read_file: &dyn Fn(&str) -> Option<String>,
) -> Vec<String> {
    let mut out = Vec::new();
    for c in commands {
        let run = manifest.run.iter().any(|e| e.covers(c));
        let exempt = manifest.not_run.iter().any(|e| e.covers(c));
        if !run && !exempt {
            out.push(format!(
                "{}:{}: `{}` ({}) is run by no test or CI: add a test that runs it (or fix \
                 the doc), and an entry to {MANIFEST}",
                c.doc,
                c.line,
                c.text,
                if c.fenced { "shell block" } else { "inline" }
            ));
        }
    }
    for e in &manifest.run {
        let Some(by) = &e.by else {
            out.push(format!("{MANIFEST}: {} has no `by`", e.label()));
            continue;
        };
        match read_file(by) {
            None => out.push(format!(
                "{MANIFEST}: {} names {by}, which does not exist",
                e.label()
            )),
            Some(text) => {
                for ev in &e.evidence {
                    if !text.contains(ev.as_str()) {
                        out.push(format!(
                            "{MANIFEST}: {} says {by} runs it, but {by} has no {ev:?}",
                            e.label()
                        ));
                    }
                }
            }
        }
        if e.evidence.is_empty() {
            out.push(format!("{MANIFEST}: {} has no evidence", e.label()));
        }
    }
    for e in manifest.run.iter().chain(&manifest.not_run) {
        if !commands.iter().any(|c| e.covers(c)) {
            out.push(format!(
                "{MANIFEST}: {} matches no command of the docs (stale: remove or update it)",
                e.label()
            ));
        }
    }
    out
}

fn repo_file(path: &str) -> Option<String> {
    std::fs::read_to_string(docs_extract::path(path)).ok()
}

#[test]
fn every_command_in_the_docs_is_run_by_a_test_or_ci() {
    let commands = all_commands();
    let manifest = manifest(&read(MANIFEST));
    for c in &commands {
        let by: Vec<String> = manifest
            .run
            .iter()
            .filter(|e| e.covers(c))
            .map(|e| format!("{} ({})", e.by.as_deref().unwrap_or("?"), e.how))
            .chain(
                manifest
                    .not_run
                    .iter()
                    .filter(|e| e.covers(c))
                    .map(|e| format!("NOT RUN: {}", e.how)),
            )
            .collect();
        eprintln!("{}:{}: {}\n    -> {}", c.doc, c.line, c.text, by.join("; "));
    }
    // The extraction itself: a regression in it must not empty the list and pass.
    for (doc, at_least) in [
        ("README.md", 30),
        ("docs/operations.md", 20),
        ("docs/scenarios.md", 10),
        ("docs/BENCHMARKS.md", 20),
    ] {
        let n = commands.iter().filter(|c| c.doc == doc).count();
        assert!(n >= at_least, "only {n} commands found in {doc}");
    }
    let problems = problems(&manifest, &commands, &repo_file);
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// The check can fail: a doc with a command no entry covers, an entry whose file lacks its
/// evidence, and an entry that covers nothing are each reported.
#[test]
fn the_guard_reports_an_unrun_command_missing_evidence_and_a_stale_entry() {
    let doc = "# Doc\n\nRun `keel reset --application-id x` first.\n\n```sh\nkeel lag --once   # lag\n\
               keel frobnicate --all \\\n  --now\n```\n";
    let commands = docs_extract::commands_in("docs/fake.md", doc);
    let texts: Vec<&str> = commands.iter().map(|c| c.text.as_str()).collect();
    assert_eq!(
        texts,
        [
            "keel reset --application-id x",
            "keel lag --once",
            "keel frobnicate --all --now"
        ]
    );
    let manifest = manifest(
        r#"
[[run]]
commands = ["keel reset --application-id *"]
by = "tests/cli/reset.rs"
evidence = ["\"reset\""]
how = "as written"

[[run]]
commands = ["keel lag --once"]
by = "tests/cli/checkout.rs"
evidence = ["no such text in checkout.rs"]
how = "as written"

[[not_run]]
commands = ["keel scenario never-shown"]
how = "stale"
"#,
    );
    let files = |p: &str| {
        (p == "tests/cli/reset.rs" || p == "tests/cli/checkout.rs").then(|| {
            if p.ends_with("reset.rs") {
                "run(&[\"reset\", ...])".to_owned()
            } else {
                "lag".to_owned()
            }
        })
    };
    let found = problems(&manifest, &commands, &files);
    assert_eq!(found.len(), 3, "{found:#?}");
    assert!(
        found[0].contains("docs/fake.md:7: `keel frobnicate --all --now`"),
        "{found:#?}"
    );
    assert!(
        found[1].contains("has no \"no such text in checkout.rs\""),
        "{found:#?}"
    );
    assert!(
        found[2].contains("never-shown") && found[2].contains("stale"),
        "{found:#?}"
    );
}

#[test]
fn patterns_match_the_whole_command() {
    assert!(matches("keel lag*", "keel lag --once"));
    assert!(matches("keel lag --once", "keel lag --once"));
    assert!(!matches("keel lag", "keel lag --once"));
    assert!(matches(
        "* bench engine --records *",
        "$K bench engine --records 5 --keys 5"
    ));
    assert!(!matches("keel*--json", "keel audit"));
    assert!(matches("*", "anything"));
}

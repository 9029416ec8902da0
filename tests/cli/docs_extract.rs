//! The commands a user is shown in README.md and docs/*.md (not docs/adr/), read from the
//! markdown: every command of a fenced shell block (```` ```sh ````, `bash`, `shell`, `console`
//! (its `$ ` lines) or a fence without a language) and every inline code span that starts with a
//! command (`keel …`, `make …`, `stack/keel-stack …`, `curl …`, …) and has at least one word
//! after it. Shared by the guard (`docs_commands.rs`) and the tests that run doc blocks as
//! written (`docs_scenarios.rs`, `docs_operations.rs`, `docs_bench.rs`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// A fenced block's language that holds commands to type.
const SHELL_FENCES: [&str; 5] = ["", "sh", "bash", "shell", "console"];

/// The first word of an inline span that makes it a command (a path ending in `/keel` too).
const COMMAND_WORDS: [&str; 15] = [
    "keel",
    "make",
    "stack/keel-stack",
    "keel-stack",
    "curl",
    "scripts/demo",
    "scripts/cargo",
    "scripts/bootstrap",
    "scripts/rocksdb",
    "bench/checkout-run",
    "bench/kstreams-reference/build",
    "docker",
    "cargo",
    "perf",
    "kill",
];

/// One command as a doc shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocCommand {
    /// The doc, relative to the repository (`README.md`, `docs/operations.md`).
    pub doc: String,
    /// The line the command starts on (1-based).
    pub line: usize,
    /// The heading above it (`## Reset and replay`), "" before the first.
    pub section: String,
    /// The command with comments dropped, continuations joined and whitespace collapsed.
    pub text: String,
    /// From a fenced block (else an inline span).
    pub fenced: bool,
}

/// The repository root (the keel crate's manifest directory).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and docs/*.md, relative to the repository, sorted.
pub fn doc_files() -> Vec<String> {
    let mut docs = vec!["README.md".to_owned()];
    let mut more: Vec<String> = std::fs::read_dir(repo().join("docs"))
        .expect("docs/")
        .map(|e| e.expect("a docs/ entry").path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "md"))
        .map(|p| format!("docs/{}", p.file_name().expect("a name").to_string_lossy()))
        .collect();
    more.sort();
    docs.extend(more);
    docs
}

/// Every command of every doc.
pub fn all_commands() -> Vec<DocCommand> {
    doc_files()
        .iter()
        .flat_map(|doc| {
            let text = std::fs::read_to_string(repo().join(doc)).expect("a doc");
            commands_in(doc, &text)
        })
        .collect()
}

/// The commands of one doc's `text`.
pub fn commands_in(doc: &str, text: &str) -> Vec<DocCommand> {
    let mut out = Vec::new();
    let mut section = String::new();
    // Inside a fence: its language.
    let mut fence: Option<String> = None;
    // The command being read in a shell fence, and its first line.
    let mut pending = String::new();
    let mut pending_line = 0;
    // The paragraph outside fences being collected for inline spans, and its first line.
    let mut para = String::new();
    let mut para_line = 0;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let trimmed = raw.trim();
        if let Some(lang) = trimmed.strip_prefix("```") {
            match fence.take() {
                None => {
                    inline_commands(doc, &section, para_line, &para, &mut out);
                    para.clear();
                    fence = Some(lang.trim().to_owned());
                }
                Some(_) => {
                    assert!(
                        pending.trim().is_empty(),
                        "{doc}:{pending_line}: a shell block ends inside a command: {pending}"
                    );
                    pending.clear();
                }
            }
            continue;
        }
        match &fence {
            Some(lang) if SHELL_FENCES.contains(&lang.as_str()) => {
                let line = if lang == "console" {
                    match trimmed.strip_prefix("$ ") {
                        Some(cmd) => cmd,
                        None if pending.is_empty() => continue,
                        None => raw,
                    }
                } else {
                    raw
                };
                if pending.is_empty() {
                    pending_line = n;
                }
                pending.push_str(line);
                pending.push('\n');
                let (code, open) = shell_code(&pending);
                if open {
                    continue;
                }
                let text = collapse(&code);
                pending.clear();
                if !text.is_empty() {
                    out.push(DocCommand {
                        doc: doc.to_owned(),
                        line: pending_line,
                        section: section.clone(),
                        text,
                        fenced: true,
                    });
                }
            }
            Some(_) => {}
            None => {
                if trimmed.starts_with('#') {
                    inline_commands(doc, &section, para_line, &para, &mut out);
                    para.clear();
                    section = trimmed.to_owned();
                } else if trimmed.is_empty() {
                    inline_commands(doc, &section, para_line, &para, &mut out);
                    para.clear();
                } else {
                    if para.is_empty() {
                        para_line = n;
                    }
                    para.push_str(raw);
                    para.push('\n');
                }
            }
        }
    }
    inline_commands(doc, &section, para_line, &para, &mut out);
    out
}

/// A shell command read so far (lines joined with `\n`): its code without comments, and
/// whether the command goes on (a trailing `\`, or a quote left open).
fn shell_code(text: &str) -> (String, bool) {
    let mut code = String::new();
    let (mut single, mut double, mut escaped, mut comment) = (false, false, false, false);
    let mut prev_space = true;
    // The last thing read was a `\` at the end of a line: the command goes on.
    let mut continued = false;
    for c in text.chars() {
        if comment {
            if c == '\n' {
                comment = false;
                code.push(c);
            }
            continue;
        }
        if escaped && c == '\n' && !single && !double {
            code.pop();
            code.push(' ');
            escaped = false;
            prev_space = true;
            continued = true;
            continue;
        }
        if !c.is_whitespace() {
            continued = false;
        }
        if escaped {
            escaped = false;
        } else if c == '\\' && !single {
            escaped = true;
        } else if c == '\'' && !double {
            single = !single;
        } else if c == '"' && !single {
            double = !double;
        } else if c == '#' && !single && !double && prev_space {
            comment = true;
            continue;
        }
        prev_space = c.is_whitespace();
        code.push(c);
    }
    (code, single || double || continued)
}

fn collapse(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The command word of `text`: its first word after `VAR=value` assignments.
pub fn program(text: &str) -> &str {
    text.split_whitespace()
        .find(|w| !is_assignment(w))
        .unwrap_or("")
}

fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// The inline code spans of a paragraph that are commands.
fn inline_commands(doc: &str, section: &str, line: usize, para: &str, out: &mut Vec<DocCommand>) {
    // Odd pieces between backticks are code spans (spans may wrap across lines).
    let mut at_line = line;
    for (i, piece) in para.split('`').enumerate() {
        if i % 2 == 1 {
            let text = collapse(piece);
            let prog = program(&text);
            let words_after = text
                .split_whitespace()
                .skip_while(|w| is_assignment(w))
                .count();
            if words_after >= 2 && (COMMAND_WORDS.contains(&prog) || prog.ends_with("/keel")) {
                out.push(DocCommand {
                    doc: doc.to_owned(),
                    line: at_line,
                    section: section.to_owned(),
                    text,
                    fenced: false,
                });
            }
        }
        at_line += piece.matches('\n').count();
    }
}

/// The commands of the first shell block under `heading` (its text up to the next heading of
/// the same or a higher level) of `doc` whose commands include one containing `marker`.
pub fn block(doc: &str, heading: &str, marker: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo().join(doc)).expect("a doc");
    let commands = commands_in(doc, &text);
    let mut blocks: Vec<Vec<&DocCommand>> = Vec::new();
    let mut last_line = 0;
    for c in commands.iter().filter(|c| c.fenced && c.section == heading) {
        // Commands of one block are on consecutive lines (comments and continuations aside):
        // a new block starts after a closing fence, found by looking at the lines between.
        let between: Vec<&str> = text
            .lines()
            .skip(last_line)
            .take(c.line.saturating_sub(last_line + 1))
            .collect();
        if blocks.is_empty() || between.iter().any(|l| l.trim().starts_with("```")) {
            blocks.push(Vec::new());
        }
        blocks.last_mut().expect("a block").push(c);
        last_line = c.line;
    }
    blocks
        .into_iter()
        .find(|b| b.iter().any(|c| c.text.contains(marker)))
        .unwrap_or_else(|| panic!("{doc} {heading:?} has no shell block with {marker:?}"))
        .into_iter()
        .map(|c| c.text.clone())
        .collect()
}

/// `path`'s text, relative to the repository.
pub fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Whether `pattern` (`*` = any text, possibly empty) matches all of `text`.
pub fn matches(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// A path relative to the repository, as a `Path`.
pub fn path(rel: &str) -> PathBuf {
    repo().join(Path::new(rel))
}

/// The commands of every shell block under `heading` of `doc`, in order (one list).
pub fn section(doc: &str, heading: &str) -> Vec<String> {
    let text = read(doc);
    let found: Vec<String> = commands_in(doc, &text)
        .into_iter()
        .filter(|c| c.fenced && c.section == heading)
        .map(|c| c.text)
        .collect();
    assert!(
        !found.is_empty(),
        "{doc} has no shell block under {heading:?}"
    );
    found
}

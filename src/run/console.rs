//! What the commands print, and where: the process-wide output settings
//! the command line sets once (`-v`, `--format json`, colours) and the
//! runners read.
//!
//! - Human lines go to stdout, or to stderr under `--format json`, so that
//!   stdout holds exactly one JSON document a script can parse.
//! - Detail lines (each passing test, each retry) are printed only with
//!   `-v`; failures and summaries always are.
//! - Colour only when the stream is a terminal and `NO_COLOR` is unset
//!   (<https://no-color.org>), decided for stdout and stderr separately.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

static VERBOSE: AtomicU8 = AtomicU8::new(0);
static JSON: AtomicBool = AtomicBool::new(false);
static COLOR_OUT: AtomicBool = AtomicBool::new(false);
static COLOR_ERR: AtomicBool = AtomicBool::new(false);
static EMITTED: AtomicBool = AtomicBool::new(false);

/// Set once by the command line, before any command runs.
pub fn configure(verbose: u8, json: bool) {
    VERBOSE.store(verbose, Ordering::Relaxed);
    JSON.store(json, Ordering::Relaxed);
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let dumb = std::env::var("TERM").is_ok_and(|t| t == "dumb");
    COLOR_OUT.store(
        !no_color && !dumb && !json && std::io::stdout().is_terminal(),
        Ordering::Relaxed,
    );
    COLOR_ERR.store(
        !no_color && !dumb && std::io::stderr().is_terminal(),
        Ordering::Relaxed,
    );
}

pub fn verbose() -> u8 {
    VERBOSE.load(Ordering::Relaxed)
}

/// `--format json`: stdout is for the JSON document only.
pub fn json() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// Whether human lines may carry colour (they go to stderr under JSON).
fn color() -> bool {
    if json() {
        COLOR_ERR.load(Ordering::Relaxed)
    } else {
        COLOR_OUT.load(Ordering::Relaxed)
    }
}

/// Whether stderr (errors, progress bars) may carry colour.
pub fn color_stderr() -> bool {
    COLOR_ERR.load(Ordering::Relaxed)
}

/// Print one human line.
pub fn line(text: impl AsRef<str>) {
    use std::io::Write;
    let text = text.as_ref();
    // A closed pipe (`ferry test | head`) is not an error of the command.
    if json() {
        let _ = writeln!(std::io::stderr().lock(), "{text}");
    } else {
        let _ = writeln!(std::io::stdout().lock(), "{text}");
    }
}

/// Print a line only with `-v`.
pub fn detail(text: impl AsRef<str>) {
    if verbose() >= 1 {
        line(text);
    }
}

/// How an outcome word is shown: `OK`, `PASS` green; `WARN`, `SKIP`
/// yellow; `FAIL`, `ERROR` red; padded to `width` before colouring so
/// columns stay aligned.
pub fn status(word: &str, width: usize) -> String {
    let padded = format!("{word:<width$}");
    if !color() {
        return padded;
    }
    let code = match word.trim() {
        "OK" | "PASS" | "success" | "ok" => "32",
        "WARN" | "SKIP" | "skipped" | "stopped" | "STOPPED" => "33",
        "FAIL" | "ERROR" | "FAILED" | "failed" | "error" => "31",
        _ => return padded,
    };
    format!("\x1b[{code}m{padded}\x1b[0m")
}

/// `error:` in red on a terminal.
pub fn error_prefix() -> &'static str {
    if color_stderr() {
        "\x1b[31;1merror\x1b[0m:"
    } else {
        "error:"
    }
}

/// Whole numbers with thousands separators: `1,234,567`.
pub fn thousands(n: impl Into<i128>) -> String {
    let n: i128 = n.into();
    let digits = n.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if n < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Whether the command printed its JSON document.
pub fn emitted() -> bool {
    EMITTED.load(Ordering::Relaxed)
}

/// Print the command's JSON document on stdout.
pub fn emit(doc: &serde_json::Value) {
    use std::io::Write;
    EMITTED.store(true, Ordering::Relaxed);
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer_pretty(&mut out, doc);
    let _ = writeln!(out);
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_by_three_from_the_right() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(-45000), "-45,000");
        assert_eq!(thousands(100000i64), "100,000");
    }
}

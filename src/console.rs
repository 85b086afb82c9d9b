//! What the commands print, and where: the process-wide output settings
//! the command line sets once (`-v`, `--format json`, colours) and the
//! runners read; and the progress bars of long work, which say what they
//! wait for (a vendor's rate limit, a Bulk job) while they wait.
//!
//! - Human lines go to stdout, or to stderr under `--format json`, so that
//!   stdout holds exactly one JSON document a script can parse.
//! - Detail lines (each passing test, each retry) are printed only with
//!   `-v`; failures and summaries always are.
//! - Colour only when the stream is a terminal and `NO_COLOR` is unset
//!   (<https://no-color.org>), decided for stdout and stderr separately.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

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

/// One wait: its id, what is awaited, until when (if known), since when.
type Wait = (u64, String, Option<Instant>, Instant);

/// What the process waits for, by waiter: shown by progress bars.
static WAITS: Mutex<Vec<Wait>> = Mutex::new(Vec::new());
static NEXT_WAIT: AtomicU64 = AtomicU64::new(0);

/// Clears its wait when dropped.
pub struct Waiting(u64);

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Ok(mut w) = WAITS.lock() {
            w.retain(|(id, ..)| *id != self.0);
        }
    }
}

/// Say what the process is waiting for (until `until`, if known) while
/// the guard lives: "waiting for HubSpot's rate limit (190 per 10 s)".
pub fn waiting(what: impl Into<String>, until: Option<Instant>) -> Waiting {
    let id = NEXT_WAIT.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut w) = WAITS.lock() {
        w.push((id, what.into(), until, Instant::now()));
    }
    Waiting(id)
}

/// Change what a wait says (a Bulk job's state).
pub fn update(guard: &Waiting, what: impl Into<String>) {
    if let Ok(mut w) = WAITS.lock()
        && let Some(slot) = w.iter_mut().find(|(id, ..)| *id == guard.0)
    {
        slot.1 = what.into();
    }
}

/// The newest wait, as progress bars show it: `waiting for HubSpot's rate
/// limit (190 per 10 s): 3.2 s`, the time left when known, else so far.
pub fn wait_text() -> String {
    let Ok(w) = WAITS.lock() else {
        return String::new();
    };
    w.last().map(render).unwrap_or_default()
}

fn render((_, what, until, since): &(u64, String, Option<Instant>, Instant)) -> String {
    let now = Instant::now();
    let secs = match until {
        Some(u) if *u > now => (*u - now).as_secs_f64(),
        _ => now.duration_since(*since).as_secs_f64(),
    };
    format!("{what}: {secs:.1} s")
}

#[cfg(test)]
fn text_of(guard: &Waiting) -> Option<String> {
    let w = WAITS.lock().ok()?;
    w.iter().find(|(id, ..)| *id == guard.0).map(render)
}

/// A progress bar on stderr (hidden when stderr is not a terminal): `len`
/// units of `noun`, with position, rate, ETA and what it waits for.
pub fn bar(len: u64, noun: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        return bar;
    }
    let template = format!(
        "{{bar:30}} {{human_pos}}/{{human_len}} {noun} ({{per_sec:0}}, ETA {{eta}}) {{wait}}"
    );
    bar.set_style(style(&template));
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// A spinner on stderr (hidden when stderr is not a terminal) whose message
/// the caller updates, followed by what it waits for.
pub fn spinner() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner();
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        return bar;
    }
    bar.set_style(style("{spinner} {msg} {wait}"));
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn style(template: &str) -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template(template)
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .with_key(
            "wait",
            |_: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let text = wait_text();
                if !text.is_empty() {
                    let _ = write!(w, "· {text}");
                }
            },
        )
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
    fn a_wait_shows_while_its_guard_lives_with_the_time_left() {
        let limit = waiting("waiting for HubSpot's rate limit", None);
        assert!(
            text_of(&limit)
                .unwrap()
                .starts_with("waiting for HubSpot's rate limit: ")
        );
        let job = waiting(
            "Bulk job 750x UploadComplete",
            Some(Instant::now() + Duration::from_secs(5)),
        );
        update(&job, "Bulk job 750x InProgress");
        let t = text_of(&job).unwrap();
        assert!(t.starts_with("Bulk job 750x InProgress: "), "{t}");
        let left: f64 = t
            .rsplit(": ")
            .next()
            .unwrap()
            .trim_end_matches(" s")
            .parse()
            .unwrap();
        assert!(left > 3.0 && left <= 5.0, "{t}");
        let id = job.0;
        drop(job);
        assert!(WAITS.lock().unwrap().iter().all(|(i, ..)| *i != id));
        drop(limit);
    }

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

//! `shieldaudit-hook STAGE [--fail-closed]`: the OCI hook's native fast path.
//!
//! It handles the common append exactly as the Python reference writer does
//! (same lock, same bytes, same errors) and hands every unusual case to the
//! Python reference path by `exec`ing it with the same arguments, environment
//! and stdin bytes (see docs/hook.md). No panic reaches the runtime: every run
//! ends in exit 0 (fail-open) or 1 (fail-closed) with at most one stderr line.
#![deny(unsafe_code)]

mod handover;
mod json;
mod oci;
mod settings;
mod sha256;
mod store;
mod sys;

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::process::exit;
use std::time::{SystemTime, UNIX_EPOCH};

use json::{py, PyStr};

/// Largest OCI state accepted on stdin.
pub const MAX_STATE_BYTES: usize = 1024 * 1024;
const MAX_ERROR_CHARS: usize = 1000;
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How one run ends.
pub enum Outcome {
    /// Written (or, for a repeated poststop, rightly not written).
    Done,
    /// The Python reference path must do this run; the reason is for messages.
    HandOver(String),
    /// A failure worded like the Python hook's.
    Failed(String),
}

impl Outcome {
    pub fn hand_over(why: &str) -> Outcome {
        Outcome::HandOver(why.to_string())
    }

    pub fn failed(message: String) -> Outcome {
        Outcome::Failed(message)
    }
}

/// The OS's wording of an error, without Rust's " (os error N)" suffix.
pub fn os_reason(err: &io::Error) -> String {
    let text = err.to_string();
    match text.find(" (os error ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Python's `str.isspace()`.
fn is_py_space(c: char) -> bool {
    matches!(
        c,
        '\t'..='\r'
            | '\x1c'..='\x20'
            | '\u{85}'
            | '\u{a0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200a}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202f}'
            | '\u{205f}'
            | '\u{3000}'
    )
}

/// `" ".join(clip(message, 1000).split())`.
fn one_line(message: &str) -> String {
    let chars: Vec<char> = message.chars().collect();
    let clipped: String = if chars.len() <= MAX_ERROR_CHARS {
        message.to_string()
    } else {
        let mut s: String = chars[..MAX_ERROR_CHARS - 1].iter().collect();
        s.push('\u{2026}');
        s
    };
    clipped
        .split(is_py_space)
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// What a run knows when it fails.
struct Context {
    stage: String,
    flag_closed: bool,
    settings: Option<settings::Settings>,
    container_id: PyStr,
}

impl Context {
    fn closed(&self) -> bool {
        self.flag_closed
            || match &self.settings {
                Some(settings) => settings.fail_closed,
                None => settings::env_fail_closed(),
            }
    }

    /// Report a failure: one stderr line, one hook-errors line; the exit status.
    fn fail(&self, message: &str) -> i32 {
        let message = one_line(message);
        let why_not = match &self.settings {
            Some(settings) => store::record_error(
                &settings.root,
                &oci::clip(&py(&self.stage), 64),
                &oci::clip(&self.container_id, 80),
                &message,
                settings.fsync,
                now_ns(),
            ),
            // Settings the native parser did not take (a failed hand-over): the
            // reference's fallback, an absolute SHIELDAUDIT_ROOT.
            None => match settings::error_root() {
                Some(root) => store::record_error(
                    &root,
                    &oci::clip(&py(&self.stage), 64),
                    &oci::clip(&self.container_id, 80),
                    &message,
                    settings::env_fsync(),
                    now_ns(),
                ),
                None => Some("no usable root".to_string()),
            },
        };
        let closed = self.closed();
        let verdict = if closed {
            "container refused (fail-closed)"
        } else {
            "container allowed (fail-open)"
        };
        let suffix = match why_not {
            Some(why) => format!(" [failure not recorded: {}]", why),
            None => String::new(),
        };
        let stage = if self.stage.is_empty() {
            "?"
        } else {
            &self.stage
        };
        let _ = writeln!(
            io::stderr(),
            "shieldaudit-hook {}: {}; {}{}",
            stage,
            message,
            verdict,
            suffix
        );
        i32::from(closed)
    }
}

/// The stage and `--fail-closed` when the arguments are the plain form; None otherwise
/// (usage errors, `--help`, `--check` and the like are the reference path's).
fn plain_args(args: &[OsString]) -> Option<(String, bool)> {
    let mut stage: Option<String> = None;
    let mut flag_closed = false;
    for arg in args {
        let arg = arg.to_str()?;
        if arg == "--fail-closed" {
            flag_closed = true;
        } else if arg.starts_with('-') || stage.is_some() {
            return None;
        } else {
            stage = Some(arg.to_string());
        }
    }
    stage.map(|stage| (stage, flag_closed))
}

fn read_stdin() -> Result<Vec<u8>, String> {
    let mut data = Vec::new();
    match io::stdin()
        .lock()
        .take(MAX_STATE_BYTES as u64 + 1)
        .read_to_end(&mut data)
    {
        Ok(_) if data.len() > MAX_STATE_BYTES => Err(format!(
            "OCI state on stdin is larger than {} bytes",
            MAX_STATE_BYTES
        )),
        Ok(_) => Ok(data),
        Err(err) => Err(format!(
            "cannot read the OCI state on stdin: {}",
            os_reason(&err)
        )),
    }
}

/// Read a regular file up to `limit` bytes; None when absent, special, larger or unreadable.
fn read_file(path: &str, limit: u64) -> Option<Vec<u8>> {
    let flags = sys::O_RDONLY | sys::O_NOFOLLOW | sys::O_NONBLOCK;
    let file: File = sys::open_at(None, path, flags, 0).ok()?;
    let meta = file.metadata().ok()?;
    if meta.mode() & 0o170000 != 0o100000 || meta.len() > limit {
        return None;
    }
    let mut data = Vec::new();
    file.take(limit + 1).read_to_end(&mut data).ok()?;
    if data.len() as u64 > limit {
        return None;
    }
    Some(data)
}

/// The hand-over: replaces the process, or reports why it could not.
fn hand_over(ctx: &Context, args: &[OsString], stdin: Option<&[u8]>, why: &str) -> i32 {
    let failure = handover::exec_reference(args, stdin);
    ctx.fail(&format!("{} (handing over because {})", failure, why))
}

fn run(args: &[OsString], ctx: &mut Context) -> i32 {
    if args.len() == 1 && args[0] == "--check" {
        let exe = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let _ = writeln!(
            io::stdout(),
            "shieldaudit-hook: native {} ok ({}); reference path: {}",
            VERSION,
            exe,
            handover::python().display()
        );
        let _ = io::stdout().flush();
        let failure = handover::exec_reference(args, None);
        let _ = writeln!(io::stderr(), "shieldaudit-hook --check: {}", failure);
        return 1;
    }
    let (stage, flag_closed) = match plain_args(args) {
        Some(plain) => plain,
        None => return hand_over(ctx, args, None, "of the arguments"),
    };
    ctx.stage = stage.clone();
    ctx.flag_closed = flag_closed;
    ctx.settings = settings::lean();
    if ctx.settings.is_none() {
        return hand_over(ctx, args, None, "the settings need the full loader");
    }
    let data = match read_stdin() {
        Ok(data) => data,
        Err(message) => return ctx.fail(&message),
    };
    let state = match oci::parse_state(&data) {
        Ok(state) => state,
        Err(oci::StateError::Failed(message, id)) => {
            ctx.container_id = id;
            return ctx.fail(&message);
        }
        Err(oci::StateError::HandOver(why)) => return hand_over(ctx, args, Some(&data), why),
    };
    ctx.container_id = py(&state.container_id);
    if !oci::STAGES.contains(&stage.as_str()) {
        return match oci::simple_repr(&oci::clip(&py(&stage), 64)) {
            Some(shown) => ctx.fail(&format!(
                "unknown hook stage {}: expected one of {}; fix the hooks.d file \
                 (shieldaudit install-hooks)",
                shown,
                oci::STAGES.join(", ")
            )),
            None => hand_over(ctx, args, Some(&data), "of the stage's spelling"),
        };
    }
    let mut bundle = oci::Info::default();
    let mut storage = oci::Info::default();
    if !state.bundle.is_empty() {
        let mut end = state.bundle.len();
        while end > 0 && state.bundle[end - 1] == 0x2f {
            end -= 1;
        }
        let base = json::to_string(&state.bundle[..end]).unwrap_or_default();
        if let Some(config) = read_file(&format!("{}/config.json", base), oci::MAX_CONFIG_BYTES) {
            match oci::bundle_info(&config) {
                Ok(info) => bundle = info,
                Err(why) => return hand_over(ctx, args, Some(&data), why),
            }
        }
        if let Some(path) = oci::storage_metadata_path(&state.bundle, &state.container_id) {
            if let Some(records) = read_file(&path, oci::MAX_STORAGE_BYTES) {
                match oci::storage_record(&records, &state.container_id) {
                    Ok(info) => storage = info,
                    Err(Outcome::HandOver(why)) => return hand_over(ctx, args, Some(&data), &why),
                    Err(_) => return hand_over(ctx, args, Some(&data), "containers.json"),
                }
            }
        }
    }
    let fields = oci::entry_fields(&stage, &state, &bundle, &storage);
    let settings = match &ctx.settings {
        Some(settings) => settings,
        None => return hand_over(ctx, args, Some(&data), "no settings"),
    };
    match store::append(settings, &state.container_id, &fields, &now_ns) {
        Outcome::Done => 0,
        Outcome::HandOver(why) => hand_over(ctx, args, Some(&data), &why),
        Outcome::Failed(message) => ctx.fail(&message),
    }
}

fn main() {
    // A panic is reported as one line below, never as Rust's multi-line message.
    std::panic::set_hook(Box::new(|_| {}));
    sys::ignore_file_size_signal();
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let mut ctx = Context {
        stage: String::new(),
        flag_closed: args.iter().any(|a| a == "--fail-closed"),
        settings: None,
        container_id: Vec::new(),
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&args, &mut ctx)));
    let status = match result {
        Ok(status) => status,
        Err(_) => {
            let fallback = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                ctx.fail("internal error (native hook); please report it")
            }));
            fallback.unwrap_or(1)
        }
    };
    exit(status);
}

//! `shieldaudit-hook STAGE [--fail-closed]`: the OCI hook's native fast path.
//!
//! Handles the common append exactly as the Python reference writer does and
//! hands every unusual case to it (see docs/hook.md).
#![deny(unsafe_code)]
// The skeleton hands everything over; the fast path uses the rest of `sys`.
#![allow(dead_code)]

mod handover;
mod sys;

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::process::exit;

/// Largest OCI state accepted on stdin.
pub const MAX_STATE_BYTES: usize = 1024 * 1024;

/// The OS's wording of an error, without Rust's " (os error N)" suffix.
pub fn os_reason(err: &io::Error) -> String {
    let text = err.to_string();
    match text.find(" (os error ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

fn read_stdin() -> io::Result<Vec<u8>> {
    let mut data = Vec::new();
    io::stdin()
        .lock()
        .take(MAX_STATE_BYTES as u64 + 1)
        .read_to_end(&mut data)?;
    Ok(data)
}

fn run() -> i32 {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let stdin = read_stdin().unwrap_or_default();
    let why = handover::exec_reference(&args, &stdin);
    let closed = args.iter().any(|a| a == "--fail-closed");
    let verdict = if closed {
        "container refused (fail-closed)"
    } else {
        "container allowed (fail-open)"
    };
    let _ = writeln!(io::stderr(), "shieldaudit-hook ?: {}; {}", why, verdict);
    i32::from(closed)
}

fn main() {
    let status = std::panic::catch_unwind(run).unwrap_or(0);
    exit(status);
}

//! Handing a run to the Python reference path: `exec` it with the same
//! arguments, the same environment and the same stdin bytes.

use std::env;
use std::ffi::{OsStr, OsString};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::sys;

/// The interpreter that runs the reference path.
pub fn python() -> PathBuf {
    if let Some(value) = env::var_os("SHIELDAUDIT_HOOK_PYTHON") {
        if !value.is_empty() {
            return PathBuf::from(value);
        }
    }
    // The interpreter of the environment the binary was installed into.
    match env::current_exe() {
        Ok(exe) => match exe.parent() {
            Some(dir) => dir.join("python3"),
            None => PathBuf::from("python3"),
        },
        Err(_) => PathBuf::from("python3"),
    }
}

/// Replace this process by `python -I -B -m shieldaudit.hook ARGS` with `stdin` as its stdin.
///
/// Returns only when that was impossible, with a sentence saying why.
pub fn exec_reference(args: &[OsString], stdin: &[u8]) -> String {
    let program = python();
    let input = match stdin_copy(stdin) {
        Ok(file) => file,
        Err(err) => return format!("cannot hand over to the Python reference path: {}", err),
    };
    let err = Command::new(&program)
        .arg("-I")
        .arg("-B")
        .arg("-m")
        .arg("shieldaudit.hook")
        .args(args)
        .stdin(Stdio::from(input))
        .exec();
    format!(
        "cannot run the Python reference path {}: {}",
        shown(program.as_os_str()),
        crate::os_reason(&err)
    )
}

fn stdin_copy(data: &[u8]) -> io::Result<std::fs::File> {
    let mut file = sys::memory_file("shieldaudit-hook-stdin")?;
    file.write_all(data)?;
    file.seek(SeekFrom::Start(0))?;
    Ok(file)
}

fn shown(path: &OsStr) -> String {
    String::from_utf8_lossy(path.as_bytes()).into_owned()
}

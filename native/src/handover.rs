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
/// `stdin` None leaves the process's own stdin in place (nothing was read from it).
pub fn exec_reference(args: &[OsString], stdin: Option<&[u8]>) -> String {
    let program = python();
    let mut command = Command::new(&program);
    command
        .arg("-I")
        .arg("-B")
        .arg("-m")
        .arg("shieldaudit.hook")
        .args(args);
    if let Some(data) = stdin {
        match stdin_copy(data) {
            Ok(file) => {
                command.stdin(Stdio::from(file));
            }
            Err(err) => {
                return format!(
                    "cannot hand the state over to the Python reference path: {}",
                    crate::os_reason(&err)
                )
            }
        }
    }
    let err = command.exec();
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

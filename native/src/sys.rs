//! The few C library calls the standard library does not offer, with safe wrappers.
//!
//! This is the crate's only `unsafe` code. Each wrapper passes owned,
//! NUL-terminated strings and plain integers, checks the return value, and
//! turns a new descriptor into an owning `File` exactly once.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::raw::{c_char, c_int, c_uint};
use std::os::unix::io::{AsRawFd, FromRawFd};

extern "C" {
    fn openat(dirfd: c_int, pathname: *const c_char, flags: c_int, ...) -> c_int;
    fn mkdirat(dirfd: c_int, pathname: *const c_char, mode: c_uint) -> c_int;
    fn renameat(
        olddirfd: c_int,
        oldpath: *const c_char,
        newdirfd: c_int,
        newpath: *const c_char,
    ) -> c_int;
    fn flock(fd: c_int, operation: c_int) -> c_int;
    fn geteuid() -> c_uint;
    fn memfd_create(name: *const c_char, flags: c_uint) -> c_int;
    fn signal(signum: c_int, handler: usize) -> usize;
}

/// `open(2)` flags (Linux; the values differ between architectures).
pub const O_RDONLY: c_int = 0;
pub const O_WRONLY: c_int = 0o1;
pub const O_RDWR: c_int = 0o2;
pub const O_CREAT: c_int = 0o100;
pub const O_APPEND: c_int = 0o2000;
pub const O_NONBLOCK: c_int = 0o4000;
pub const O_CLOEXEC: c_int = 0o2000000;
pub const O_PATH: c_int = 0o10000000;
#[cfg(any(
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "powerpc64"
))]
pub const O_DIRECTORY: c_int = 0o40000;
#[cfg(any(
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "powerpc64"
))]
pub const O_NOFOLLOW: c_int = 0o100000;
#[cfg(not(any(
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "powerpc64"
)))]
pub const O_DIRECTORY: c_int = 0o200000;
#[cfg(not(any(
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "powerpc64"
)))]
pub const O_NOFOLLOW: c_int = 0o400000;
/// `AT_FDCWD`: relative paths are resolved from the working directory.
pub const AT_FDCWD: c_int = -100;

const LOCK_EX: c_int = 2;
const LOCK_NB: c_int = 4;
const EWOULDBLOCK: i32 = 11;
const MFD_CLOEXEC: c_uint = 1;

fn c_string(text: &str) -> io::Result<CString> {
    CString::new(text).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))
}

/// `openat(dir, name, flags, mode)`; `dir` None means the working directory
/// (and absolute names ignore it anyway).
pub fn open_at(dir: Option<&File>, name: &str, flags: c_int, mode: c_uint) -> io::Result<File> {
    let path = c_string(name)?;
    let dirfd = dir.map_or(AT_FDCWD, AsRawFd::as_raw_fd);
    // SAFETY: `path` is a valid NUL-terminated string that outlives the call;
    // the mode is passed as the variadic argument open(2) reads with O_CREAT.
    let fd = unsafe { openat(dirfd, path.as_ptr(), flags | O_CLOEXEC, mode) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor just returned by openat that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// `mkdirat(dir, name, mode)`.
pub fn mkdir_at(dir: &File, name: &str, mode: c_uint) -> io::Result<()> {
    let path = c_string(name)?;
    // SAFETY: valid descriptor and NUL-terminated string for the call's duration.
    if unsafe { mkdirat(dir.as_raw_fd(), path.as_ptr(), mode) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `renameat(dir, old, dir, new)`.
pub fn rename_at(dir: &File, old: &str, new: &str) -> io::Result<()> {
    let from = c_string(old)?;
    let to = c_string(new)?;
    let fd = dir.as_raw_fd();
    // SAFETY: valid descriptor and NUL-terminated strings for the call's duration.
    if unsafe { renameat(fd, from.as_ptr(), fd, to.as_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A non-blocking exclusive `flock`: Ok(true) when taken, Ok(false) when held elsewhere.
pub fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    // SAFETY: plain integer arguments; the descriptor is owned by `file`.
    if unsafe { flock(file.as_raw_fd(), LOCK_EX | LOCK_NB) } == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// The effective user ID.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid cannot fail and takes no arguments.
    unsafe { geteuid() }
}

/// An anonymous in-memory file (close-on-exec), to hand bytes over as stdin.
pub fn memory_file(name: &str) -> io::Result<File> {
    let cname = c_string(name)?;
    // SAFETY: a NUL-terminated name and plain flags.
    let fd = unsafe { memfd_create(cname.as_ptr(), MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor just returned by memfd_create that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Ignore SIGXFSZ, as Python does: a write past the file size limit then fails
/// with EFBIG (reported, and the partial entry removed) instead of killing the hook.
pub fn ignore_file_size_signal() {
    const SIGXFSZ: c_int = 25;
    const SIG_IGN: usize = 1;
    // SAFETY: installs the predefined "ignore" disposition; no handler code runs.
    unsafe {
        signal(SIGXFSZ, SIG_IGN);
    }
}

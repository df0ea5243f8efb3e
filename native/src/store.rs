//! The common append, exactly as the reference `TrailWriter` does it, and the
//! hook-error log. Anything unusual returns `Outcome::HandOver`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::json::{self, eq_ascii, Value};
use crate::oci::Fields;
use crate::settings::Settings;
use crate::sha256::{hex, hmac_sha256, sha256};
use crate::sys::{
    self, O_APPEND, O_CREAT, O_DIRECTORY, O_NOFOLLOW, O_NONBLOCK, O_PATH, O_RDONLY, O_RDWR,
    O_WRONLY,
};
use crate::{os_reason, Outcome};

const LOCK_TIMEOUT: Duration = Duration::from_secs(2);
const ERRORS_LOCK_TIMEOUT: Duration = Duration::from_millis(200);
const HOOK_ERRORS: &str = "hook-errors.jsonl";
const HOOK_ERRORS_OLD: &str = "hook-errors.1.jsonl";
const HOOK_ERRORS_MAX_BYTES: u64 = 1024 * 1024;
const MAX_ENTRY_BYTES: usize = 256 * 1024;
const MAX_KEY_FILE_BYTES: usize = 64 * 1024;
const MIN_KEY_BYTES: usize = 16;
/// How much of the active segment's end is read to find the head (and the last hook entry).
const MAX_TAIL_BYTES: u64 = 1024 * 1024;
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;

fn is_regular(mode: u32) -> bool {
    mode & S_IFMT == S_IFREG
}

/// The signing key: (secret, chain name), None when unkeyed.
pub fn signing_key(path: Option<&str>, root: &str) -> Result<Option<(Vec<u8>, String)>, Outcome> {
    let path = match path {
        Some(path) => path,
        None => return Ok(None),
    };
    let doubt = || Outcome::hand_over("the key file is not plain");
    let mut file =
        sys::open_at(None, path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK, 0).map_err(|_| doubt())?;
    let meta = file.metadata().map_err(|_| doubt())?;
    if !is_regular(meta.mode()) || meta.mode() & 0o077 != 0 || meta.uid() != sys::effective_uid() {
        return Err(doubt());
    }
    let mut data = Vec::new();
    (&mut file)
        .take(MAX_KEY_FILE_BYTES as u64 + 1)
        .read_to_end(&mut data)
        .map_err(|_| doubt())?;
    if data.len() > MAX_KEY_FILE_BYTES || data.iter().any(|&b| matches!(b, b'\r' | 0x0b | 0x0c)) {
        return Err(doubt());
    }
    // An evolving (forward-secure) key changes with every seal, under a lock
    // the reference path takes: it is never signed with here.
    if data.starts_with(b"shieldaudit-evolving-key")
        || data.starts_with(b"shieldaudit-verification-key")
    {
        return Err(Outcome::hand_over("the key file holds an evolving key"));
    }
    let mut secrets: Vec<&[u8]> = Vec::new();
    for line in data.split(|&b| b == b'\n') {
        if line.first() == Some(&b'#') {
            continue;
        }
        let start = line.iter().position(|&b| b != b' ' && b != b'\t');
        let secret = match start {
            Some(start) => {
                let end = line
                    .iter()
                    .rposition(|&b| b != b' ' && b != b'\t')
                    .unwrap_or(start);
                &line[start..=end]
            }
            None => continue,
        };
        secrets.push(secret);
    }
    if secrets.is_empty() || secrets.iter().any(|s| s.len() < MIN_KEY_BYTES) {
        return Err(doubt());
    }
    let secret = secrets[0].to_vec();
    let real_key = std::fs::canonicalize(path).map_err(|_| doubt())?;
    let real_root = std::fs::canonicalize(root).map_err(|_| doubt())?;
    if real_key.starts_with(&real_root) {
        return Err(Outcome::hand_over("the key file is inside the trail root"));
    }
    let mut kid_input = b"shieldaudit-kid\0".to_vec();
    kid_input.extend_from_slice(&secret);
    let kid = hex(&sha256(&kid_input))[..16].to_string();
    Ok(Some((secret, format!("hmac-sha256:{}", kid))))
}

/// `os.makedirs(path, 0o700)`: missing parents with 0o777 (umask applies), the leaf 0o700.
fn makedirs(path: &str) -> io::Result<()> {
    if let Some(at) = path.rfind('/') {
        let head = &path[..at];
        if !head.is_empty() && !std::path::Path::new(head).exists() {
            match makedirs_mode(head, 0o777) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
        }
    }
    match makedirs_mode(path, 0o700) {
        Err(e)
            if e.kind() == io::ErrorKind::AlreadyExists && std::path::Path::new(path).is_dir() =>
        {
            Ok(())
        }
        other => other,
    }
}

fn makedirs_mode(path: &str, mode: u32) -> io::Result<()> {
    if let Some(at) = path.rfind('/') {
        let head = &path[..at];
        if !head.is_empty() && !std::path::Path::new(head).exists() {
            match makedirs_mode(head, 0o777) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
        }
    }
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().mode(mode).create(path)
}

fn open_root_dir(root: &str) -> io::Result<File> {
    match sys::open_at(None, root, O_RDONLY | O_DIRECTORY, 0) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            makedirs(root)?;
            sys::open_at(None, root, O_RDONLY | O_DIRECTORY, 0)
        }
        other => other,
    }
}

/// A directory we trust: ours and not writable by group or others.
fn trusted(dir: &File) -> bool {
    match dir.metadata() {
        Ok(meta) => {
            meta.mode() & S_IFMT == S_IFDIR
                && meta.mode() & 0o022 == 0
                && meta.uid() == sys::effective_uid()
        }
        Err(_) => false,
    }
}

fn subdir(parent: &File, name: &str) -> Result<File, Outcome> {
    let flags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW;
    let dir = match sys::open_at(Some(parent), name, flags, 0) {
        Ok(dir) => dir,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            match sys::mkdir_at(parent, name, 0o700) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                    return Err(Outcome::hand_over("a directory cannot be created"))
                }
                _ => {}
            }
            sys::open_at(Some(parent), name, flags, 0)
                .map_err(|_| Outcome::hand_over("a directory cannot be opened"))?
        }
        Err(_) => {
            return Err(Outcome::hand_over(
                "a directory cannot be opened (symlink?)",
            ))
        }
    };
    if !trusted(&dir) {
        return Err(Outcome::hand_over(
            "a directory is not private to this user",
        ));
    }
    Ok(dir)
}

/// A regular file below `dir`, never following a symlink; None when absent.
fn regular(dir: &File, name: &str, flags: i32) -> Result<Option<File>, Outcome> {
    match sys::open_at(Some(dir), name, flags | O_NOFOLLOW | O_NONBLOCK, 0o600) {
        Ok(file) => {
            let meta = file
                .metadata()
                .map_err(|_| Outcome::hand_over("cannot stat a file"))?;
            if !is_regular(meta.mode()) || meta.nlink() != 1 || meta.uid() != sys::effective_uid() {
                return Err(Outcome::hand_over(
                    "a trail file is not a private regular file",
                ));
            }
            Ok(Some(file))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(_) => Err(Outcome::hand_over(
            "a trail file cannot be opened (symlink?)",
        )),
    }
}

fn has_segments(dir: &File) -> Result<bool, Outcome> {
    let listing = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))
        .map_err(|_| Outcome::hand_over("cannot list the trail directory"))?;
    for entry in listing {
        let entry = entry.map_err(|_| Outcome::hand_over("cannot list the trail directory"))?;
        if entry.file_name().to_string_lossy().starts_with("audit-") {
            return Ok(true);
        }
    }
    Ok(false)
}

fn lock_timeout_message(container_id: &str) -> String {
    format!(
        "timed out after 2s waiting for the lock of container {}: another writer holds it; \
         retry, or look for a stuck shieldaudit process",
        &container_id[..12]
    )
}

/// Wait for an exclusive flock as `layout.flock_bounded` does; Ok(false) on timeout.
fn lock_bounded(
    file: &File,
    timeout: Duration,
    first_delay: f64,
    max_delay: f64,
) -> io::Result<bool> {
    let deadline = Instant::now() + timeout;
    let mut delay = first_delay;
    loop {
        if sys::try_lock_exclusive(file)? {
            return Ok(true);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        let left = (deadline - now).as_secs_f64();
        sleep(Duration::from_secs_f64(delay.min(left)));
        delay = (delay * 2.0).min(max_delay);
    }
}

/// The trail's last entry and, for poststop, whether the last hook entry is a poststop.
struct Tail {
    seq: u64,
    mac: String,
    last_hook_is_poststop: Option<bool>,
}

enum LineEntry {
    Entry(json::Object),
    Doubt,
}

fn parse_entry(line: &[u8]) -> LineEntry {
    if line.iter().any(|&b| b < 0x20) {
        return LineEntry::Doubt;
    }
    let text = match std::str::from_utf8(line) {
        Ok(text) => text,
        Err(_) => return LineEntry::Doubt,
    };
    match json::loads(text) {
        Ok(Value::Object(o)) => LineEntry::Entry(o),
        _ => LineEntry::Doubt,
    }
}

fn read_tail(file: &File, size: u64, want_hook: bool) -> Result<Tail, Outcome> {
    let mut span = size.min(64 * 1024);
    loop {
        let start = size - span;
        let mut buf = vec![0u8; span as usize];
        file.read_exact_at(&mut buf, start)
            .map_err(|_| Outcome::hand_over("cannot read the trail"))?;
        if buf.last() != Some(&b'\n') {
            return Err(Outcome::hand_over("a torn tail"));
        }
        match scan_tail(&buf, start == 0, want_hook) {
            Some(result) => return result,
            None if span < size.min(MAX_TAIL_BYTES) => {
                span = (span * 4).min(size.min(MAX_TAIL_BYTES))
            }
            None => {
                return Err(Outcome::hand_over(
                    "the trail's tail is longer than the native reader reads",
                ))
            }
        }
    }
}

/// Scan lines backwards; None when more of the file is needed.
fn scan_tail(buf: &[u8], from_start: bool, want_hook: bool) -> Option<Result<Tail, Outcome>> {
    let body = &buf[..buf.len() - 1];
    let mut lines = body.rsplit(|&b| b == b'\n');
    let mut head: Option<(u64, String)> = None;
    let mut consumed_all = true;
    let count = body.iter().filter(|&&b| b == b'\n').count() + 1;
    for (index, line) in (&mut lines).enumerate() {
        let complete = index + 1 < count || from_start;
        if !complete {
            consumed_all = false;
            break;
        }
        let entry = match parse_entry(line) {
            LineEntry::Entry(entry) => entry,
            LineEntry::Doubt => {
                return Some(Err(Outcome::hand_over(
                    "a trail line that is not a plain entry",
                )))
            }
        };
        if head.is_none() {
            let seq = match entry.get("seq") {
                Some(Value::Int(text))
                    if !text.starts_with('-') && text != "0" && text.len() <= 15 =>
                {
                    text.parse::<u64>().ok()?
                }
                _ => return Some(Err(Outcome::hand_over("the last entry has an unusual seq"))),
            };
            let mac = match entry.get("mac") {
                Some(Value::Str(s))
                    if s.len() == 64
                        && s.iter().all(|&c| matches!(c, 0x30..=0x39 | 0x61..=0x66)) =>
                {
                    s.iter().map(|&c| c as u8 as char).collect::<String>()
                }
                _ => return Some(Err(Outcome::hand_over("the last entry has an unusual mac"))),
            };
            head = Some((seq, mac));
            if !want_hook {
                break;
            }
        }
        if let Some(Value::Str(source)) = entry.get("source") {
            if eq_ascii(source, "hook") {
                let poststop =
                    matches!(entry.get("action"), Some(Value::Str(a)) if eq_ascii(a, "poststop"));
                let (seq, mac) = head?;
                return Some(Ok(Tail {
                    seq,
                    mac,
                    last_hook_is_poststop: Some(poststop),
                }));
            }
        }
    }
    match head {
        Some((seq, mac)) if !want_hook => Some(Ok(Tail {
            seq,
            mac,
            last_hook_is_poststop: None,
        })),
        Some((seq, mac)) if consumed_all => Some(Ok(Tail {
            seq,
            mac,
            last_hook_is_poststop: None,
        })),
        _ => None,
    }
}

/// Append one entry for a validated container ID (the Python hook's `append_entry`).
pub fn append(
    settings: &Settings,
    container_id: &str,
    fields: &Fields,
    now_ns: &dyn Fn() -> u128,
) -> Outcome {
    match append_inner(settings, container_id, fields, now_ns) {
        Ok(outcome) | Err(outcome) => outcome,
    }
}

fn append_inner(
    settings: &Settings,
    container_id: &str,
    fields: &Fields,
    now_ns: &dyn Fn() -> u128,
) -> Result<Outcome, Outcome> {
    let root = open_root_dir(&settings.root)
        .map_err(|_| Outcome::hand_over("the root cannot be opened"))?;
    if !trusted(&root) {
        return Err(Outcome::hand_over("the root is not private to this user"));
    }
    let key = signing_key(settings.key_file.as_deref(), &settings.root)?;
    let containers = subdir(&root, "containers")?;
    let dir = subdir(&containers, container_id)?;
    drop(containers);
    let state = subdir(&root, "state")?;
    let locks = subdir(&state, "locks")?;
    drop(state);
    let lock = regular(&locks, &format!("{}.lock", container_id), O_RDWR | O_CREAT)?
        .ok_or_else(|| Outcome::hand_over("the lock file vanished"))?;
    drop(locks);
    match lock_bounded(&lock, LOCK_TIMEOUT, 0.0005, 0.02) {
        Ok(true) => {}
        Ok(false) => return Err(Outcome::failed(lock_timeout_message(container_id))),
        Err(_) => return Err(Outcome::hand_over("flock failed")),
    }
    let linked = |f: &File| f.metadata().map(|m| m.nlink() > 0).unwrap_or(false);
    if !linked(&lock) || !linked(&dir) {
        return Err(Outcome::hand_over("the trail is being removed"));
    }
    let mut active = match regular(&dir, "audit.jsonl", O_RDWR | O_APPEND)? {
        Some(file) => file,
        None => {
            if has_segments(&dir)? {
                return Err(Outcome::hand_over(
                    "the active segment is missing after a rotation",
                ));
            }
            let file = regular(&dir, "audit.jsonl", O_RDWR | O_APPEND | O_CREAT)?
                .ok_or_else(|| Outcome::hand_over("cannot create the active segment"))?;
            dir.sync_all()
                .map_err(|_| Outcome::hand_over("cannot sync the trail directory"))?;
            file
        }
    };
    let size = active
        .metadata()
        .map_err(|_| Outcome::hand_over("cannot stat the trail"))?
        .len();
    let poststop = fields.action == "poststop";
    let (seq, prev) = if size > 0 {
        let tail = read_tail(&active, size, poststop)?;
        if tail.last_hook_is_poststop.is_none() && poststop && has_segments(&dir)? {
            return Err(Outcome::hand_over(
                "the last hook entry may be in a sealed segment",
            ));
        }
        if tail.last_hook_is_poststop == Some(true) {
            return Ok(Outcome::Done); // Podman's second poststop for one stop
        }
        (tail.seq, tail.mac)
    } else {
        if has_segments(&dir)? {
            return Err(Outcome::hand_over("the head is in a sealed segment"));
        }
        (0, GENESIS.to_string())
    };
    let ts = format_ns(now_ns());
    let chain = match &key {
        Some((_, name)) => name.as_str(),
        None => "sha256",
    };
    let signed = fields.signed_line(seq + 1, &ts, container_id, &prev, chain);
    let mac = match &key {
        Some((secret, _)) => hmac_sha256(secret, &signed),
        None => sha256(&signed),
    };
    let mut line = signed;
    line.pop();
    line.extend_from_slice(b",\"mac\":\"");
    line.extend_from_slice(hex(&mac).as_bytes());
    line.extend_from_slice(b"\"}\n");
    if line.len() > MAX_ENTRY_BYTES {
        return Err(Outcome::hand_over("the entry is over the size limit"));
    }
    if size + line.len() as u64 >= settings.max_segment_bytes {
        return Err(Outcome::hand_over("a rotation is due"));
    }
    let shown = format!(
        "{}/containers/{}/audit.jsonl",
        settings.root.trim_end_matches('/'),
        container_id
    );
    let shown = if settings.root == "/" {
        format!("/containers/{}/audit.jsonl", container_id)
    } else {
        shown
    };
    match active.write(&line) {
        Ok(n) if n == line.len() => {}
        Ok(n) => {
            let _ = active.set_len(size);
            return Err(Outcome::failed(format!(
                "short write to {} ({} of {} bytes, disk full or file size limit): free space; \
                 the partial entry was removed",
                shown,
                n,
                line.len()
            )));
        }
        Err(err) => {
            let _ = active.set_len(size);
            let code = err.raw_os_error();
            // ENOSPC, EDQUOT, EFBIG
            let advice = if matches!(code, Some(28) | Some(122) | Some(27)) {
                " (free space, then retry)"
            } else {
                ""
            };
            return Err(Outcome::failed(format!(
                "cannot write {}: {}{}",
                shown,
                os_reason(&err),
                advice
            )));
        }
    }
    if settings.fsync {
        if let Err(err) = active.sync_data() {
            return Err(Outcome::failed(format!(
                "cannot write {}: {}",
                shown,
                os_reason(&err)
            )));
        }
    }
    drop(lock);
    Ok(Outcome::Done)
}

/// RFC 3339 UTC with microseconds, as `shieldaudit.core.timefmt.format_ns`.
pub fn format_ns(ns: u128) -> String {
    let secs = (ns / 1_000_000_000) as i64;
    let micros = (ns % 1_000_000_000) / 1000;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        year,
        month,
        day,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        micros
    )
}

/// Why the hook-error log is not written.
enum LogError {
    /// A symlink, a FIFO or anything but a regular file.
    NotRegular,
    /// Refused as the store refuses it (the whole message).
    Refused(String),
    /// The OS's reason.
    Os(String),
}

fn os_error(err: &io::Error) -> LogError {
    LogError::Os(os_reason(err))
}

/// The reference's message for a file with other hard links (`layout.check_single_link`).
fn hard_links_message(shown: &str, links: u64) -> String {
    format!(
        "{0} has {1} hard links, so writing to it would also change a file outside the trail: \
         find them with 'find / -xdev -samefile {0}'; if it holds this trail, give it its own \
         copy ('cp -p {0} {0}.new && mv {0}.new {0}'), else move it away",
        shown, links
    )
}

/// The reference's refusal of a directory others could change (`layout.check_dir`).
fn loose_dir_message(dir: &File, parent: &File, shown: &str) -> Result<Option<String>, LogError> {
    let meta = dir.metadata().map_err(|e| os_error(&e))?;
    if meta.mode() & 0o022 != 0 {
        return Ok(Some(format!(
            "{0} is writable by group or others (mode {1:04o}), so other users could remove \
             or replace what it holds: check its content, then run 'chmod go-w {0}'",
            shown,
            meta.mode() & 0o7777
        )));
    }
    if meta.uid() != 0 {
        let owner = parent.metadata().map_err(|e| os_error(&e))?.uid();
        if meta.uid() != owner {
            return Ok(Some(format!(
                "{0} belongs to uid {1}, not to the owner of the directory above it (uid {2}) \
                 or root, so that user could remove or replace what it holds: check its \
                 content, then run 'chown {2} {0}'",
                shown,
                meta.uid(),
                owner
            )));
        }
    }
    Ok(None)
}

fn error_log_regular(state: &File, shown: &str) -> Result<File, LogError> {
    match sys::open_at(
        Some(state),
        HOOK_ERRORS,
        O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_NONBLOCK,
        0o600,
    ) {
        Ok(file) => match file.metadata() {
            Ok(meta) if !is_regular(meta.mode()) => Err(LogError::NotRegular),
            Ok(meta) if meta.nlink() > 1 => {
                Err(LogError::Refused(hard_links_message(shown, meta.nlink())))
            }
            Ok(_) => Ok(file),
            Err(err) => Err(os_error(&err)),
        },
        // ELOOP (a symlink), ENXIO (a FIFO without a reader): "not a regular file".
        Err(err) if matches!(err.raw_os_error(), Some(40) | Some(6)) => Err(LogError::NotRegular),
        Err(err) => Err(os_error(&err)),
    }
}

/// Rotate a full error log as the Python hook does; returns the file to write to.
fn rotate_errors(state: &File, out: File, shown: &str) -> Result<File, LogError> {
    match lock_bounded(&out, ERRORS_LOCK_TIMEOUT, 0.002, 0.002) {
        Ok(true) => {}
        Ok(false) => return Ok(out),
        Err(err) => return Err(os_error(&err)),
    }
    let mine = out.metadata().map_err(|e| os_error(&e))?;
    let named = match sys::open_at(Some(state), HOOK_ERRORS, O_PATH | O_NOFOLLOW, 0) {
        Ok(file) => Some(file.metadata().map_err(|e| os_error(&e))?),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(os_error(&e)),
    };
    if let Some(named) = named {
        if named.ino() == mine.ino() {
            if mine.len() < HOOK_ERRORS_MAX_BYTES {
                return Ok(out);
            }
            sys::rename_at(state, HOOK_ERRORS, HOOK_ERRORS_OLD).map_err(|e| os_error(&e))?;
        }
    }
    drop(out);
    error_log_regular(state, shown)
}

/// Append one failure to `<root>/state/hook-errors.jsonl`; return why not, or None.
pub fn record_error(
    root: &str,
    stage: &[u32],
    container_id: &[u32],
    error: &str,
    sync: bool,
    now_ns: u128,
) -> Option<String> {
    let dir = match sys::open_at(None, root, O_RDONLY | O_DIRECTORY, 0) {
        Ok(dir) => dir,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            match makedirs(root).and_then(|_| sys::open_at(None, root, O_RDONLY | O_DIRECTORY, 0)) {
                Ok(dir) => dir,
                Err(e) => return Some(format!("cannot create root {}: {}", root, os_reason(&e))),
            }
        }
        Err(e) => return Some(format!("cannot open root {}: {}", root, os_reason(&e))),
    };
    match dir.metadata() {
        Ok(meta) if meta.mode() & 0o022 != 0 => {
            return Some(format!("root {} is writable by group or others", root))
        }
        Ok(_) => {}
        Err(e) => {
            return Some(format!(
                "cannot write {}/state/hook-errors.jsonl: {}",
                root,
                os_reason(&e)
            ))
        }
    }
    let mut line = Vec::new();
    line.extend_from_slice(b"{\"ts\":");
    json::encode_text(&mut line, &format_ns(now_ns));
    line.extend_from_slice(b",\"stage\":");
    json::encode_str(&mut line, stage);
    line.extend_from_slice(b",\"container_id\":");
    json::encode_str(&mut line, container_id);
    line.extend_from_slice(b",\"error\":");
    json::encode_text(&mut line, error);
    line.extend_from_slice(b"}\n");
    let not_regular = format!(
        "{}/state/hook-errors.jsonl is not a regular file in a directory",
        root
    );
    let cannot = |reason: String| {
        Some(format!(
            "cannot write {}/state/hook-errors.jsonl: {}",
            root, reason
        ))
    };
    // As the Python hook: mkdir (an existing one is fine), then open without
    // following a symlink; a file or symlink there is "not a regular file".
    match sys::mkdir_at(&dir, "state", 0o700) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return cannot(os_reason(&e)),
        _ => {}
    }
    let state = match sys::open_at(Some(&dir), "state", O_RDONLY | O_DIRECTORY | O_NOFOLLOW, 0) {
        Ok(state) => state,
        Err(e) if matches!(e.raw_os_error(), Some(20) | Some(40)) => return Some(not_regular),
        Err(e) => return cannot(os_reason(&e)),
    };
    let failed = |why: LogError| match why {
        LogError::NotRegular => Some(not_regular.clone()),
        LogError::Refused(message) => Some(message),
        LogError::Os(reason) => cannot(reason),
    };
    // A state/ or a log the store would refuse is not written either.
    match loose_dir_message(&state, &dir, &format!("{}/state", root)) {
        Ok(None) => {}
        Ok(Some(message)) => return Some(message),
        Err(why) => return failed(why),
    }
    let shown = format!("{}/state/{}", root, HOOK_ERRORS);
    let mut out = match error_log_regular(&state, &shown) {
        Ok(out) => out,
        Err(why) => return failed(why),
    };
    match out.metadata() {
        Ok(meta) if meta.len() >= HOOK_ERRORS_MAX_BYTES => {
            match rotate_errors(&state, out, &shown) {
                Ok(file) => out = file,
                Err(why) => return failed(why),
            }
        }
        Ok(_) => {}
        Err(e) => return cannot(os_reason(&e)),
    }
    if let Err(e) = out.write(&line) {
        return cannot(os_reason(&e));
    }
    if sync {
        if let Err(e) = out.sync_data() {
            return cannot(os_reason(&e));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::format_ns;

    #[test]
    fn timestamps_like_timefmt() {
        assert_eq!(
            format_ns(1_795_000_000_123_456_789),
            "2026-11-18T11:06:40.123456Z"
        );
        assert_eq!(format_ns(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            format_ns(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000Z"
        );
        assert_eq!(
            format_ns(4_102_444_799_999_999_999),
            "2099-12-31T23:59:59.999999Z"
        );
    }
}

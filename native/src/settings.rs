//! The store settings from the environment alone, as the Python hook's lean
//! parser accepts them; anything else is for the reference loader (None).

use std::env;
use std::path::Path;

const STORE_ENV: [&str; 6] = [
    "SHIELDAUDIT_ROOT",
    "SHIELDAUDIT_MAX_SEGMENT_BYTES",
    "SHIELDAUDIT_KEEP_SEGMENTS",
    "SHIELDAUDIT_FSYNC",
    "SHIELDAUDIT_KEY_FILE",
    "SHIELDAUDIT_FAIL_CLOSED",
];
const DEFAULT_CONFIG_FILE: &str = "/etc/shieldaudit/config.toml";
const DEFAULT_ROOT_FOR_ROOT: &str = "/var/lib/shieldaudit";
const DEFAULT_MAX_SEGMENT_BYTES: u64 = 10 * 1024 * 1024;
const MIN_SEGMENT_BYTES: u64 = 256;
const MAX_SEGMENT_BYTES: u64 = 1024 * 1024 * 1024;
const MAX_KEEP_SEGMENTS: u64 = 100_000;
const TRUE_WORDS: [&str; 4] = ["1", "true", "yes", "on"];
const FALSE_WORDS: [&str; 5] = ["0", "false", "no", "off", ""];

pub struct Settings {
    pub root: String,
    pub max_segment_bytes: u64,
    pub fsync: bool,
    pub key_file: Option<String>,
    pub fail_closed: bool,
}

/// A variable's value; Err(()) when it is set but not UTF-8 (not decided here).
fn var(name: &str) -> Result<Option<String>, ()> {
    match env::var_os(name) {
        None => Ok(None),
        Some(value) => value.into_string().map(Some).map_err(|_| ()),
    }
}

/// `str.strip()` for ASCII text; None when the text is not ASCII.
fn strip(text: &str) -> Option<&str> {
    if !text.is_ascii() {
        return None;
    }
    Some(text.trim_matches(|c: char| {
        matches!(
            c,
            ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c' | '\x1c'..='\x1f'
        )
    }))
}

/// An absolute, normalised path (`os.path.normpath(p) == p`, no leading `//`).
pub fn plain_path(text: &str) -> bool {
    if !text.starts_with('/') || text.starts_with("//") {
        return false;
    }
    if text == "/" {
        return true;
    }
    text[1..]
        .split('/')
        .all(|part| !part.is_empty() && part != "." && part != "..")
}

fn plain_int(value: Option<String>, default: u64) -> Option<u64> {
    match value {
        None => Some(default),
        Some(text) => {
            let text = strip(&text)?;
            if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            text.parse().ok()
        }
    }
}

/// The settings the Python lean parser would produce, or None to hand over.
pub fn lean() -> Option<Settings> {
    let all_set = STORE_ENV.iter().all(|name| env::var_os(name).is_some());
    if !all_set {
        let config = env::var_os("SHIELDAUDIT_CONFIG").map_or(false, |v| !v.is_empty());
        if config || Path::new(DEFAULT_CONFIG_FILE).exists() {
            return None;
        }
    }
    let root = match var("SHIELDAUDIT_ROOT").ok()? {
        Some(root) => root,
        None => {
            if crate::sys::effective_uid() != 0 {
                return None;
            }
            DEFAULT_ROOT_FOR_ROOT.to_string()
        }
    };
    if !plain_path(&root) {
        return None;
    }
    let max_bytes = plain_int(
        var("SHIELDAUDIT_MAX_SEGMENT_BYTES").ok()?,
        DEFAULT_MAX_SEGMENT_BYTES,
    )?;
    let keep = plain_int(var("SHIELDAUDIT_KEEP_SEGMENTS").ok()?, 20)?;
    let fsync_text = var("SHIELDAUDIT_FSYNC")
        .ok()?
        .unwrap_or_else(|| "always".into());
    let fsync = strip(&fsync_text)?.to_ascii_lowercase();
    let key_text = var("SHIELDAUDIT_KEY_FILE").ok()?.unwrap_or_default();
    let key_file = strip(&key_text)?;
    let closed_text = var("SHIELDAUDIT_FAIL_CLOSED").ok()?.unwrap_or_default();
    let closed = strip(&closed_text)?.to_ascii_lowercase();
    if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&max_bytes)
        || keep > MAX_KEEP_SEGMENTS
        || (fsync != "always" && fsync != "never")
        || (!key_file.is_empty() && !plain_path(key_file))
        || !(TRUE_WORDS.contains(&closed.as_str()) || FALSE_WORDS.contains(&closed.as_str()))
    {
        return None;
    }
    Some(Settings {
        root,
        max_segment_bytes: max_bytes,
        fsync: fsync == "always",
        key_file: if key_file.is_empty() {
            None
        } else {
            Some(key_file.to_string())
        },
        fail_closed: TRUE_WORDS.contains(&closed.as_str()),
    })
}

/// `SHIELDAUDIT_FAIL_CLOSED` when the settings did not parse: any set value
/// that is not a false word asks for fail-closed (a non-UTF-8 one too).
pub fn env_fail_closed() -> bool {
    match var("SHIELDAUDIT_FAIL_CLOSED") {
        Ok(None) => false,
        Ok(Some(text)) => match strip(&text) {
            Some(word) => !FALSE_WORDS.contains(&word.to_ascii_lowercase().as_str()),
            None => true,
        },
        Err(()) => true,
    }
}

/// Where a failure is recorded when the settings did not parse: `SHIELDAUDIT_ROOT`
/// (stripped) when it is absolute, else nowhere.
pub fn error_root() -> Option<String> {
    let root = var("SHIELDAUDIT_ROOT").ok()??;
    let root = strip(&root)?;
    if root.starts_with('/') {
        Some(root.to_string())
    } else {
        None
    }
}

/// Whether failures are synced when the settings did not parse (not `never`).
pub fn env_fsync() -> bool {
    match var("SHIELDAUDIT_FSYNC") {
        Ok(Some(text)) => strip(&text).map_or(true, |t| !t.eq_ignore_ascii_case("never")),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::plain_path;

    #[test]
    fn plain_paths_are_normalised_absolute_paths() {
        for good in ["/", "/var/lib/shieldaudit", "/a", "/a.b/..c"] {
            assert!(plain_path(good), "{}", good);
        }
        for bad in [
            "", "rel", "//x", "/a/", "/a//b", "/a/./b", "/a/../b", "/.", "/a/..",
        ] {
            assert!(!plain_path(bad), "{}", bad);
        }
    }
}

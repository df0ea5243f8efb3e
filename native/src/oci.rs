//! From the OCI state, `config.json` and containers/storage's `containers.json`
//! to the fields of one entry, as the Python hook computes them.

use crate::json::{self, eq_ascii, py, JsonError, Object, PyStr, Value};
use crate::Outcome;

pub const STAGES: [&str; 6] = [
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
];
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;
pub const MAX_STORAGE_BYTES: u64 = 16 * 1024 * 1024;
/// How much of containers.json one record may span when decoded on its own.
const RECORD_WINDOW_BYTES: usize = 256 * 1024;
const MAX_DETAIL_CHARS: usize = 512;
const MAX_ANNOTATIONS: usize = 32;
const MAX_ANNOTATION_KEY_CHARS: usize = 128;
const MAX_ANNOTATION_VALUE_CHARS: usize = 256;
const MAX_SHORT_CHARS: usize = 256;
const ELLIPSIS: u32 = 0x2026;
const NAME_ANNOTATIONS: [&str; 2] = [
    "io.kubernetes.cri-o.ContainerName",
    "io.kubernetes.container.name",
];
const IMAGE_ANNOTATIONS: [&str; 2] = [
    "io.kubernetes.cri-o.ImageName",
    "org.opencontainers.image.ref.name",
];

/// The parts of the state document the entry uses.
pub struct State {
    pub container_id: String,
    pub status: PyStr,
    /// The literal text of a positive integer pid.
    pub pid: Option<String>,
    pub bundle: PyStr,
    pub annotations: Vec<(PyStr, PyStr)>,
}

/// What config.json or the storage metadata tells.
#[derive(Default)]
pub struct Info {
    pub name: PyStr,
    pub image: PyStr,
    pub image_id: PyStr,
    pub command: PyStr,
    pub annotations: Vec<(PyStr, PyStr)>,
}

/// Shorten to at most `limit` code points, marking the cut with an ellipsis.
pub fn clip(s: &[u32], limit: usize) -> PyStr {
    if s.len() <= limit {
        s.to_vec()
    } else {
        let mut out = s[..limit - 1].to_vec();
        out.push(ELLIPSIS);
        out
    }
}

fn is_ws_bytes(b: u8) -> bool {
    // bytes.strip(): ASCII whitespace.
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

pub fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Array(_) => "an array",
        Value::Str(_) => "a string",
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        _ => "a number",
    }
}

/// The reason a state document is refused (the Python wording), or a hand-over.
pub enum StateError {
    /// The message, and the container ID to record with it.
    Failed(String, PyStr),
    /// The message depends on Python's own wording: hand over.
    HandOver(&'static str),
}

/// Validate the state document (as `ocistate.parse_state`).
pub fn parse_state(data: &[u8]) -> Result<State, StateError> {
    if data.iter().all(|&b| is_ws_bytes(b)) {
        return Err(StateError::Failed(
            "no OCI state on stdin: the runtime passes it; run this as an OCI hook".into(),
            Vec::new(),
        ));
    }
    let text = match std::str::from_utf8(data) {
        Ok(text) => text,
        Err(err) => {
            return Err(StateError::Failed(
                format!(
                    "OCI state on stdin is not UTF-8 (byte {})",
                    err.valid_up_to()
                ),
                Vec::new(),
            ))
        }
    };
    let value = match json::loads(text) {
        Ok(value) => value,
        Err(JsonError::Invalid) => return Err(StateError::HandOver("the state is not JSON")),
        Err(JsonError::Doubt(why)) => return Err(StateError::HandOver(why)),
    };
    let state = match value {
        Value::Object(o) => o,
        other => {
            return Err(StateError::Failed(
                format!(
                    "OCI state on stdin is not a JSON object but {}",
                    json_type(&other)
                ),
                Vec::new(),
            ))
        }
    };
    let container_id = match state.get("id") {
        Some(Value::Str(s)) if is_container_id(s) => s.iter().map(|&c| c as u8 as char).collect(),
        Some(Value::Str(s)) => match simple_repr(&s[..s.len().min(80)]) {
            Some(shown) => {
                let more = if s.len() > 80 { "\u{2026}" } else { "" };
                return Err(StateError::Failed(
                    format!(
                        "invalid container ID {}{}: expected the runtime's full ID, \
                         64 lower-case hex characters",
                        shown, more
                    ),
                    s.clone(),
                ));
            }
            None => return Err(StateError::HandOver("an invalid ID Python shows itself")),
        },
        _ => return Err(StateError::HandOver("an invalid ID Python shows itself")),
    };
    let status = match state.get("status") {
        Some(Value::Str(s)) => clip(s, 32),
        _ => Vec::new(),
    };
    let pid = match state.get("pid") {
        Some(Value::Int(text)) if !text.starts_with('-') && text != "0" => Some(text.clone()),
        _ => None,
    };
    let bundle_value = if state.contains("bundle") {
        state.get("bundle")
    } else {
        state.get("bundlePath")
    };
    let bundle = match bundle_value {
        Some(Value::Str(s)) if usable_path(s) => s.clone(),
        _ => Vec::new(),
    };
    if bundle.iter().any(|c| (0xd800..=0xdfff).contains(c)) {
        return Err(StateError::HandOver("a bundle path with a surrogate"));
    }
    Ok(State {
        container_id,
        status,
        pid,
        bundle,
        annotations: string_map(state.get("annotations")),
    })
}

fn is_container_id(s: &[u32]) -> bool {
    s.len() == 64 && s.iter().all(|&c| matches!(c, 0x30..=0x39 | 0x61..=0x66))
}

/// `repr()` of a string made only of printable ASCII without quotes or backslashes.
pub fn simple_repr(s: &[u32]) -> Option<String> {
    if s.iter()
        .all(|&c| (0x20..=0x7e).contains(&c) && c != 0x27 && c != 0x5c)
    {
        Some(format!(
            "'{}'",
            s.iter().map(|&c| c as u8 as char).collect::<String>()
        ))
    } else {
        None
    }
}

fn usable_path(s: &[u32]) -> bool {
    s.first() == Some(&0x2f) && !s.contains(&0) && s.len() <= 4096
}

/// The string-to-string pairs of an annotations object: sorted, at most 32, clipped.
pub fn string_map(value: Option<&Value>) -> Vec<(PyStr, PyStr)> {
    let obj = match value {
        Some(Value::Object(o)) => o,
        _ => return Vec::new(),
    };
    let mut pairs: Vec<(&PyStr, &PyStr)> = obj
        .entries
        .iter()
        .filter_map(|(k, v)| match v {
            Value::Str(v) => Some((k, v)),
            _ => None,
        })
        .collect();
    pairs.sort();
    // A dict comprehension: two keys clipped alike keep the first position, the last value.
    let mut out: Vec<(PyStr, PyStr)> = Vec::new();
    for (k, v) in pairs.into_iter().take(MAX_ANNOTATIONS) {
        let key = clip(k, MAX_ANNOTATION_KEY_CHARS);
        let value = clip(v, MAX_ANNOTATION_VALUE_CHARS);
        match out.iter_mut().find(|(existing, _)| *existing == key) {
            Some(slot) => slot.1 = value,
            None => out.push((key, value)),
        }
    }
    out
}

fn is_safe_arg(c: u32) -> bool {
    match char::from_u32(c) {
        Some(ch) => ch.is_ascii_alphanumeric() || "@%+=:,./-_".contains(ch),
        None => false,
    }
}

/// Quote one argument as shlex.quote does.
fn quote_arg(arg: &[u32]) -> PyStr {
    if !arg.is_empty() && arg.iter().all(|&c| is_safe_arg(c)) {
        return arg.to_vec();
    }
    let mut out = vec![0x27];
    for &c in arg {
        if c == 0x27 {
            out.extend(py("'\"'\"'"));
        } else {
            out.push(c);
        }
    }
    out.push(0x27);
    out
}

fn command_of(config: &Object) -> PyStr {
    let args = match config.get("process") {
        Some(Value::Object(process)) => match process.get("args") {
            Some(Value::Array(args)) => args,
            _ => return Vec::new(),
        },
        _ => return Vec::new(),
    };
    let mut words: Vec<PyStr> = Vec::new();
    let mut total = 0usize;
    for arg in args {
        if let Value::Str(arg) = arg {
            let word = quote_arg(arg);
            total += word.len() + 1;
            words.push(word);
            if total > MAX_DETAIL_CHARS {
                break;
            }
        }
    }
    let joined = words.join(&0x20);
    clip(&joined, MAX_DETAIL_CHARS)
}

fn first(annotations: &[(PyStr, PyStr)], keys: &[&str]) -> PyStr {
    for key in keys {
        if let Some((_, value)) = annotations.iter().find(|(k, _)| eq_ascii(k, key)) {
            if !value.is_empty() {
                return clip(value, MAX_SHORT_CHARS);
            }
        }
    }
    Vec::new()
}

/// What config.json tells: command, annotations, CRI-O's name and image.
pub fn bundle_info(data: &[u8]) -> Result<Info, &'static str> {
    if data.iter().all(|&b| is_ws_bytes(b)) {
        return Ok(Info::default());
    }
    let text = match std::str::from_utf8(data) {
        Ok(text) => text,
        Err(_) => return Ok(Info::default()),
    };
    let config = match json::loads(text) {
        Ok(Value::Object(o)) => o,
        Ok(_) | Err(JsonError::Invalid) => return Ok(Info::default()),
        Err(JsonError::Doubt(why)) => return Err(why),
    };
    let annotations = string_map(config.get("annotations"));
    Ok(Info {
        name: first(&annotations, &NAME_ANNOTATIONS),
        image: first(&annotations, &IMAGE_ANNOTATIONS),
        image_id: Vec::new(),
        command: command_of(&config),
        annotations,
    })
}

/// `<dir>/containers.json` for a `<dir>/<id>/userdata` bundle (Podman's layout).
pub fn storage_metadata_path(bundle: &[u32], container_id: &str) -> Option<String> {
    let mut end = bundle.len();
    while end > 0 && bundle[end - 1] == 0x2f {
        end -= 1;
    }
    let trimmed = &bundle[..end];
    let last = trimmed.iter().rposition(|&c| c == 0x2f)?;
    let leaf = &trimmed[last + 1..];
    let rest = &trimmed[..last];
    let middle_at = rest.iter().rposition(|&c| c == 0x2f)?;
    let middle = &rest[middle_at + 1..];
    let dir = &rest[..middle_at];
    if !eq_ascii(leaf, "userdata") || !eq_ascii(middle, container_id) || dir.is_empty() {
        return None;
    }
    json::to_string(dir).map(|d| d + "/containers.json")
}

/// Find the container's record in containers.json the way the Python hook does;
/// anything but the compact record form is handed over (Python parses the whole file).
pub fn storage_record(data: &[u8], container_id: &str) -> Result<Info, Outcome> {
    let key = format!("\"id\":\"{}\"", container_id);
    let at = match find(data, key.as_bytes()) {
        Some(at) => at,
        None => {
            return Err(Outcome::hand_over(
                "the container is not in containers.json's compact form",
            ))
        }
    };
    let start = match data[..at].iter().rposition(|&b| b == b'{') {
        Some(start) => start,
        None => {
            return Err(Outcome::hand_over(
                "containers.json has an unexpected layout",
            ))
        }
    };
    if !data[start + 1..at].iter().all(|&b| is_ws_bytes(b)) {
        return Err(Outcome::hand_over(
            "containers.json has an unexpected layout",
        ));
    }
    let window = &data[start..data.len().min(start + RECORD_WINDOW_BYTES)];
    // Python decodes the window with errors="replace": decide only on its valid prefix.
    let valid = match std::str::from_utf8(window) {
        Ok(text) => text,
        Err(err) => match std::str::from_utf8(&window[..err.valid_up_to()]) {
            Ok(text) => text,
            Err(_) => return Err(Outcome::hand_over("containers.json is not UTF-8")),
        },
    };
    let record = match json::decode_prefix(valid) {
        Ok(Value::Object(o)) => o,
        _ => {
            return Err(Outcome::hand_over(
                "the containers.json record does not decode on its own",
            ))
        }
    };
    match record.get("id") {
        Some(Value::Str(s)) if eq_ascii(s, container_id) => {}
        _ => {
            return Err(Outcome::hand_over(
                "the containers.json record is not the container's",
            ))
        }
    }
    record_info(&record)
}

fn record_info(record: &Object) -> Result<Info, Outcome> {
    let mut name = match record.get("names") {
        Some(Value::Array(names)) => match names.first() {
            Some(Value::Str(s)) => s.clone(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };
    let mut image = Vec::new();
    if let Some(Value::Str(metadata)) = record.get("metadata") {
        if !metadata.is_empty() {
            let text = match json::to_string(metadata) {
                Some(text) => text,
                None => return Err(Outcome::hand_over("storage metadata with a surrogate")),
            };
            match json::loads(&text) {
                Ok(Value::Object(meta)) => {
                    if let Some(Value::Str(s)) = meta.get("image-name") {
                        image = s.clone();
                    }
                    if name.is_empty() {
                        if let Some(Value::Str(s)) = meta.get("name") {
                            name = s.clone();
                        }
                    }
                }
                Ok(_) | Err(JsonError::Invalid) => {}
                Err(JsonError::Doubt(why)) => return Err(Outcome::hand_over(why)),
            }
        }
    }
    let image_id = match record.get("image") {
        Some(Value::Str(s)) => clip(s, MAX_SHORT_CHARS),
        _ => Vec::new(),
    };
    Ok(Info {
        name: clip(&name, MAX_SHORT_CHARS),
        image: clip(&image, MAX_SHORT_CHARS),
        image_id,
        command: Vec::new(),
        annotations: Vec::new(),
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    let mut i = 0;
    while i + needle.len() <= haystack.len() {
        match haystack[i..=haystack.len() - needle.len()]
            .iter()
            .position(|&b| b == first)
        {
            Some(off) => {
                i += off;
                if &haystack[i..i + needle.len()] == needle {
                    return Some(i);
                }
                i += 1;
            }
            None => return None,
        }
    }
    None
}

/// The entry's fields after `seq` and before `prev`, in the writer's order,
/// as (key, encoded JSON value).
pub fn entry_fields(stage: &str, state: &State, bundle: &Info, storage: &Info) -> Fields {
    let pick = |a: &PyStr, b: &PyStr| if !a.is_empty() { a.clone() } else { b.clone() };
    let image = if !storage.image.is_empty() {
        storage.image.clone()
    } else {
        pick(&bundle.image, &storage.image_id)
    };
    let annotations = if !state.annotations.is_empty() {
        state.annotations.clone()
    } else {
        bundle.annotations.clone()
    };
    Fields {
        action: stage.to_string(),
        container: pick(&storage.name, &bundle.name),
        image,
        pid: state.pid.clone(),
        detail: bundle.command.clone(),
        status: state.status.clone(),
        bundle: clip(&state.bundle, MAX_SHORT_CHARS * 4),
        image_id: storage.image_id.clone(),
        annotations,
    }
}

/// One hook entry's fields (the writer adds seq, ts, container_id and the chain).
pub struct Fields {
    pub action: String,
    pub container: PyStr,
    pub image: PyStr,
    pub pid: Option<String>,
    pub detail: PyStr,
    pub status: PyStr,
    pub bundle: PyStr,
    pub image_id: PyStr,
    pub annotations: Vec<(PyStr, PyStr)>,
}

impl Fields {
    /// The signed part of the line: everything up to `"chain":…}` (no mac yet).
    pub fn signed_line(
        &self,
        seq: u64,
        ts: &str,
        container_id: &str,
        prev: &str,
        chain: &str,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(format!("{{\"seq\":{},\"ts\":", seq).as_bytes());
        json::encode_text(&mut out, ts);
        out.extend_from_slice(b",\"source\":\"hook\",\"action\":");
        json::encode_text(&mut out, &self.action);
        out.extend_from_slice(b",\"container\":");
        json::encode_str(&mut out, &self.container);
        out.extend_from_slice(b",\"container_id\":");
        json::encode_text(&mut out, container_id);
        out.extend_from_slice(b",\"image\":");
        json::encode_str(&mut out, &self.image);
        out.extend_from_slice(b",\"pid\":");
        match &self.pid {
            Some(pid) => out.extend_from_slice(pid.as_bytes()),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"exit_code\":null,\"dest\":\"\",\"detail\":");
        json::encode_str(&mut out, &self.detail);
        out.extend_from_slice(b",\"status\":");
        json::encode_str(&mut out, &self.status);
        out.extend_from_slice(b",\"bundle\":");
        json::encode_str(&mut out, &self.bundle);
        if !self.image_id.is_empty() {
            out.extend_from_slice(b",\"image_id\":");
            json::encode_str(&mut out, &self.image_id);
        }
        if !self.annotations.is_empty() {
            out.extend_from_slice(b",\"annotations\":{");
            for (i, (k, v)) in self.annotations.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                json::encode_str(&mut out, k);
                out.push(b':');
                json::encode_str(&mut out, v);
            }
            out.push(b'}');
        }
        out.extend_from_slice(b",\"prev\":");
        json::encode_text(&mut out, prev);
        out.extend_from_slice(b",\"chain\":");
        json::encode_text(&mut out, chain);
        out.push(b'}');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_counts_code_points_and_marks_the_cut() {
        assert_eq!(clip(&py("abc"), 3), py("abc"));
        assert_eq!(clip(&py("abcd"), 3), py("ab\u{2026}"));
        assert_eq!(clip(&[0x1f600, 0xd800, 0x41], 2), vec![0x1f600, 0x2026]);
    }

    #[test]
    fn quoting_like_shlex() {
        assert_eq!(quote_arg(&py("nginx")), py("nginx"));
        assert_eq!(quote_arg(&py("")), py("''"));
        assert_eq!(quote_arg(&py("daemon off;")), py("'daemon off;'"));
        assert_eq!(quote_arg(&py("it's")), py("'it'\"'\"'s'"));
        assert_eq!(quote_arg(&py("\u{e9}")), py("'\u{e9}'"));
    }

    #[test]
    fn storage_path_only_for_podmans_layout() {
        let id = "ab".repeat(32);
        let bundle = py(&format!(
            "/var/lib/containers/storage/overlay-containers/{}/userdata/",
            id
        ));
        assert_eq!(
            storage_metadata_path(&bundle, &id).as_deref(),
            Some("/var/lib/containers/storage/overlay-containers/containers.json")
        );
        assert_eq!(
            storage_metadata_path(&py(&format!("/{}/userdata", id)), &id),
            None
        );
        assert_eq!(storage_metadata_path(&py("/x/other/userdata"), &id), None);
        assert_eq!(
            storage_metadata_path(&py(&format!("/x/{}/bundle", id)), &id),
            None
        );
    }

    #[test]
    fn annotations_sorted_bounded_and_clipped_like_a_dict_comprehension() {
        let long_a = format!("{}a", "k".repeat(200));
        let long_b = format!("{}b", "k".repeat(200));
        let doc = format!(
            r#"{{"{}":"first","{}":"second","z":1,"a":"x"}}"#,
            long_b, long_a
        );
        let value = json::loads(&doc).unwrap();
        let map = string_map(Some(&value));
        assert_eq!(map.len(), 2);
        assert_eq!(map[0], (py("a"), py("x")));
        assert_eq!(map[1].0.len(), 128);
        assert_eq!(map[1].1, py("first")); // the later key (b) in sorted order wins
        let many: String = (0..40)
            .map(|i| format!(r#""k{:02}":"v""#, i))
            .collect::<Vec<_>>()
            .join(",");
        let value = json::loads(&format!("{{{}}}", many)).unwrap();
        assert_eq!(string_map(Some(&value)).len(), 32);
    }

    #[test]
    fn command_is_quoted_joined_and_clipped() {
        let config = match json::loads(r#"{"process":{"args":["sh","-c","echo 'hi'",1,null]}}"#) {
            Ok(Value::Object(o)) => o,
            _ => panic!("not an object"),
        };
        assert_eq!(command_of(&config), py("sh -c 'echo '\"'\"'hi'\"'\"''"));
        let long = format!(
            r#"{{"process":{{"args":[{}]}}}}"#,
            vec![r#""aaaaaaaaaa""#; 100].join(",")
        );
        let config = match json::loads(&long) {
            Ok(Value::Object(o)) => o,
            _ => panic!("not an object"),
        };
        assert_eq!(command_of(&config).len(), 512);
    }
}

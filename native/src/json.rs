//! A strict, bounded JSON reader and the entry encoder, matching Python's `json`.
//!
//! Reading follows CPython's `json.loads(text, strict=False)` (its C scanner):
//! the same grammar, `NaN`/`Infinity`, raw control characters accepted inside
//! strings, `\u` escapes joined into one code point only for a high surrogate
//! followed by a low one, lone surrogates kept, duplicate keys resolved as a
//! `dict` does (first position, last value). Strings are sequences of code
//! points (`PyStr`), so lengths and ordering are Python's.
//!
//! Where Python's answer depends on things this reader does not model (nesting
//! deep enough to approach the interpreter's recursion limit, integers over
//! Python's 4300-digit conversion limit), it answers [`JsonError::Doubt`] and
//! the caller hands the run to the Python reference path.

use std::collections::HashMap;

/// A string as Python holds it: code points, lone surrogates included.
pub type PyStr = Vec<u32>;

/// Nesting deeper than this is not decided here.
pub const MAX_DEPTH: usize = 128;
/// Python refuses to convert integers with more digits (`sys.int_info`).
const MAX_INT_DIGITS: usize = 4300;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    /// An integer, as its literal text (JSON forbids leading zeros and `+`).
    Int(String),
    Float,
    Str(PyStr),
    Array(Vec<Value>),
    Object(Object),
}

/// An object with `dict` semantics: keys in first-seen order, last value wins.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Object {
    pub entries: Vec<(PyStr, Value)>,
}

impl Object {
    /// The value of an ASCII key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries
            .iter()
            .find(|(k, _)| eq_ascii(k, key))
            .map(|(_, v)| v)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonError {
    /// Not JSON (Python raises ValueError).
    Invalid,
    /// Python's answer is not modelled here: let the reference path decide.
    Doubt(&'static str),
}

/// Whether a code-point string equals an ASCII text.
pub fn eq_ascii(s: &[u32], text: &str) -> bool {
    s.len() == text.len() && s.iter().zip(text.bytes()).all(|(&c, b)| c == u32::from(b))
}

/// A code-point string from UTF-8 text.
pub fn py(text: &str) -> PyStr {
    text.chars().map(u32::from).collect()
}

/// UTF-8 text of a code-point string, or None when it holds a surrogate.
pub fn to_string(s: &[u32]) -> Option<String> {
    s.iter().map(|&c| char::from_u32(c)).collect()
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Parse exactly one JSON document (whitespace around it allowed).
pub fn loads(text: &str) -> Result<Value, JsonError> {
    let p = Parser {
        s: text.as_bytes(),
        text,
    };
    let mut i = 0;
    while i < p.s.len() && is_ws(p.s[i]) {
        i += 1;
    }
    let (value, end) = p.value(i, 0)?;
    if p.s[end..].iter().all(|&b| is_ws(b)) {
        Ok(value)
    } else {
        Err(JsonError::Invalid)
    }
}

/// Parse the one value starting at byte 0 of `text`, ignoring what follows it.
pub fn decode_prefix(text: &str) -> Result<Value, JsonError> {
    let p = Parser {
        s: text.as_bytes(),
        text,
    };
    p.value(0, 0).map(|(value, _)| value)
}

struct Parser<'a> {
    s: &'a [u8],
    text: &'a str,
}

impl<'a> Parser<'a> {
    fn starts(&self, at: usize, word: &str) -> bool {
        self.s.len() >= at + word.len() && &self.s[at..at + word.len()] == word.as_bytes()
    }

    fn skip_ws(&self, mut i: usize) -> usize {
        while i < self.s.len() && is_ws(self.s[i]) {
            i += 1;
        }
        i
    }

    fn value(&self, i: usize, depth: usize) -> Result<(Value, usize), JsonError> {
        let b = match self.s.get(i) {
            Some(&b) => b,
            None => return Err(JsonError::Invalid),
        };
        match b {
            b'"' => {
                let (s, end) = self.string(i + 1)?;
                Ok((Value::Str(s), end))
            }
            b'{' => self.object(i + 1, depth + 1),
            b'[' => self.array(i + 1, depth + 1),
            b'n' if self.starts(i, "null") => Ok((Value::Null, i + 4)),
            b't' if self.starts(i, "true") => Ok((Value::Bool(true), i + 4)),
            b'f' if self.starts(i, "false") => Ok((Value::Bool(false), i + 5)),
            b'N' if self.starts(i, "NaN") => Ok((Value::Float, i + 3)),
            b'I' if self.starts(i, "Infinity") => Ok((Value::Float, i + 8)),
            b'-' if self.starts(i, "-Infinity") => Ok((Value::Float, i + 9)),
            _ => self.number(i),
        }
    }

    fn is_digit(&self, i: usize) -> bool {
        self.s.get(i).map_or(false, u8::is_ascii_digit)
    }

    fn number(&self, start: usize) -> Result<(Value, usize), JsonError> {
        let s = self.s;
        let mut i = start;
        if s.get(i) == Some(&b'-') {
            i += 1;
        }
        match s.get(i) {
            Some(b'1'..=b'9') => {
                i += 1;
                while self.is_digit(i) {
                    i += 1;
                }
            }
            Some(b'0') => i += 1,
            _ => return Err(JsonError::Invalid),
        }
        let int_end = i;
        let mut is_float = false;
        if s.get(i) == Some(&b'.') && self.is_digit(i + 1) {
            is_float = true;
            i += 2;
            while self.is_digit(i) {
                i += 1;
            }
        }
        // An exponent needs a character after the 'e' (CPython checks idx < end_idx).
        if i + 1 < s.len() && (s[i] == b'e' || s[i] == b'E') {
            let e_start = i;
            i += 1;
            if i + 1 < s.len() && (s[i] == b'-' || s[i] == b'+') {
                i += 1;
            }
            while self.is_digit(i) {
                i += 1;
            }
            if s[i - 1].is_ascii_digit() {
                is_float = true;
            } else {
                i = e_start;
            }
        }
        if is_float {
            return Ok((Value::Float, i));
        }
        let text = &self.text[start..int_end];
        if text.trim_start_matches('-').len() > MAX_INT_DIGITS {
            return Err(JsonError::Doubt("an integer longer than Python converts"));
        }
        Ok((Value::Int(text.to_string()), i))
    }

    /// A string whose opening quote is at `start - 1`; returns it and the index after the quote.
    fn string(&self, start: usize) -> Result<(PyStr, usize), JsonError> {
        let s = self.s;
        let mut out: PyStr = Vec::new();
        let mut i = start;
        loop {
            let b = match s.get(i) {
                Some(&b) => b,
                None => return Err(JsonError::Invalid),
            };
            if b == b'"' {
                return Ok((out, i + 1));
            }
            if b == b'\\' {
                let e = match s.get(i + 1) {
                    Some(&e) => e,
                    None => return Err(JsonError::Invalid),
                };
                if e != b'u' {
                    let c = match e {
                        b'"' => b'"',
                        b'\\' => b'\\',
                        b'/' => b'/',
                        b'b' => 8,
                        b'f' => 12,
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        _ => return Err(JsonError::Invalid),
                    };
                    out.push(u32::from(c));
                    i += 2;
                    continue;
                }
                // CPython: four hex digits and at least one character after them.
                let end = i + 6;
                if end >= s.len() {
                    return Err(JsonError::Invalid);
                }
                let c = hex4(&s[i + 2..end]).ok_or(JsonError::Invalid)?;
                i = end;
                if (0xd800..=0xdbff).contains(&c)
                    && end + 6 < s.len()
                    && s[end] == b'\\'
                    && s[end + 1] == b'u'
                {
                    let c2 = hex4(&s[end + 2..end + 6]).ok_or(JsonError::Invalid)?;
                    if (0xdc00..=0xdfff).contains(&c2) {
                        out.push(0x10000 + ((c - 0xd800) << 10) + (c2 - 0xdc00));
                        i = end + 6;
                        continue;
                    }
                }
                out.push(c);
                continue;
            }
            if b < 0x80 {
                out.push(u32::from(b));
                i += 1;
                continue;
            }
            // The input is valid UTF-8 (a &str): decode one character.
            let ch = match self.text[i..].chars().next() {
                Some(ch) => ch,
                None => return Err(JsonError::Invalid),
            };
            out.push(u32::from(ch));
            i += ch.len_utf8();
        }
    }

    fn object(&self, i: usize, depth: usize) -> Result<(Value, usize), JsonError> {
        if depth > MAX_DEPTH {
            return Err(JsonError::Doubt(
                "JSON nested deeper than the native reader goes",
            ));
        }
        let s = self.s;
        let mut obj = Object::default();
        let mut index: HashMap<PyStr, usize> = HashMap::new();
        let mut i = self.skip_ws(i);
        if s.get(i) == Some(&b'}') {
            return Ok((Value::Object(obj), i + 1));
        }
        loop {
            if s.get(i) != Some(&b'"') {
                return Err(JsonError::Invalid);
            }
            let (key, next) = self.string(i + 1)?;
            i = self.skip_ws(next);
            if s.get(i) != Some(&b':') {
                return Err(JsonError::Invalid);
            }
            i = self.skip_ws(i + 1);
            let (value, next) = self.value(i, depth)?;
            match index.get(&key) {
                Some(&at) => obj.entries[at].1 = value,
                None => {
                    index.insert(key.clone(), obj.entries.len());
                    obj.entries.push((key, value));
                }
            }
            i = self.skip_ws(next);
            match s.get(i) {
                Some(b'}') => return Ok((Value::Object(obj), i + 1)),
                Some(b',') => {}
                _ => return Err(JsonError::Invalid),
            }
            i = self.skip_ws(i + 1);
        }
    }

    fn array(&self, i: usize, depth: usize) -> Result<(Value, usize), JsonError> {
        if depth > MAX_DEPTH {
            return Err(JsonError::Doubt(
                "JSON nested deeper than the native reader goes",
            ));
        }
        let s = self.s;
        let mut items = Vec::new();
        let mut i = self.skip_ws(i);
        if s.get(i) == Some(&b']') {
            return Ok((Value::Array(items), i + 1));
        }
        loop {
            let (value, next) = self.value(i, depth)?;
            items.push(value);
            i = self.skip_ws(next);
            match s.get(i) {
                Some(b']') => return Ok((Value::Array(items), i + 1)),
                Some(b',') => {}
                _ => return Err(JsonError::Invalid),
            }
            i = self.skip_ws(i + 1);
            if s.get(i) == Some(&b']') {
                return Err(JsonError::Invalid); // a trailing comma
            }
        }
    }
}

fn hex4(digits: &[u8]) -> Option<u32> {
    let mut value = 0u32;
    for &d in digits {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            b'A'..=b'F' => d - b'A' + 10,
            _ => return None,
        };
        value = (value << 4) | u32::from(v);
    }
    Some(value)
}

/// Append a string as `json.dumps(..., ensure_ascii=True)` writes it.
pub fn encode_str(out: &mut Vec<u8>, s: &[u32]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    fn unit(out: &mut Vec<u8>, u: u32) {
        out.extend_from_slice(b"\\u");
        for shift in [12, 8, 4, 0] {
            out.push(HEX[((u >> shift) & 15) as usize]);
        }
    }
    out.push(b'"');
    for &c in s {
        match c {
            0x22 => out.extend_from_slice(b"\\\""),
            0x5c => out.extend_from_slice(b"\\\\"),
            0x20..=0x7e => out.push(c as u8),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            0x0a => out.extend_from_slice(b"\\n"),
            0x0d => out.extend_from_slice(b"\\r"),
            0x09 => out.extend_from_slice(b"\\t"),
            0x10000..=u32::MAX => {
                let v = c - 0x10000;
                unit(out, 0xd800 | ((v >> 10) & 0x3ff));
                unit(out, 0xdc00 | (v & 0x3ff));
            }
            _ => unit(out, c),
        }
    }
    out.push(b'"');
}

/// Append an ASCII text as a JSON string.
pub fn encode_text(out: &mut Vec<u8>, text: &str) {
    encode_str(out, &py(text));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &Value) -> &PyStr {
        match v {
            Value::Str(s) => s,
            other => panic!("not a string: {:?}", other),
        }
    }

    #[test]
    fn scalars_and_containers() {
        assert_eq!(loads(" null "), Ok(Value::Null));
        assert_eq!(loads("true"), Ok(Value::Bool(true)));
        assert_eq!(loads("-12"), Ok(Value::Int("-12".into())));
        assert_eq!(loads("1.5e3"), Ok(Value::Float));
        assert_eq!(loads("NaN"), Ok(Value::Float));
        assert_eq!(loads("-Infinity"), Ok(Value::Float));
        assert_eq!(loads("[]"), Ok(Value::Array(vec![])));
        let obj = loads(r#"{"a": 1, "b": [true, null]}"#).unwrap();
        match obj {
            Value::Object(o) => {
                assert_eq!(o.get("a"), Some(&Value::Int("1".into())));
                assert_eq!(o.entries.len(), 2);
            }
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn rejects_what_python_rejects() {
        for bad in [
            "",
            " ",
            "01",
            "1.",
            "[1,]",
            "{\"a\":1,}",
            "{'a':1}",
            "tru",
            "-",
            "1 2",
            "[",
            "{\"a\"}",
            "\"\\x\"",
            "\"\\u12\"",
            "\"abc",
            "+1",
            ".5",
            "[1 2]",
            "{\"a\":1 \"b\":2}",
            "\u{feff}1",
        ] {
            assert_eq!(loads(bad), Err(JsonError::Invalid), "{:?}", bad);
        }
    }

    #[test]
    fn raw_control_characters_are_kept() {
        let v = loads("\"a\u{1}b\tc\nd\"").unwrap();
        assert_eq!(s(&v), &vec![97, 1, 98, 9, 99, 10, 100]);
    }

    #[test]
    fn surrogates_like_python() {
        let v = loads(r#""\ud83d\ude00""#).unwrap();
        assert_eq!(s(&v), &vec![0x1f600]);
        let v = loads(r#""\ud83dx\ude00""#).unwrap();
        assert_eq!(s(&v), &vec![0xd83d, 0x78, 0xde00]);
        let v = loads(r#""\ud83d\u0041""#).unwrap();
        assert_eq!(s(&v), &vec![0xd83d, 0x41]);
        assert_eq!(loads(r#""\ud83d\uZZZZ""#), Err(JsonError::Invalid));
        let mut out = Vec::new();
        encode_str(&mut out, &[0x1f600, 0xd800, 0x7f, 1, 0xe9, 0x22, 0x5c]);
        assert_eq!(
            out,
            br#""\ud83d\ude00\ud800\u007f\u0001\u00e9\"\\""#.to_vec()
        );
    }

    #[test]
    fn duplicate_keys_first_position_last_value() {
        let v = loads(r#"{"a":1,"b":2,"a":3}"#).unwrap();
        match v {
            Value::Object(o) => {
                assert_eq!(o.entries.len(), 2);
                assert!(eq_ascii(&o.entries[0].0, "a"));
                assert_eq!(o.entries[0].1, Value::Int("3".into()));
            }
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn bounded_depth_and_integers_are_doubts() {
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert!(matches!(loads(&deep), Err(JsonError::Doubt(_))));
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(loads(&ok).is_ok());
        assert!(matches!(loads(&"9".repeat(4301)), Err(JsonError::Doubt(_))));
        assert!(loads(&"9".repeat(4300)).is_ok());
        assert_eq!(loads(&format!("1.{}", "9".repeat(5000))), Ok(Value::Float));
        // Far deeper than any stack would allow recursing into: still an answer.
        let hostile = "[".repeat(1_000_000);
        assert!(matches!(loads(&hostile), Err(JsonError::Doubt(_))));
    }

    #[test]
    fn exponent_backtracks_like_cpython() {
        assert_eq!(loads("1e5"), Ok(Value::Float));
        assert_eq!(loads("1e"), Err(JsonError::Invalid));
        assert_eq!(decode_prefix("1e+]"), Ok(Value::Int("1".into())));
        assert_eq!(decode_prefix("[1e5]").map(|_| ()), Ok(()));
    }
}

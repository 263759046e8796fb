//! Python's `json.dumps` output in the forms MLflow's artifact routes produce.
//!
//! Clients mostly parse, but byte-for-byte answers keep our differential tests honest and keep
//! the UI's error handling on familiar ground.

use serde_json::Value;

/// Which of MLflow's serialisers answered a route in the stock server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// Flask handlers: `json.dumps(obj)`: `", "` and `": "`, non-ASCII as `\uXXXX`.
    Flask,
    /// Flask `message_to_json`: `json.dumps(obj, indent=2)`, non-ASCII as `\uXXXX`.
    FlaskPretty,
    /// FastAPI/Starlette `JSONResponse`: compact, UTF-8 as is.
    FastApi,
    /// Flask `jsonify` (outside debug mode): compact, keys sorted, non-ASCII as `\uXXXX`; the
    /// response adds a final newline.
    Jsonify,
}

pub fn dumps(value: &Value, dialect: Dialect) -> String {
    let mut out = String::new();
    write_value(&mut out, value, dialect, 0);
    out
}

fn write_value(out: &mut String, value: &Value, dialect: Dialect, level: usize) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_string(out, s, dialect != Dialect::FastApi),
        Value::Array(items) => {
            write_container(out, '[', ']', items.len(), dialect, level, |out, i| {
                write_value(out, &items[i], dialect, level + 1);
            });
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            if dialect == Dialect::Jsonify {
                // Python compares str by code point, as Rust compares UTF-8 bytes.
                entries.sort_by(|a, b| a.0.cmp(b.0));
            }
            let colon = if matches!(dialect, Dialect::FastApi | Dialect::Jsonify) {
                ":"
            } else {
                ": "
            };
            write_container(out, '{', '}', entries.len(), dialect, level, |out, i| {
                write_string(out, entries[i].0, dialect != Dialect::FastApi);
                out.push_str(colon);
                write_value(out, entries[i].1, dialect, level + 1);
            });
        }
    }
}

fn write_container(
    out: &mut String,
    open: char,
    close: char,
    len: usize,
    dialect: Dialect,
    level: usize,
    mut write_item: impl FnMut(&mut String, usize),
) {
    out.push(open);
    if len == 0 {
        out.push(close);
        return;
    }
    let pretty = dialect == Dialect::FlaskPretty;
    for i in 0..len {
        if i > 0 {
            out.push_str(match dialect {
                Dialect::Flask => ", ",
                Dialect::FlaskPretty => ",",
                Dialect::FastApi | Dialect::Jsonify => ",",
            });
        }
        if pretty {
            out.push('\n');
            out.push_str(&"  ".repeat(level + 1));
        }
        write_item(out, i);
    }
    if pretty {
        out.push('\n');
        out.push_str(&"  ".repeat(level));
    }
    out.push(close);
}

fn write_string(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if u32::from(c) < 0x20 || (ensure_ascii && !(' '..='~').contains(&c)) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn flask_error_shape() {
        let v = json!({"error_code": "INVALID_PARAMETER_VALUE", "message": "Invalid path"});
        assert_eq!(
            dumps(&v, Dialect::Flask),
            r#"{"error_code": "INVALID_PARAMETER_VALUE", "message": "Invalid path"}"#
        );
    }

    #[test]
    fn pretty_listing_escapes_non_ascii() {
        let v = json!({"files": [{"path": "日.txt", "is_dir": false, "file_size": 3}]});
        let expected = "{\n  \"files\": [\n    {\n      \"path\": \"\\u65e5.txt\",\n      \"is_dir\": false,\n      \"file_size\": 3\n    }\n  ]\n}";
        assert_eq!(dumps(&v, Dialect::FlaskPretty), expected);
        assert_eq!(dumps(&json!({}), Dialect::FlaskPretty), "{}");
    }

    #[test]
    fn fastapi_is_compact_utf8() {
        let v = json!({"detail": "No such artifact: '日\u{1}'"});
        assert_eq!(
            dumps(&v, Dialect::FastApi),
            "{\"detail\":\"No such artifact: '日\\u0001'\"}"
        );
        assert_eq!(
            dumps(&json!({"x": "😀"}), Dialect::Flask),
            "{\"x\": \"\\ud83d\\ude00\"}"
        );
    }

    #[test]
    fn jsonify_is_compact_sorted_ascii() {
        let v = json!({"url": "http://h/é", "headers": {}, "file_size": 3});
        assert_eq!(
            dumps(&v, Dialect::Jsonify),
            r#"{"file_size":3,"headers":{},"url":"http://h/\u00e9"}"#
        );
    }
}

//! How MLflow labels a downloaded artifact: `Content-Type` from `_guess_mime_type` and
//! `Content-Disposition` from `_content_disposition_attachment`.

use std::collections::HashMap;
use std::sync::OnceLock;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use unicode_normalization::UnicodeNormalization;

/// MLflow serves these as `text/plain` whatever Python's table says (`get_text_extensions`).
const TEXT_EXTENSIONS: &[&str] = &[
    "txt",
    "log",
    "err",
    "cfg",
    "conf",
    "cnf",
    "cf",
    "ini",
    "properties",
    "prop",
    "hocon",
    "toml",
    "yaml",
    "yml",
    "xml",
    "json",
    "js",
    "py",
    "py3",
    "csv",
    "tsv",
    "md",
    "rst",
    "ipynb",
    "MLmodel",
    "mlproject",
];

const DEFAULT_TYPES: &[(&str, &str)] = include!("mime_default.in");

/// Files Python's `mimetypes.init()` reads on top of its defaults, in order (later wins).
const KNOWN_FILES: &[&str] = &[
    "/etc/mime.types",
    "/etc/httpd/mime.types",
    "/etc/httpd/conf/mime.types",
    "/etc/apache/mime.types",
    "/etc/apache2/mime.types",
    "/usr/local/etc/httpd/conf/mime.types",
    "/usr/local/lib/netscape/mime.types",
    "/usr/local/etc/httpd/conf/mime.types",
    "/usr/local/etc/mime.types",
];

fn types_map() -> &'static HashMap<String, String> {
    static MAP: OnceLock<HashMap<String, String>> = OnceLock::new();
    MAP.get_or_init(|| {
        let mut map: HashMap<String, String> = DEFAULT_TYPES
            .iter()
            .map(|(ext, ty)| ((*ext).to_owned(), (*ty).to_owned()))
            .collect();
        for file in KNOWN_FILES {
            if let Ok(text) = std::fs::read_to_string(file) {
                add_mime_types_file(&mut map, &text);
            }
        }
        map
    })
}

/// `MimeTypes.readfp`: `type ext ext ...` lines, `#` starts a comment word.
fn add_mime_types_file(map: &mut HashMap<String, String>, text: &str) {
    for line in text.lines() {
        let words: Vec<&str> = line
            .split_whitespace()
            .take_while(|word| !word.starts_with('#'))
            .collect();
        if let Some((ty, suffixes)) = words.split_first() {
            for suffix in suffixes {
                map.insert(format!(".{suffix}"), (*ty).to_owned());
            }
        }
    }
}

/// `os.path.splitext`: the last dot, ignoring leading dots of the name.
fn splitext(name: &str) -> (&str, &str) {
    let start = name.rfind('/').map_or(0, |i| i + 1);
    let stem = &name[start..];
    let leading_dots = stem.len() - stem.trim_start_matches('.').len();
    match stem[leading_dots..].rfind('.') {
        Some(i) => name.split_at(start + leading_dots + i),
        None => (name, ""),
    }
}

/// `mimetypes.guess_type(name)[0]`, strict.
fn python_guess_type(name: &str) -> Option<&'static str> {
    const SUFFIXES: &[(&str, &str)] = &[
        (".svgz", ".svg.gz"),
        (".tgz", ".tar.gz"),
        (".taz", ".tar.gz"),
        (".tz", ".tar.gz"),
        (".tbz2", ".tar.bz2"),
        (".txz", ".tar.xz"),
    ];
    const ENCODINGS: &[&str] = &[".gz", ".Z", ".bz2", ".xz", ".br"];
    let mut name = name.to_owned();
    let (mut base, mut ext) = {
        let (b, e) = splitext(&name);
        (b.to_owned(), e.to_owned())
    };
    while let Some((_, replacement)) = SUFFIXES.iter().find(|(s, _)| *s == ext) {
        name = format!("{base}{replacement}");
        let (b, e) = splitext(&name);
        (base, ext) = (b.to_owned(), e.to_owned());
    }
    if ENCODINGS.contains(&ext.as_str()) {
        let (_, e) = splitext(&base);
        ext = e.to_owned();
    }
    let map = types_map();
    map.get(&ext)
        .or_else(|| map.get(&ext.to_lowercase()))
        .map(String::as_str)
}

/// The final path component, as `pathlib.PurePosixPath(p).name`.
pub fn basename(path: &str) -> &str {
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default()
}

/// `mlflow.utils.mime_type_utils._guess_mime_type`.
pub fn guess_mime_type(path: &str) -> &'static str {
    let filename = basename(path);
    let (_, ext) = splitext(filename);
    let ext = ext.replace('.', "");
    let key = if ext.is_empty() { filename } else { &ext };
    if TEXT_EXTENSIONS.contains(&key) {
        return "text/plain";
    }
    python_guess_type(filename).unwrap_or("application/octet-stream")
}

/// Werkzeug's token characters: such a value goes unquoted.
fn is_token(value: &str) -> bool {
    !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c))
}

/// `werkzeug.http.quote_header_value(value, allow_token=True)`.
fn quote_header_value(value: &str) -> String {
    if value.is_empty() {
        return "\"\"".to_owned();
    }
    if is_token(value) {
        return value.to_owned();
    }
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Characters `urllib.parse.quote(s, safe="!#$&+-.^_`|~")` leaves alone (plus alphanumerics).
const RFC5987: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// `mlflow.server.handlers._content_disposition_attachment`.
pub fn content_disposition_attachment(filename: &str) -> String {
    if filename.is_ascii() {
        return format!("attachment; filename={}", quote_header_value(filename));
    }
    let mut fallback: String = filename.nfkd().filter(char::is_ascii).collect();
    if fallback.is_empty() {
        fallback = "download".to_owned();
    }
    let quoted = utf8_percent_encode(filename, RFC5987);
    format!(
        "attachment; filename={}; filename*=UTF-8''{quoted}",
        quote_header_value(&fallback)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mime_types_follow_mlflow() {
        for (name, expected) in [
            ("a.txt", "text/plain"),
            ("x/y/data.json", "text/plain"),
            ("MLmodel", "text/plain"),
            ("mlproject", "text/plain"),
            ("b.pkl", "application/octet-stream"),
            ("c.png", "image/png"),
            ("C.PNG", "image/png"),
            ("d.pdf", "application/pdf"),
            ("page.html", "text/html"),
            ("archive.tar.gz", "application/x-tar"),
            ("model.gz", "application/octet-stream"),
            ("noext", "application/octet-stream"),
            (".bashrc", "application/octet-stream"),
        ] {
            assert_eq!(guess_mime_type(name), expected, "{name}");
        }
    }

    #[test]
    fn content_disposition_matches_mlflow() {
        for (name, expected) in [
            ("hello.txt", "attachment; filename=hello.txt"),
            ("a b.txt", "attachment; filename=\"a b.txt\""),
            ("a \"q\".txt", "attachment; filename=\"a \\\"q\\\".txt\""),
            (
                "日本.txt",
                "attachment; filename=.txt; filename*=UTF-8''%E6%97%A5%E6%9C%AC.txt",
            ),
            (
                "日本",
                "attachment; filename=download; filename*=UTF-8''%E6%97%A5%E6%9C%AC",
            ),
            (
                "café.csv",
                "attachment; filename=cafe.csv; filename*=UTF-8''caf%C3%A9.csv",
            ),
        ] {
            assert_eq!(content_disposition_attachment(name), expected, "{name}");
        }
    }
}

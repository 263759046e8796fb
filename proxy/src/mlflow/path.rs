//! MLflow's artifact path rules, reproduced exactly.
//!
//! The Python server still reads the keys we write (UI, logged models, traces), so a path must
//! decode to the same key here as in `mlflow.utils.uri.validate_path_is_safe`, including its
//! repeated decoding and its `urllib.parse` normalisation quirks.

use percent_encoding::percent_decode_str;

/// Why a path was refused. Both map to MLflow's `400 INVALID_PARAMETER_VALUE "Invalid path"`.
#[derive(Debug, PartialEq, Eq)]
pub enum PathError {
    /// One of MLflow's safety rules refused it.
    Unsafe,
    /// Python would raise `ValueError` (decoding never settles, malformed IPv6 netloc).
    Malformed,
}

/// `validate_path_is_safe`: returns the decoded path the Python server would use.
pub fn validate_path_is_safe(path: &str) -> Result<String, PathError> {
    let decoded = decode(path)?;
    let mut path = escape_control_characters(&decoded);
    if path.contains('#') {
        return Err(PathError::Unsafe);
    }
    if urlparse(&path)?.scheme == "file" {
        path = local_file_uri_to_path(&path)?;
    }
    if path.split('/').any(|segment| segment == "..")
        || is_windows_absolute(&path)
        || path.starts_with('/')
    {
        return Err(PathError::Unsafe);
    }
    Ok(path)
}

/// The path a store that resolves "." segments (s3s-fs, a file system) reads for `path`: MLflow's
/// canonical path without its "." segments (nor the empty ones they leave at its start). None when
/// it has none, or when MLflow refuses the path anyway. MLflow 3.17 judges the path as written,
/// where `./3/x` names no experiment; such a store serves experiment 3's `3/x` for it.
pub fn without_dot_segments(path: &str) -> Option<String> {
    let canonical = validate_path_is_safe(path).ok()?;
    if !canonical.split('/').any(|segment| segment == ".") {
        return None;
    }
    let kept: Vec<&str> = canonical
        .split('/')
        .filter(|segment| *segment != ".")
        .collect();
    Some(kept.join("/").trim_start_matches('/').to_owned())
}

/// `urllib.parse.unquote`: `%XX` runs become UTF-8 (invalid bytes become U+FFFD); non-ASCII
/// characters already in the text are kept as they are.
pub fn py_unquote(text: &str) -> String {
    if !text.contains('%') {
        return text.to_owned();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        let ascii_len = rest.bytes().take_while(u8::is_ascii).count();
        if ascii_len > 0 {
            let (run, tail) = rest.split_at(ascii_len);
            out.push_str(&percent_decode_str(run).decode_utf8_lossy());
            rest = tail;
        } else {
            let ch = rest.chars().next().unwrap_or_default();
            out.push(ch);
            rest = &rest[ch.len_utf8()..];
        }
    }
    out
}

/// `_decode`: unquote and re-normalise until the text stops changing (10 rounds at most).
pub fn decode(url: &str) -> Result<String, PathError> {
    let mut url = url.to_owned();
    for _ in 0..10 {
        let decoded = py_unquote(&url);
        let parsed = urlunparse(&urlparse(&decoded)?);
        if parsed == url {
            return Ok(url);
        }
        url = parsed;
    }
    Err(PathError::Malformed)
}

fn escape_control_characters(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        let code = u32::from(ch);
        if code <= 31 || code == 127 {
            out.push_str(&format!("%{code:02x}"));
        } else {
            out.push(ch);
        }
    }
    out
}

/// `local_file_uri_to_path` on POSIX: the URI's path component, unquoted.
fn local_file_uri_to_path(uri: &str) -> Result<String, PathError> {
    let path = if uri.starts_with("file:") {
        urlparse(uri)?.path
    } else {
        uri.to_owned()
    };
    Ok(py_unquote(&path))
}

#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ParsedUrl {
    pub scheme: String,
    pub netloc: String,
    pub path: String,
    pub params: String,
    pub query: String,
    pub fragment: String,
}

const SCHEME_CHARS: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-.";
const USES_PARAMS: &[&str] = &[
    "", "ftp", "hdl", "prospero", "http", "imap", "https", "shttp", "rtsp", "rtsps", "rtspu",
    "sip", "sips", "mms", "sftp", "tel",
];
const USES_NETLOC: &[&str] = &[
    "", "ftp", "http", "gopher", "nntp", "telnet", "imap", "wais", "file", "mms", "https", "shttp",
    "snews", "prospero", "rtsp", "rtsps", "rtspu", "rsync", "svn", "svn+ssh", "sftp", "nfs", "git",
    "git+ssh", "ws", "wss",
];

/// `urllib.parse.urlparse` (CPython 3.11).
pub(crate) fn urlparse(url: &str) -> Result<ParsedUrl, PathError> {
    let url = url.trim_start_matches(|c: char| u32::from(c) <= 0x20);
    let mut url: String = url
        .chars()
        .filter(|c| !matches!(c, '\t' | '\r' | '\n'))
        .collect();
    let mut parsed = ParsedUrl::default();
    if let Some(colon) = url.find(':') {
        let candidate = &url[..colon];
        let starts_alpha = candidate
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic());
        if colon > 0 && starts_alpha && candidate.chars().all(|c| SCHEME_CHARS.contains(c)) {
            parsed.scheme = candidate.to_ascii_lowercase();
            url = url[colon + 1..].to_owned();
        }
    }
    if url.starts_with("//") {
        let end = url[2..].find(['/', '?', '#']).map_or(url.len(), |i| i + 2);
        parsed.netloc = url[2..end].to_owned();
        url = url[end..].to_owned();
        let open = parsed.netloc.contains('[');
        let close = parsed.netloc.contains(']');
        if open != close {
            return Err(PathError::Malformed);
        }
        if open && !is_valid_bracketed_host(&parsed.netloc) {
            return Err(PathError::Malformed);
        }
    }
    if let Some((before, fragment)) = url.split_once('#') {
        parsed.fragment = fragment.to_owned();
        url = before.to_owned();
    }
    if let Some((before, query)) = url.split_once('?') {
        parsed.query = query.to_owned();
        url = before.to_owned();
    }
    if USES_PARAMS.contains(&parsed.scheme.as_str()) && url.contains(';') {
        let (path, params) = split_params(&url);
        parsed.path = path.to_owned();
        parsed.params = params.to_owned();
    } else {
        parsed.path = url;
    }
    Ok(parsed)
}

/// `_splitparams`: `;params` of the last path segment.
fn split_params(url: &str) -> (&str, &str) {
    let at = if let Some(last_slash) = url.rfind('/') {
        match url[last_slash..].find(';') {
            Some(i) => last_slash + i,
            None => return (url, ""),
        }
    } else {
        url.find(';').unwrap_or(url.len())
    };
    (&url[..at], url.get(at + 1..).unwrap_or(""))
}

/// `_check_bracketed_host`: an IPv6 address, or an IPvFuture `v<hex>.<text>`.
fn is_valid_bracketed_host(netloc: &str) -> bool {
    let host = netloc
        .split_once('[')
        .map(|(_, rest)| rest.split_once(']').map_or(rest, |(host, _)| host))
        .unwrap_or_default();
    if let Some(future) = host.strip_prefix('v') {
        let Some((version, text)) = future.split_once('.') else {
            return false;
        };
        return !version.is_empty()
            && version.chars().all(|c| c.is_ascii_hexdigit())
            && !text.is_empty();
    }
    host.parse::<std::net::Ipv6Addr>().is_ok()
}

/// `urllib.parse.urlunparse`.
fn urlunparse(parsed: &ParsedUrl) -> String {
    let mut url = parsed.path.clone();
    if !parsed.params.is_empty() {
        url = format!("{url};{}", parsed.params);
    }
    let scheme = parsed.scheme.as_str();
    if !parsed.netloc.is_empty()
        || (!scheme.is_empty() && USES_NETLOC.contains(&scheme) && !url.starts_with("//"))
    {
        if !url.is_empty() && !url.starts_with('/') {
            url.insert(0, '/');
        }
        url = format!("//{}{url}", parsed.netloc);
    }
    if !scheme.is_empty() {
        url = format!("{scheme}:{url}");
    }
    if !parsed.query.is_empty() {
        url = format!("{url}?{}", parsed.query);
    }
    if !parsed.fragment.is_empty() {
        url = format!("{url}#{}", parsed.fragment);
    }
    url
}

/// `pathlib.PureWindowsPath(p).is_absolute()` (CPython 3.11): a drive *and* a root.
fn is_windows_absolute(path: &str) -> bool {
    let mut part = path.replace('/', "\\");
    let mut has_prefix = false;
    if let Some(rest) = part.strip_prefix("\\\\?\\") {
        // Extended paths: \\?\C:\x and \\?\UNC\server\share
        has_prefix = true;
        part = match rest.strip_prefix("UNC") {
            Some(unc) if unc.starts_with('\\') => format!("\\{unc}"),
            _ => rest.to_owned(),
        };
    }
    let chars: Vec<char> = part.chars().collect();
    let at = |i: usize| chars.get(i).copied();
    if at(0) == Some('\\')
        && at(1) == Some('\\')
        && at(2) != Some('\\')
        && let Some(index) = part[2..].find('\\').map(|i| i + 2)
    {
        let index2 = part[index + 1..].find('\\').map(|i| i + index + 1);
        if index2 != Some(index + 1) {
            return true; // UNC: \\server\share is the drive, and it has a root
        }
    }
    let mut has_drive = has_prefix;
    let mut first = at(0);
    if at(1) == Some(':') && first.is_some_and(|c| c.is_ascii_alphabetic()) {
        has_drive = true;
        first = at(2);
    }
    has_drive && first == Some('\\')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (input as the path parameter arrives after one round of URL decoding, Python's answer)
    /// Generated with CPython 3.11.7 and MLflow 3.17.2's `validate_path_is_safe`.
    const CASES: &[(&str, Option<&str>)] = include!("path_cases.in");

    #[test]
    fn matches_mlflow_validate_path_is_safe() {
        let mut failures = Vec::new();
        for (input, expected) in CASES {
            let got = validate_path_is_safe(input).ok();
            if got.as_deref() != *expected {
                failures.push(format!("{input:?}: expected {expected:?}, got {got:?}"));
            }
        }
        assert!(
            failures.is_empty(),
            "differences from MLflow:\n{}",
            failures.join("\n")
        );
    }

    #[test]
    fn dot_segments_resolved_as_a_file_system_does() {
        for (path, resolved) in [
            ("./3/r/artifacts/x", Some("3/r/artifacts/x")),
            ("%2E/3/x", Some("3/x")),
            ("%252E/3/x", Some("3/x")),
            ("3/./r/artifacts/x", Some("3/r/artifacts/x")),
            (".//3/x", Some("3/x")),
            ("./././3", Some("3")),
            ("3/.", Some("3")),
            ("3/x/./", Some("3/x/")),
            (".", Some("")),
            ("3/r/artifacts/x", None),
            ("3/a..b/.x/...", None),
            ("./../3", None),
            ("", None),
        ] {
            assert_eq!(without_dot_segments(path).as_deref(), resolved, "{path:?}");
        }
    }

    #[test]
    fn unquote_replaces_invalid_utf8() {
        assert_eq!(py_unquote("a%ffb"), "a\u{fffd}b");
        assert_eq!(py_unquote("%E6%97%A5"), "日");
        assert_eq!(py_unquote("日%20x"), "日 x");
    }
}

//! Conditional and range requests on a download, decided by the proxy from the object's
//! validators (RFC 9110 §13.2.2 and §14), never left to the store: some stores ignore
//! `If-Match` and `If-Range`, and a resumed download that got a slice of a newer object would be
//! a corrupt file. Validators are parsed with the `headers` crate, ranges with
//! `http-range-header`.

use std::ops::RangeInclusive;
use std::time::SystemTime;

use headers::{
    ETag, HeaderMapExt, IfMatch, IfModifiedSince, IfNoneMatch, IfRange, IfUnmodifiedSince,
    LastModified,
};
use http::{HeaderMap, HeaderValue, header};
use http_range_header::{ParsedRanges, RangeUnsatisfiableError, SyntacticallyCorrectRange};

/// An object's validators, as S3 gives them (GET or HEAD response headers).
#[derive(Clone, Debug, Default)]
pub struct Validators {
    pub etag: Option<ETag>,
    pub last_modified: Option<LastModified>,
}

impl Validators {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        Validators {
            etag: headers.typed_get(),
            last_modified: headers.typed_get(),
        }
    }
}

/// Whether `name` is one header holding `*` or a list of entity tags (RFC 9110 §8.8.3,
/// §13.1.1): `W/"…"` or `"…"`, commas and spaces between.
fn etag_list(headers: &HeaderMap, name: &header::HeaderName) -> bool {
    let mut values = headers.get_all(name).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    let value = value.as_bytes();
    if value.trim_ascii() == b"*" {
        return true;
    }
    let mut rest = value;
    let mut tags = 0;
    loop {
        while let [b' ' | b'\t' | b',', tail @ ..] = rest {
            rest = tail;
        }
        if rest.is_empty() {
            return tags > 0;
        }
        if let [b'W', b'/', tail @ ..] = rest {
            rest = tail;
        }
        let [b'"', tail @ ..] = rest else {
            return false;
        };
        let Some(end) = tail.iter().position(|&c| c == b'"') else {
            return false;
        };
        if !tail[..end]
            .iter()
            .all(|&c| c == 0x21 || (0x23..=0x7e).contains(&c) || c >= 0x80)
        {
            return false;
        }
        rest = &tail[end + 1..];
        if !matches!(rest, [] | [b' ' | b'\t' | b',', ..]) {
            return false;
        }
        tags += 1;
    }
}

/// Steps 1–4 of RFC 9110 §13.2.2.
#[derive(Debug, PartialEq, Eq)]
pub enum Precondition {
    Pass,
    /// 304: the client's copy is current.
    NotModified,
    /// 412.
    Failed,
}

/// Which bytes a GET sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// 200 with the whole object.
    Whole,
    /// 206 with these bytes (inclusive).
    Part(RangeInclusive<u64>),
    /// 416.
    Unsatisfiable,
}

/// The conditional and range headers of one request, parsed once. A header that does not
/// parse is treated as absent, as RFC 9110 allows for Range and If-Range.
#[derive(Debug, Default)]
pub struct Conditions {
    if_match: Option<IfMatch>,
    if_none_match: Option<IfNoneMatch>,
    if_modified_since: Option<IfModifiedSince>,
    if_unmodified_since: Option<IfUnmodifiedSince>,
    if_range: Option<IfRange>,
    /// One syntactically valid byte range; anything else (other units, several ranges,
    /// `bytes=abc`, `bytes=1-0`) is ignored and the whole object sent.
    range: Option<ParsedRanges>,
}

impl Conditions {
    pub fn parse(headers: &HeaderMap) -> Self {
        Conditions {
            // The `headers` crate keeps a malformed tag list as it is (and then matches nothing):
            // checked here, so that it counts as absent.
            if_match: etag_list(headers, &header::IF_MATCH)
                .then(|| headers.typed_get())
                .flatten(),
            if_none_match: etag_list(headers, &header::IF_NONE_MATCH)
                .then(|| headers.typed_get())
                .flatten(),
            if_modified_since: headers.typed_get(),
            if_unmodified_since: headers.typed_get(),
            if_range: headers.typed_get(),
            range: single_range(headers),
        }
    }

    /// Whether the request's `name` header (one of the four preconditions) parsed. One that did
    /// not is treated as absent, as stock MLflow does (200), so it is not passed to the store
    /// either, which may refuse it (400, 412).
    pub fn parsed(&self, name: &header::HeaderName) -> bool {
        if name == header::IF_MATCH {
            self.if_match.is_some()
        } else if name == header::IF_NONE_MATCH {
            self.if_none_match.is_some()
        } else if name == header::IF_MODIFIED_SINCE {
            self.if_modified_since.is_some()
        } else if name == header::IF_UNMODIFIED_SINCE {
            self.if_unmodified_since.is_some()
        } else {
            false
        }
    }

    /// The range as S3 should be asked for it, if one was asked for.
    pub fn store_range(&self) -> Option<HeaderValue> {
        let range = *self.range.as_ref()?.clone().into_ranges().first()?;
        let text = match range {
            SyntacticallyCorrectRange::FromStart(start) => format!("bytes={start}-"),
            SyntacticallyCorrectRange::FromLast(n) => format!("bytes=-{n}"),
            SyntacticallyCorrectRange::Indexed(start, end) => format!("bytes={start}-{end}"),
        };
        HeaderValue::from_str(&text).ok()
    }

    /// RFC 9110 §13.2.2 steps 1–4 (If-Match, If-Unmodified-Since, If-None-Match,
    /// If-Modified-Since), for GET and HEAD of an object that exists.
    pub fn preconditions(&self, object: &Validators) -> Precondition {
        if let Some(if_match) = &self.if_match {
            let passes = match &object.etag {
                Some(etag) => if_match.precondition_passes(etag),
                // `*` matches any current representation; a tag cannot match none.
                None => if_match.is_any(),
            };
            if !passes {
                return Precondition::Failed;
            }
        } else if let (Some(since), Some(modified)) =
            (&self.if_unmodified_since, object.last_modified)
            && !since.precondition_passes(SystemTime::from(modified))
        {
            return Precondition::Failed;
        }
        if let Some(if_none_match) = &self.if_none_match {
            let passes = match &object.etag {
                Some(etag) => if_none_match.precondition_passes(etag),
                None => *if_none_match != IfNoneMatch::any(),
            };
            if !passes {
                return Precondition::NotModified;
            }
        } else if let (Some(since), Some(modified)) =
            (&self.if_modified_since, object.last_modified)
            && !since.is_modified(SystemTime::from(modified))
        {
            return Precondition::NotModified;
        }
        Precondition::Pass
    }

    /// RFC 9110 §13.2.2 step 5 and §14.2: the bytes a GET of an object of `size` bytes sends.
    pub fn selection(&self, object: &Validators, size: u64) -> Selection {
        let Some(range) = &self.range else {
            return Selection::Whole;
        };
        // A stale If-Range (or a weak ETag, which If-Range cannot use): the whole object.
        if let Some(if_range) = &self.if_range
            && if_range.is_modified(object.etag.as_ref(), object.last_modified.as_ref())
        {
            return Selection::Whole;
        }
        match range.validate(size) {
            Ok(ranges) => match ranges.as_slice() {
                [one] => Selection::Part(one.clone()),
                // An empty object asked for a suffix: nothing to slice, send it whole.
                _ => Selection::Whole,
            },
            Err(RangeUnsatisfiableError::Unsatisfiable) => Selection::Unsatisfiable,
            Err(_) => Selection::Whole,
        }
    }
}

/// The one byte range of a `Range` header, if it asks for exactly one.
fn single_range(headers: &HeaderMap) -> Option<ParsedRanges> {
    let mut values = headers.get_all(header::RANGE).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let parsed = http_range_header::parse_range_header(value.to_str().ok()?).ok()?;
    (parsed.len() == 1).then_some(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_tag_lists() {
        let check = |v: &'static str| {
            let mut map = HeaderMap::new();
            map.insert(header::IF_MATCH, HeaderValue::from_static(v));
            etag_list(&map, &header::IF_MATCH)
        };
        for ok in ["*", "\"a\"", "W/\"a\"", "\"a\", W/\"b,c\" ,\"\"", " \"x\" "] {
            assert!(check(ok), "{ok}");
        }
        for bad in [
            "garbage",
            "garbage\"",
            "\"a",
            "\"a\"b",
            "W/a",
            "\"a b\"",
            "",
            ",",
        ] {
            assert!(!check(bad), "{bad}");
        }
    }

    const ETAG: &str = "\"abc\"";
    const MODIFIED: &str = "Wed, 21 Oct 2015 07:28:00 GMT";

    fn object() -> Validators {
        let mut h = HeaderMap::new();
        h.insert(header::ETAG, HeaderValue::from_static(ETAG));
        h.insert(header::LAST_MODIFIED, HeaderValue::from_static(MODIFIED));
        Validators::from_headers(&h)
    }

    fn conditions(pairs: &[(&'static str, &'static str)]) -> Conditions {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        Conditions::parse(&h)
    }

    #[test]
    fn preconditions_in_rfc_order() {
        use Precondition::*;
        for (pairs, expected) in [
            (vec![], Pass),
            (vec![("if-match", ETAG)], Pass),
            (vec![("if-match", "*")], Pass),
            (vec![("if-match", "\"old\"")], Failed),
            // If-Match is a strong comparison.
            (vec![("if-match", "W/\"abc\"")], Failed),
            (vec![("if-none-match", ETAG)], NotModified),
            (vec![("if-none-match", "W/\"abc\"")], NotModified),
            (vec![("if-none-match", "\"x\", \"abc\"")], NotModified),
            (vec![("if-none-match", "*")], NotModified),
            (vec![("if-none-match", "\"old\"")], Pass),
            // If-Match is evaluated before If-None-Match.
            (
                vec![("if-match", "\"old\""), ("if-none-match", ETAG)],
                Failed,
            ),
            (
                vec![("if-unmodified-since", "Tue, 20 Oct 2015 07:28:00 GMT")],
                Failed,
            ),
            // ...and If-Unmodified-Since only without If-Match.
            (
                vec![
                    ("if-match", ETAG),
                    ("if-unmodified-since", "Tue, 20 Oct 2015 07:28:00 GMT"),
                ],
                Pass,
            ),
            (vec![("if-modified-since", MODIFIED)], NotModified),
            (
                vec![("if-modified-since", "Tue, 20 Oct 2015 07:28:00 GMT")],
                Pass,
            ),
            // If-Modified-Since only without If-None-Match.
            (
                vec![
                    ("if-none-match", "\"old\""),
                    ("if-modified-since", MODIFIED),
                ],
                Pass,
            ),
        ] {
            assert_eq!(
                conditions(&pairs).preconditions(&object()),
                expected,
                "{pairs:?}"
            );
        }
    }

    #[test]
    fn ranges() {
        use Selection::*;
        for (pairs, expected) in [
            (vec![], Whole),
            (vec![("range", "bytes=0-9")], Part(0..=9)),
            (vec![("range", "bytes=90-200")], Part(90..=99)),
            (vec![("range", "bytes=10-")], Part(10..=99)),
            (vec![("range", "bytes=-10")], Part(90..=99)),
            // A suffix longer than the object is the whole object.
            (vec![("range", "bytes=-1000")], Part(0..=99)),
            (vec![("range", "bytes=100-")], Unsatisfiable),
            // Malformed or unsupported: ignored.
            (vec![("range", "bytes=abc")], Whole),
            (vec![("range", "bytes=1-0")], Whole),
            (vec![("range", "items=0-1")], Whole),
            (vec![("range", "bytes=0-1,5-6")], Whole),
            (vec![("range", "bytes=0-1"), ("range", "bytes=5-6")], Whole),
            // If-Range: current → the range; stale, weak or a later date → whole.
            (
                vec![("range", "bytes=0-9"), ("if-range", ETAG)],
                Part(0..=9),
            ),
            (vec![("range", "bytes=0-9"), ("if-range", "\"old\"")], Whole),
            (
                vec![("range", "bytes=0-9"), ("if-range", "W/\"abc\"")],
                Whole,
            ),
            (
                vec![("range", "bytes=0-9"), ("if-range", MODIFIED)],
                Part(0..=9),
            ),
            (
                vec![
                    ("range", "bytes=0-9"),
                    ("if-range", "Tue, 20 Oct 2015 07:28:00 GMT"),
                ],
                Whole,
            ),
        ] {
            assert_eq!(
                conditions(&pairs).selection(&object(), 100),
                expected,
                "{pairs:?}"
            );
        }
        assert_eq!(
            conditions(&[("range", "bytes=-5")]).selection(&object(), 0),
            Whole
        );
        assert_eq!(
            conditions(&[("range", "bytes=0-")]).selection(&object(), 0),
            Unsatisfiable
        );
    }
}

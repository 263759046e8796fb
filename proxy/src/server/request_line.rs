//! What hyper drops of a request line: a raw `#` and what follows it. uvicorn (h11) keeps it in
//! the path, so MLflow sees `a#zzz` and refuses it as an invalid path; hyper's URI parser cuts it
//! off, and `DELETE artifacts/a#zzz` would delete everything under `a/`. The connection's bytes
//! are watched as hyper reads them; request lines holding a `#` are remembered, and the request
//! they belong to gets its full target back (with `#` escaped, `%23`, since a URI cannot carry
//! it; uvicorn decodes `%23` to the same path).

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::Uri;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Longest request line looked at. uvicorn refuses request heads over 16 KiB (h11's limit), and
/// the proxy refuses targets over `MAX_TARGET` before this matters.
const MAX_LINE: usize = 16 * 1024 + 64;
/// Request targets uvicorn would refuse (its whole head must fit in 16 KiB).
pub const MAX_TARGET: usize = 16 * 1024;
/// Remembered lines per connection (pipelined requests, or body text that looked like one).
const MAX_REMEMBERED: usize = 16;

/// Request lines with a `#`, seen on one connection and not yet claimed.
#[derive(Default)]
pub struct Seen {
    /// The bytes since the last line feed, while they may still be a request line.
    partial: Vec<u8>,
    /// The current line is too long to be a request line.
    overlong: bool,
    targets: VecDeque<String>,
}

impl Seen {
    fn feed(&mut self, data: &[u8]) {
        let mut rest = data;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            let (line, after) = rest.split_at(end);
            if !self.overlong && self.partial.len() + line.len() <= MAX_LINE {
                // Only lines with a `#` matter; most lines skip the copy.
                if !self.partial.is_empty() || line.contains(&b'#') {
                    self.partial.extend_from_slice(line);
                    let whole = std::mem::take(&mut self.partial);
                    self.remember(&whole);
                }
            }
            self.partial.clear();
            self.overlong = false;
            rest = &after[1..];
        }
        if self.overlong {
            return;
        }
        if self.partial.len() + rest.len() > MAX_LINE {
            self.partial.clear();
            self.overlong = true;
        } else {
            self.partial.extend_from_slice(rest);
        }
    }

    /// `METHOD SP target SP HTTP/1.x` with a `#` in the target.
    fn remember(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Ok(line) = std::str::from_utf8(line) else {
            return;
        };
        let mut parts = line.split(' ');
        let (Some(method), Some(target), Some(version), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        if method.is_empty()
            || !method.bytes().all(|b| b.is_ascii_alphabetic())
            || !version.starts_with("HTTP/1.")
            || !target.contains('#')
        {
            return;
        }
        if self.targets.len() == MAX_REMEMBERED {
            self.targets.pop_front();
        }
        self.targets.push_back(target.to_owned());
    }

    /// The full target of a request whose URI (as hyper parsed it) came from a line with a `#`.
    fn claim(&mut self, uri: &Uri) -> Option<String> {
        let parsed = uri.to_string();
        let index = self
            .targets
            .iter()
            .position(|t| t.split('#').next() == Some(parsed.as_str()))?;
        // Earlier entries were body text, or requests already answered.
        self.targets.drain(..=index).next_back()
    }
}

/// One connection's record, shared by the reader and the request handler.
pub type Shared = Arc<Mutex<Seen>>;

/// The request's URI with its fragment put back (`#` as `%23`), if hyper dropped one.
pub fn restore(seen: &Shared, uri: &Uri) -> Option<Uri> {
    let target = seen.lock().unwrap_or_else(|e| e.into_inner()).claim(uri)?;
    target.replace('#', "%23").parse().ok()
}

/// The connection, watched as hyper reads it.
pub struct Watched<T> {
    inner: T,
    seen: Shared,
}

impl<T> Watched<T> {
    pub fn new(inner: T, seen: Shared) -> Self {
        Watched { inner, seen }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let new = &buf.filled()[before..];
            if !new.is_empty() {
                self.seen
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .feed(new);
            }
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(s: &str) -> Uri {
        s.parse().unwrap()
    }

    #[test]
    fn a_fragment_split_across_reads_is_found() {
        let mut seen = Seen::default();
        seen.feed(b"DELETE /api/2.0/mlflow-artifacts/artifacts/a#z");
        seen.feed(b"zz?x=1 HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(
            seen.claim(&uri("/api/2.0/mlflow-artifacts/artifacts/a")),
            Some("/api/2.0/mlflow-artifacts/artifacts/a#zzz?x=1".to_owned())
        );
        assert_eq!(
            seen.claim(&uri("/api/2.0/mlflow-artifacts/artifacts/a")),
            None
        );
    }

    #[test]
    fn lines_without_a_fragment_are_not_kept() {
        let mut seen = Seen::default();
        seen.feed(b"GET /a HTTP/1.1\r\nHost: h\r\nX-Note: #1\r\n\r\n");
        assert!(seen.targets.is_empty());
        assert!(seen.partial.is_empty());
        // A very long line is not a request line.
        seen.feed(&vec![b'#'; MAX_LINE + 10]);
        seen.feed(b" HTTP/1.1\r\n");
        assert!(seen.targets.is_empty());
    }

    #[test]
    fn restored_targets_escape_the_hash() {
        let seen: Shared = Arc::default();
        seen.lock().unwrap().feed(b"GET /x/a#b HTTP/1.1\r\n");
        assert_eq!(restore(&seen, &uri("/x/a")).unwrap(), "/x/a%23b");
    }
}

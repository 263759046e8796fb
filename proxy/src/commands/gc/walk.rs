//! Walking the destination for candidate folders (`layout`), a listing page at a time, in
//! increasing key order: experiments, then in each its run folders, `models/…`, `traces/…`.
//! Each call to `next_chunk` lists one page (at most 1,000 entries), so memory holds one page,
//! and the order lets a stopped run resume after the last candidate it finished.

use std::collections::VecDeque;

use super::layout::{self, Candidate, Child, Kind};
use crate::store::s3::{Store, StoreError};

const PAGE: usize = 1000;

/// Where the walk looks.
pub enum Tops {
    /// Every experiment folder (`<id>/`) at the destination's root.
    Experiments,
    /// These folders (relative to the destination, ending with `/`), sorted.
    Given(Vec<String>),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Level {
    Experiment,
    Models,
    Traces,
}

/// One folder being listed.
struct Frame {
    /// Relative to the destination, ending with `/`.
    path: String,
    level: Level,
    after: Option<String>,
    done: bool,
}

pub struct Walk<'a> {
    store: &'a Store,
    /// The destination's prefix: empty, or ending with `/`.
    root: String,
    tops: TopCursor,
    frames: Vec<Frame>,
    /// Candidates at or before this path were done by an earlier run.
    resume_after: Option<String>,
    /// Folders of no known shape, left alone.
    pub unknown: u64,
}

enum TopCursor {
    Listed {
        after: Option<String>,
        queue: VecDeque<String>,
        done: bool,
    },
    Given(VecDeque<String>),
}

impl<'a> Walk<'a> {
    pub fn new(store: &'a Store, root: String, tops: Tops, resume_after: Option<String>) -> Self {
        let tops = match tops {
            Tops::Experiments => TopCursor::Listed {
                after: None,
                queue: VecDeque::new(),
                done: false,
            },
            Tops::Given(paths) => TopCursor::Given(paths.into()),
        };
        Walk {
            store,
            root,
            tops,
            frames: Vec::new(),
            resume_after,
            unknown: 0,
        }
    }

    /// The next candidates (one listing page's worth), or None when the walk is over.
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<Candidate>>, StoreError> {
        loop {
            let Some(frame) = self.frames.last_mut() else {
                match self.next_top().await? {
                    Some(path) => self.push(path, Level::Experiment),
                    None => return Ok(None),
                }
                continue;
            };
            if frame.done {
                self.frames.pop();
                continue;
            }
            let listed = format!("{}{}", self.root, frame.path);
            let page = self
                .store
                .list_page(&listed, Some("/"), frame.after.as_deref(), PAGE)
                .await?;
            frame.after = page.next_start_after();
            frame.done = !page.truncated || frame.after.is_none();
            let (path, level) = (frame.path.clone(), frame.level);
            let mut chunk = Vec::new();
            let mut deeper = Vec::new();
            for prefix in &page.prefixes {
                let Some(name) = prefix
                    .strip_prefix(&listed)
                    .and_then(|rest| rest.strip_suffix('/'))
                else {
                    continue;
                };
                let candidate = |kind| Candidate {
                    kind,
                    id: name.to_owned(),
                    path: format!("{path}{name}/"),
                };
                match (level, layout::child(name)) {
                    (Level::Experiment, Child::Run) => chunk.push(candidate(Kind::Run)),
                    (Level::Experiment, Child::Models) => deeper.push(Level::Models),
                    (Level::Experiment, Child::Traces) => deeper.push(Level::Traces),
                    (Level::Models, _) if layout::is_logged_model_id(name) => {
                        chunk.push(candidate(Kind::LoggedModel));
                    }
                    (Level::Traces, _) if layout::is_trace_id(name) => {
                        chunk.push(candidate(Kind::Trace));
                    }
                    _ => self.unknown += 1,
                }
            }
            // Run folders (hex digits) sort before `models/`, which sorts before `traces/`: the
            // page's runs are emitted first, then the deeper folders, then the rest of this one.
            for level in deeper.into_iter().rev() {
                let sub = match level {
                    Level::Models => "models/",
                    _ => "traces/",
                };
                self.push(format!("{path}{sub}"), level);
            }
            chunk.retain(|c| self.resume_after.as_ref().is_none_or(|r| c.path > *r));
            if !chunk.is_empty() {
                return Ok(Some(chunk));
            }
        }
    }

    /// Start listing a folder, unless an earlier run finished everything in it.
    fn push(&mut self, path: String, level: Level) {
        let finished = self
            .resume_after
            .as_ref()
            .is_some_and(|r| path < *r && !r.starts_with(&path));
        if !finished {
            self.frames.push(Frame {
                path,
                level,
                after: None,
                done: false,
            });
        }
    }

    async fn next_top(&mut self) -> Result<Option<String>, StoreError> {
        match &mut self.tops {
            TopCursor::Given(paths) => Ok(paths.pop_front()),
            TopCursor::Listed { after, queue, done } => loop {
                if let Some(path) = queue.pop_front() {
                    return Ok(Some(path));
                }
                if *done {
                    return Ok(None);
                }
                let page = self
                    .store
                    .list_page(&self.root, Some("/"), after.as_deref(), PAGE)
                    .await?;
                *after = page.next_start_after();
                *done = !page.truncated || after.is_none();
                for prefix in page.prefixes {
                    let Some(name) = prefix
                        .strip_prefix(&self.root)
                        .and_then(|rest| rest.strip_suffix('/'))
                    else {
                        continue;
                    };
                    if layout::is_experiment(name) {
                        queue.push_back(format!("{name}/"));
                    } else {
                        self.unknown += 1;
                    }
                }
            },
        }
    }
}

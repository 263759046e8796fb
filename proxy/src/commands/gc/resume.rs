//! The checkpoint of a long run (`--resume-file`): the last candidate folder before which every
//! one is done, for the destination it belongs to. Written (atomically) after each listing
//! page's candidates are all done; removed when a run completes. A run that stops half way
//! (killed, S3 or MLflow away) starts again after it instead of from the beginning.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize, Serialize, PartialEq, Eq)]
struct Checkpoint {
    destination: String,
    after: String,
}

pub struct Resume {
    path: PathBuf,
    destination: String,
}

impl Resume {
    pub fn new(path: PathBuf, destination: String) -> Resume {
        Resume { path, destination }
    }

    /// Where an earlier run stopped, if it left a checkpoint for this destination.
    pub fn load(&self) -> Result<Option<String>, String> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("reading {}: {e}", self.path.display())),
        };
        let checkpoint: Checkpoint = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not a gc checkpoint: {e}", self.path.display()))?;
        if checkpoint.destination != self.destination {
            return Err(format!(
                "{} belongs to {}, not {}: remove it or give another --resume-file",
                self.path.display(),
                checkpoint.destination,
                self.destination
            ));
        }
        Ok(Some(checkpoint.after))
    }

    pub fn save(&self, after: &str) -> Result<(), String> {
        let checkpoint = Checkpoint {
            destination: self.destination.clone(),
            after: after.to_owned(),
        };
        let text = serde_json::to_string(&checkpoint).map_err(|e| e.to_string())?;
        write_atomically(&self.path, &text)
    }

    pub fn finish(&self) -> Result<(), String> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(format!("removing {}: {e}", self.path.display()))
            }
            _ => Ok(()),
        }
    }
}

/// Write to `path.tmp`, then rename: a reader sees the old file or the new one, never half.
pub fn write_atomically(path: &Path, text: &str) -> Result<(), String> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_is_kept_per_destination() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gc.resume");
        let resume = Resume::new(path.clone(), "s3://b/mlflow".into());
        assert_eq!(resume.load().unwrap(), None);
        resume.save("1/abc/").unwrap();
        assert_eq!(resume.load().unwrap().as_deref(), Some("1/abc/"));
        let other = Resume::new(path.clone(), "s3://b/other".into());
        assert!(
            other
                .load()
                .unwrap_err()
                .contains("belongs to s3://b/mlflow")
        );
        resume.finish().unwrap();
        assert_eq!(resume.load().unwrap(), None);
        resume.finish().unwrap();
    }
}

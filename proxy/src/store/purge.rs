//! Deleting everything under a prefix, one listing page at a time: list up to 1,000 keys, delete
//! them with one DeleteObjects call, go on past the last key. Memory holds one page whatever the
//! number of keys, and a call cut short leaves the rest for the next call (deleting is
//! idempotent). Used by the DELETE route and by `gc`.

use crate::store::s3::{Store, StoreError};

/// DeleteObjects takes at most 1,000 keys, and a listing page holds at most as many.
const PAGE: usize = 1000;

/// What a deletion removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Freed {
    pub objects: u64,
    pub bytes: u64,
}

impl Freed {
    pub fn add(&mut self, other: Freed) {
        self.objects += other.objects;
        self.bytes += other.bytes;
    }
}

/// The object `key` itself and everything under `key/`; never a sibling such as `key-old`.
pub async fn delete_tree(store: &Store, key: &str) -> Result<Freed, StoreError> {
    let key = key.trim_end_matches('/');
    if key.is_empty() {
        return Err(StoreError::Other(
            "refusing to delete the whole bucket (empty key)".into(),
        ));
    }
    let mut freed = Freed::default();
    // The smallest key with this prefix is `key` itself, when it exists.
    let first = store.list_page(key, None, None, 1).await?;
    if let Some(entry) = first.objects.into_iter().find(|o| o.key == key) {
        store.delete_keys(vec![entry.key]).await?;
        freed.objects += 1;
        freed.bytes += entry.size;
    }
    freed.add(delete_under(store, &format!("{key}/")).await?);
    Ok(freed)
}

/// Every object whose key starts with `dir`, which is empty or ends with `/`.
pub async fn delete_under(store: &Store, dir: &str) -> Result<Freed, StoreError> {
    if !(dir.is_empty() || dir.ends_with('/')) {
        return Err(StoreError::Other(format!(
            "refusing to delete under {dir:?}: not a folder (no trailing /)"
        )));
    }
    let mut freed = Freed::default();
    let mut after: Option<String> = None;
    loop {
        let page = store.list_page(dir, None, after.as_deref(), PAGE).await?;
        let next = page.next_start_after();
        let mut keys = Vec::with_capacity(page.objects.len());
        for entry in page.objects {
            // A store that ignored the prefix must not make us delete outside it.
            if entry.key.starts_with(dir) {
                freed.bytes += entry.size;
                keys.push(entry.key);
            }
        }
        freed.objects += keys.len() as u64;
        if !keys.is_empty() {
            store.delete_keys(keys).await?;
        }
        match next {
            Some(next) if page.truncated => after = Some(next),
            None if page.truncated => {
                return Err(StoreError::Other(format!(
                    "S3 answered an empty page marked truncated while listing {dir:?}"
                )));
            }
            _ => return Ok(freed),
        }
    }
}

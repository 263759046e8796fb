//! `PUT artifacts/<path>`: the request body goes to S3 as it arrives, never collected.
//!
//! - With a Content-Length up to the single-PUT limit: one streamed PutObject, nothing held.
//! - With a larger Content-Length: a multipart upload whose part boundaries are known in
//!   advance, each part streamed to UploadPart as its bytes arrive, nothing held either.
//! - Without a length (chunked): parts are filled in memory, a few in flight, all of them
//!   together bounded by the upload budget, which is taken only for bytes in hand.
//!
//! Every read from the client ends after the body idle timeout. Any failure aborts the
//! multipart upload (retried later if S3 is down), so no object and no orphaned part is left
//! behind. The answer comes only once the object is stored.

pub mod sweep;

use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};
use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinSet;

use super::scope::Scope;
use crate::artifacts::state::App;
use crate::artifacts::state::upload_memory::{BudgetPermit, MIN_PART, SMALL_BLOCK};
use crate::integrity::{self, Algorithm, Digest, Hasher};
use crate::mlflow::content::guess_mime_type;
use crate::mlflow::path::validate_path_is_safe;
use crate::store::answer::store_error;
use crate::store::s3::StoreError;
use crate::wire::body::{ProxyBody, empty};
use crate::wire::error::{ProxyError, Side};

/// A part that fails is sent again this many times (its frames are cheap to clone). Streamed
/// parts cannot be sent again: their bytes are gone, as with the single PutObject.
const PART_RETRIES: usize = 2;
/// S3's largest object and largest part.
const MAX_OBJECT: u64 = 5 * 1024 * 1024 * 1024 * 1024;
const MAX_PART: u64 = 5 * 1024 * 1024 * 1024;
/// Frames shorter than this are copied into the part, so that a part's memory is close to its
/// length (a tiny frame would otherwise pin a whole read buffer); longer ones are kept as they
/// are, without a copy.
const COPY_BELOW: usize = 128 * 1024;
/// Small frames are copied into blocks of this size (any copied frame fits in a fresh one).
const BLOCK: usize = COPY_BELOW;
/// Budget is taken in steps of this much, and frames are handled in pieces of at most this, so
/// that a part being filled never holds more than S3's minimum part plus a few steps.
const STEP: usize = 256 * 1024;
/// Frames waiting between the client's body and a streamed part.
const STREAM_QUEUE: usize = 2;

pub async fn upload(
    app: &Arc<App>,
    scope: &Scope,
    raw_path: &str,
    request: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let path = validate_path_is_safe(raw_path).map_err(|_| ProxyError::invalid_path().fastapi())?;
    scope.skill_upload(&path)?;
    let path = scope.repo_path(&path).map_err(ProxyError::fastapi)?;
    let (head, tail) = match path.rsplit_once('/') {
        // posixpath.split: the head loses its trailing slashes unless it is all slashes.
        Some((head, tail)) => (head.trim_end_matches('/'), tail),
        None => ("", path.as_str()),
    };
    if tail.is_empty() {
        return Err(ProxyError::detail(
            StatusCode::BAD_REQUEST,
            "Artifact path must include a filename (cannot end with '/').",
        ));
    }
    // A file named "." (`…/d/.`): stock MLflow fails writing it (its temp file would be its temp
    // folder, a 500), and a store that resolves "." segments would write `…/d` instead.
    if tail == "." {
        return Err(ProxyError::invalid_path().fastapi());
    }
    let declared = content_length(&request)?;
    if let Some(len) = declared {
        check_storable(app.upload.part_size, len)?;
    }
    let key = app.store.upload_key(head, tail);
    let content_type = guess_mime_type(tail);
    let fault = ClientFault::default();
    // The body already ends after the idle timeout (server.rs); `fault` notes it.
    let body = fault.watch(request.into_body());

    // A task of its own: if the client goes away, hyper drops this handler, but the task still
    // sees the broken body and aborts the multipart upload.
    let task_app = app.clone();
    let stored = tokio::spawn(async move {
        let result = store_body(&task_app, &key, content_type, declared, body).await;
        // A failure that followed from the client's body is the client's, whatever failed next.
        let result = match (result, fault.error(&task_app)) {
            (Err(_), Some(client)) => Err(client),
            (result, _) => result,
        };
        if let Err(e) = &result {
            tracing::warn!(key, "upload not stored: {e}");
        }
        result
    });
    match stored.await {
        Ok(Ok(())) => {
            // FastAPI's `Response(status_code=200)`: empty, no Content-Type.
            let mut response = Response::new(empty());
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, 0.into());
            Ok(response)
        }
        Ok(Err(e)) => Err(e),
        Err(e) => Err(ProxyError::internal(format!("upload task failed: {e}"))),
    }
}

fn content_length(request: &Request<ProxyBody>) -> Result<Option<u64>, ProxyError> {
    let Some(value) = request.headers().get(header::CONTENT_LENGTH) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| {
            ProxyError::mlflow(
                Side::Client,
                StatusCode::BAD_REQUEST,
                "BAD_REQUEST",
                "Invalid Content-Length",
            )
        })
}

/// A declared length S3 cannot store is refused before any body byte is read.
fn check_storable(configured_part: usize, len: u64) -> Result<(), ProxyError> {
    let part = part_size_for(configured_part, Some(len)) as u64;
    if len > MAX_OBJECT || part > MAX_PART {
        return Err(ProxyError::mlflow(
            Side::Client,
            StatusCode::PAYLOAD_TOO_LARGE,
            "INVALID_PARAMETER_VALUE",
            format!(
                "Content-Length {len} is larger than the artifact store accepts for one object \
                 (5 TiB)"
            ),
        ));
    }
    Ok(())
}

/// What went wrong with the client's body, noted as the error passes, so that a failure the
/// store reports afterwards (a part cut short) is blamed on the client, with the right status.
#[derive(Clone, Default)]
struct ClientFault(Arc<OnceLock<(bool, String)>>);

impl ClientFault {
    fn watch(&self, body: ProxyBody) -> ProxyBody {
        let fault = self.clone();
        body.map_err(move |e| {
            let _ = fault.0.set((e.is_idle_timeout(), e.to_string()));
            e
        })
        .boxed()
    }

    fn error(&self, app: &App) -> Option<ProxyError> {
        let (idle, detail) = self.0.get()?;
        if *idle {
            app.metrics
                .body_idle_timeouts
                .with_label_values(&["upload"])
                .inc();
            return Some(ProxyError::body_stalled(format!(
                "The upload body stalled ({detail}); nothing was stored"
            )));
        }
        Some(client_gone(detail))
    }
}

/// Store the body under `key`, then record the digest of the bytes stored (`integrity`).
async fn store_body(
    app: &Arc<App>,
    key: &str,
    content_type: &'static str,
    declared: Option<u64>,
    body: ProxyBody,
) -> Result<(), ProxyError> {
    let mut hasher = app.integrity.hasher();
    let etag = match declared {
        // hyper ends the body with an error if the client sends fewer bytes than it declared,
        // and S3 then discards the partial object.
        Some(len) if len <= app.upload.single_put_max => {
            let trailer = put_trailer(app, &hasher).await;
            let (body, tally) = match trailer {
                Some(algorithm) => integrity::with_trailer(body, len, algorithm),
                None => integrity::tally(body, hasher.take()),
            };
            let etag = app
                .store
                .put_object(key, content_type, len, trailer, body)
                .await
                .map_err(store_error)?;
            hasher = tally.take();
            (etag, false)
        }
        Some(len) => stream_parts(app, key, content_type, len, body, &mut hasher).await?,
        None => fill_parts(app, key, content_type, body, &mut hasher).await?,
    };
    let (etag, kept_by_store) = etag;
    if kept_by_store {
        // A FULL_OBJECT upload: the store verified the digest and keeps it as its checksum.
        app.integrity.uploads.with_label_values(&["recorded"]).inc();
        return Ok(());
    }
    let digest = hasher.map(Hasher::finish);
    record_digest(app, key, content_type, etag, digest).await;
    Ok(())
}

/// The checksum a PutObject carries for the store to verify: the digest's algorithm, on a store
/// that verifies it (`s3::Native`).
async fn put_trailer(app: &App, hasher: &Option<Hasher>) -> Option<Algorithm> {
    let algorithm = app
        .integrity
        .config
        .algorithm
        .filter(|_| hasher.is_some())?;
    app.store_checksums().await.put.then_some(algorithm)
}

/// The checksum each part carries for the store to verify, on a store that verifies them: a
/// CRC64NVME (the one FULL_OBJECT uploads need; elsewhere it guards the transfer only).
async fn part_trailer(app: &App, upload: &Multipart) -> Option<Algorithm> {
    if upload.full_object {
        return Some(Algorithm::Crc64Nvme);
    }
    app.integrity.config.algorithm?;
    app.store_checksums()
        .await
        .parts
        .then_some(Algorithm::Crc64Nvme)
}

/// Keep `digest` (of the bytes just stored at `key`, version `etag`) with the object in
/// the store. An object without one is served unchecked, so a failure here does not fail the
/// upload: it is counted (`integrity_uploads_total{outcome="unrecorded"}`) and logged.
pub(super) async fn record_digest(
    app: &App,
    key: &str,
    content_type: &str,
    etag: Option<String>,
    digest: Option<Digest>,
) {
    let Some(digest) = digest else {
        return;
    };
    let outcome = match etag {
        None => Err("the store gave no ETag".to_owned()),
        Some(etag) => {
            let (name, value) = digest.metadata();
            let mut metadata = http::HeaderMap::new();
            metadata.insert(name, value);
            match app
                .store
                .replace_metadata(key, &etag, content_type, metadata)
                .await
            {
                Ok(true) => Ok(()),
                Ok(false) => Err("the object was replaced before its digest was recorded".into()),
                Err(e) => Err(e.to_string()),
            }
        }
    };
    match outcome {
        Ok(()) => app.integrity.uploads.with_label_values(&["recorded"]).inc(),
        Err(reason) => {
            app.integrity
                .uploads
                .with_label_values(&["unrecorded"])
                .inc();
            tracing::warn!(key, %digest, "integrity: digest not recorded: {reason}");
        }
    }
}

fn client_gone(detail: &str) -> ProxyError {
    ProxyError::mlflow(
        Side::Client,
        StatusCode::BAD_REQUEST,
        "BAD_REQUEST",
        format!("The upload body ended early: {detail}"),
    )
}

/// A multipart upload once it has more than one part.
struct Multipart {
    upload_id: String,
    /// Of S3's FULL_OBJECT type: each part carries its CRC64NVME, the completion the whole's.
    full_object: bool,
    next_part: u32,
    in_flight: JoinSet<Result<(u32, String), StoreError>>,
    done: Vec<(u32, String)>,
}

/// A declared length: each part's bytes go to its UploadPart request as they arrive.
async fn stream_parts(
    app: &Arc<App>,
    key: &str,
    content_type: &'static str,
    len: u64,
    mut body: ProxyBody,
    hasher: &mut Option<Hasher>,
) -> Result<(Option<String>, bool), ProxyError> {
    let part_size = part_size_for(app.upload.part_size, Some(len)) as u64;
    let mut upload = start_multipart(app, key, content_type).await?;
    let trailer = part_trailer(app, &upload).await;
    let streamed: Result<(), ProxyError> = async {
        let mut sent: u64 = 0;
        let mut carry: Option<Bytes> = None;
        while sent < len {
            let this = part_size.min(len - sent);
            wait_for_room(app, &mut upload).await?;
            let (tx, part_body) = crate::wire::body::channel(STREAM_QUEUE);
            let part_number = upload.next_part;
            upload.next_part += 1;
            let (task_app, task_key, upload_id) =
                (app.clone(), key.to_owned(), upload.upload_id.clone());
            let part_body = match trailer {
                Some(algorithm) => integrity::with_trailer(part_body, this, algorithm).0,
                None => part_body,
            };
            upload.in_flight.spawn(async move {
                task_app
                    .store
                    .upload_part_body(&task_key, &upload_id, part_number, this, trailer, part_body)
                    .await
                    .map(|etag| (part_number, etag))
            });
            let mut left = this;
            while left > 0 {
                let mut data = match carry.take() {
                    Some(data) => data,
                    None => match body.frame().await {
                        Some(Ok(frame)) => match frame.into_data() {
                            Ok(data) => data,
                            Err(_) => continue,
                        },
                        Some(Err(e)) => {
                            // Cut the part request off too, so that S3 keeps nothing of it.
                            let detail = e.to_string();
                            let _ = tx.send(Err(e)).await;
                            return Err(client_gone(&detail));
                        }
                        None => {
                            let received = sent + this - left;
                            return Err(client_gone(&format!("{received} of {len} bytes")));
                        }
                    },
                };
                let take = usize::try_from(left).unwrap_or(usize::MAX).min(data.len());
                let piece = data.split_to(take);
                if !data.is_empty() {
                    carry = Some(data);
                }
                left -= take as u64;
                if let Some(hasher) = hasher.as_mut() {
                    hasher.update(&piece);
                }
                if tx.send(Ok(piece)).await.is_err() {
                    // The part request ended before its bytes did: the store failed.
                    return Err(first_failure(&mut upload).await);
                }
            }
            sent += this;
        }
        Ok(())
    }
    .await;
    finish(app, key, upload, streamed, hasher).await
}

/// Wait until fewer than `parts_in_flight` parts of this upload are in flight.
async fn wait_for_room(app: &App, upload: &mut Multipart) -> Result<(), ProxyError> {
    while let Some(joined) = upload.in_flight.try_join_next() {
        upload.done.push(part_result(joined)?);
    }
    while upload.in_flight.len() >= app.upload.parts_in_flight {
        if let Some(joined) = upload.in_flight.join_next().await {
            upload.done.push(part_result(joined)?);
        }
    }
    Ok(())
}

/// The error of the first part that failed (one has, or its body would not have been closed).
async fn first_failure(upload: &mut Multipart) -> ProxyError {
    while let Some(joined) = upload.in_flight.join_next().await {
        match part_result(joined) {
            Ok(done) => upload.done.push(done),
            Err(e) => return e,
        }
    }
    ProxyError::store(
        StatusCode::BAD_GATEWAY,
        "Artifact store error: a part upload ended early",
    )
}

/// All bytes read: wait for the parts, complete the upload (returning the object's ETag); on any
/// failure, abort it.
async fn finish(
    app: &Arc<App>,
    key: &str,
    mut upload: Multipart,
    read: Result<(), ProxyError>,
    hasher: &Option<Hasher>,
) -> Result<(Option<String>, bool), ProxyError> {
    // The whole object's CRC, which a FULL_OBJECT upload gives the store to verify and keep.
    let whole = hasher
        .clone()
        .filter(|_| upload.full_object)
        .map(Hasher::finish);
    let finished = match read {
        Err(e) => Err(e),
        Ok(()) => {
            async {
                while let Some(joined) = upload.in_flight.join_next().await {
                    upload.done.push(part_result(joined)?);
                }
                let done = std::mem::take(&mut upload.done);
                app.store
                    .complete_multipart(key, &upload.upload_id, done, whole)
                    .await
                    .map_err(store_error)
            }
            .await
        }
    };
    match finished {
        Ok(etag) => {
            app.untrack_upload(&upload.upload_id);
            app.metrics
                .multipart_uploads
                .with_label_values(&["completed"])
                .inc();
            Ok((etag, whole.is_some()))
        }
        Err(e) => {
            abort(app, key, upload).await;
            Err(e)
        }
    }
}

/// One part being filled from a chunked body: large frames as they came, small ones copied
/// into blocks; `held` is the memory that takes, covered by `permit`.
struct PartBuffer {
    frames: Vec<Bytes>,
    block: BytesMut,
    len: usize,
    held: usize,
    permit: Option<BudgetPermit>,
    /// The right to fill a part (see `App::part_slot`), taken once the part outgrows its first
    /// small block (or at its first byte when the trickle pool is empty).
    slot: Option<OwnedSemaphorePermit>,
    /// The part's first block, from the trickle pool (`App::try_small_block`), while it has no
    /// slot.
    small: Option<OwnedSemaphorePermit>,
}

impl PartBuffer {
    fn new() -> Self {
        PartBuffer {
            frames: Vec::new(),
            block: BytesMut::new(),
            len: 0,
            held: 0,
            permit: None,
            slot: None,
            small: None,
        }
    }

    /// Hold `data` in the part's first, small block, without a slot or budget: only while the
    /// part is that small and a block of the trickle pool is free.
    fn try_push_small(&mut self, app: &App, data: &Bytes) -> bool {
        if self.slot.is_some() || self.len + data.len() > SMALL_BLOCK {
            return false;
        }
        if self.small.is_none() {
            self.small = app.try_small_block();
            if self.small.is_none() {
                return false;
            }
            self.block = BytesMut::with_capacity(SMALL_BLOCK);
            self.held += SMALL_BLOCK;
        }
        self.len += data.len();
        self.block.extend_from_slice(data);
        true
    }

    /// What `held` becomes once `data` is added.
    fn held_with(&self, data: &Bytes) -> usize {
        if data.len() >= COPY_BELOW {
            self.held + data.len()
        } else if self.block.capacity() - self.block.len() >= data.len() {
            self.held
        } else {
            self.held + BLOCK
        }
    }

    fn reserved(&self) -> usize {
        self.permit
            .as_ref()
            .map_or(0, |p| usize::try_from(p.bytes()).unwrap_or(usize::MAX))
    }

    fn push(&mut self, data: Bytes) {
        self.len += data.len();
        if data.len() >= COPY_BELOW {
            self.seal();
            self.held += data.len();
            self.frames.push(data);
            return;
        }
        if self.block.capacity() - self.block.len() < data.len() {
            self.seal();
            self.block = BytesMut::with_capacity(BLOCK);
            self.held += BLOCK;
        }
        self.block.extend_from_slice(&data);
    }

    /// Close the block being filled; a partly filled one is copied to its exact size.
    fn seal(&mut self) {
        if self.block.capacity() == 0 {
            return;
        }
        let block = std::mem::take(&mut self.block);
        self.held -= block.capacity();
        if block.is_empty() {
            return;
        }
        if block.len() == block.capacity() {
            self.held += block.len();
            self.frames.push(block.freeze());
        } else {
            self.held += block.len();
            self.frames.push(Bytes::copy_from_slice(&block));
        }
    }

    /// The part as it goes to S3: frames only, the right to fill given back.
    fn close(mut self) -> (Vec<Bytes>, usize, Option<BudgetPermit>) {
        self.seal();
        drop(self.slot.take());
        drop(self.small.take());
        (
            std::mem::take(&mut self.frames),
            self.len,
            self.permit.take(),
        )
    }
}

/// No declared length: fill parts in memory, within the budget, and send each when full.
async fn fill_parts(
    app: &Arc<App>,
    key: &str,
    content_type: &'static str,
    mut body: ProxyBody,
    hasher: &mut Option<Hasher>,
) -> Result<(Option<String>, bool), ProxyError> {
    let part_size = app.upload.part_size;
    let mut part = PartBuffer::new();
    let mut multipart: Option<Multipart> = None;

    let outcome: Result<(), ProxyError> = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| client_gone(&e.to_string()))?;
            let Ok(mut data) = frame.into_data() else {
                continue;
            };
            while !data.is_empty() {
                let take = (part_size - part.len).min(data.len()).min(STEP);
                let piece = data.split_to(take);
                if let Some(hasher) = hasher.as_mut() {
                    hasher.update(&piece);
                }
                if part.try_push_small(app, &piece) {
                    continue;
                }
                if part.slot.is_none() {
                    part.slot = Some(app.part_slot().await);
                }
                // Budget for the bytes in hand only. When it is short, a part S3 accepts
                // (5 MiB or more) goes at once, smaller than planned; a smaller one waits,
                // which cannot deadlock since every part being filled can reach 5 MiB.
                loop {
                    let needed = part.held_with(&piece).saturating_sub(part.reserved());
                    if needed == 0 {
                        break;
                    }
                    let granted = match app.try_reserve(needed.max(STEP)) {
                        Some(granted) => granted,
                        None if part.len as u64 >= MIN_PART => {
                            let full = std::mem::replace(&mut part, PartBuffer::new());
                            send_full(app, key, content_type, &mut multipart, full).await?;
                            part.slot = Some(app.part_slot().await);
                            continue;
                        }
                        None => app.reserve(needed.max(STEP)).await,
                    };
                    match &mut part.permit {
                        Some(permit) => permit.merge(granted),
                        None => part.permit = Some(granted),
                    }
                }
                // The budget now covers the small block too: its pool block goes back.
                drop(part.small.take());
                part.push(piece);
                if part.len == part_size {
                    let full = std::mem::replace(&mut part, PartBuffer::new());
                    send_full(app, key, content_type, &mut multipart, full).await?;
                }
            }
        }
        Ok(())
    }
    .await;

    match (outcome, multipart) {
        // It all fitted in one part: one PutObject from the frames we hold.
        (Ok(()), None) => {
            let (frames, len, _permit) = part.close();
            let mut body = crate::wire::body::from_frames(frames);
            let trailer = put_trailer(app, hasher).await;
            if let Some(algorithm) = trailer {
                body = integrity::with_trailer(body, len as u64, algorithm).0;
            }
            app.store
                .put_object(key, content_type, len as u64, trailer, body)
                .await
                .map(|etag| (etag, false))
                .map_err(store_error)
        }
        (read, Some(mut upload)) => {
            let read = match read {
                Ok(()) if part.len > 0 => send_part(app, key, &mut upload, part).await,
                other => other,
            };
            finish(app, key, upload, read, hasher).await
        }
        (Err(e), None) => Err(e),
    }
}

/// Send a full part, starting the multipart upload with the first one.
async fn send_full(
    app: &Arc<App>,
    key: &str,
    content_type: &'static str,
    multipart: &mut Option<Multipart>,
    part: PartBuffer,
) -> Result<(), ProxyError> {
    let upload = match multipart {
        Some(upload) => upload,
        None => multipart.insert(start_multipart(app, key, content_type).await?),
    };
    send_part(app, key, upload, part).await
}

/// S3 allows 10,000 parts: a declared length that needs more gets bigger parts.
fn part_size_for(configured: usize, declared: Option<u64>) -> usize {
    const MAX_PARTS: u64 = 10_000;
    const MIB: u64 = 1024 * 1024;
    let needed = declared.map_or(0, |len| len.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB);
    configured.max(usize::try_from(needed).unwrap_or(usize::MAX))
}

async fn start_multipart(
    app: &Arc<App>,
    key: &str,
    content_type: &str,
) -> Result<Multipart, ProxyError> {
    // FULL_OBJECT where the store verifies it, for a CRC64NVME digest (S3 has no full-object
    // SHA-256 of a multipart upload).
    let full_object = app.integrity.config.algorithm == Some(Algorithm::Crc64Nvme)
        && app.store_checksums().await.full_object;
    let upload_id = app
        .store
        .create_multipart(key, content_type, full_object)
        .await
        .map_err(store_error)?;
    app.track_upload(&upload_id, key);
    app.metrics
        .multipart_uploads
        .with_label_values(&["started"])
        .inc();
    Ok(Multipart {
        upload_id,
        full_object,
        next_part: 1,
        in_flight: JoinSet::new(),
        done: Vec::new(),
    })
}

/// Start uploading one part, first waiting until fewer than `parts_in_flight` are in flight.
async fn send_part(
    app: &Arc<App>,
    key: &str,
    upload: &mut Multipart,
    part: PartBuffer,
) -> Result<(), ProxyError> {
    // Give the right to fill a part back before waiting: this part is complete.
    let (frames, len, permit) = part.close();
    wait_for_room(app, upload).await?;
    let part_number = upload.next_part;
    upload.next_part += 1;
    let trailer = part_trailer(app, upload).await;
    let (app, key, upload_id) = (app.clone(), key.to_owned(), upload.upload_id.clone());
    upload.in_flight.spawn(async move {
        let mut attempt = 0;
        let result = loop {
            match app
                .store
                .upload_part(&key, &upload_id, part_number, frames.clone(), len, trailer)
                .await
            {
                Ok(etag) => break Ok((part_number, etag)),
                Err(e) if attempt < PART_RETRIES => {
                    attempt += 1;
                    tracing::warn!(key, part_number, "part upload failed, retrying: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(200 * attempt as u64))
                        .await;
                }
                Err(e) => break Err(e),
            }
        };
        drop(permit);
        result
    });
    Ok(())
}

fn part_result(
    joined: Result<Result<(u32, String), StoreError>, tokio::task::JoinError>,
) -> Result<(u32, String), ProxyError> {
    match joined {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(e)) => Err(store_error(e)),
        Err(e) => Err(ProxyError::internal(format!("part task failed: {e}"))),
    }
}

/// Stop the parts still running and abort the upload, so S3 keeps nothing of it.
async fn abort(app: &Arc<App>, key: &str, mut upload: Multipart) {
    upload.in_flight.abort_all();
    while upload.in_flight.join_next().await.is_some() {}
    match app.store.abort_multipart(key, &upload.upload_id).await {
        Ok(()) => tracing::info!(key, "multipart upload aborted"),
        Err(e) => {
            tracing::warn!(
                key,
                "could not abort multipart upload {} ({e}); will try again",
                upload.upload_id
            );
            app.defer_abort(&upload.upload_id, key);
        }
    }
    app.untrack_upload(&upload.upload_id);
    app.metrics
        .multipart_uploads
        .with_label_values(&["aborted"])
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames of every size go into parts unchanged, and what a part holds stays within a
    /// block of its length.
    #[test]
    fn parts_hold_what_they_say() {
        use rand::Rng;
        let mut rng = rand::rng();
        let part_size = 5 * 1024 * 1024;
        let mut part = PartBuffer::new();
        let (mut sent, mut stored) = (Vec::new(), Vec::new());
        for i in 0..300u32 {
            let n = match i % 3 {
                0 => rng.random_range(1..100),
                1 => rng.random_range(100..140_000),
                _ => rng.random_range(140_000..500_000),
            };
            let bytes: Vec<u8> = (0..n).map(|j| (i as usize * 7 + j) as u8).collect();
            sent.extend_from_slice(&bytes);
            let mut data = Bytes::from(bytes);
            while !data.is_empty() {
                let take = (part_size - part.len).min(data.len()).min(STEP);
                part.push(data.split_to(take));
                assert!(
                    part.held <= part.len + BLOCK,
                    "{} > {}",
                    part.held,
                    part.len
                );
                if part.len == part_size {
                    let (frames, len, _) = std::mem::replace(&mut part, PartBuffer::new()).close();
                    assert_eq!(frames.iter().map(Bytes::len).sum::<usize>(), len);
                    frames.iter().for_each(|f| stored.extend_from_slice(f));
                }
            }
        }
        let (frames, _, _) = part.close();
        frames.iter().for_each(|f| stored.extend_from_slice(f));
        assert!(
            sent == stored,
            "the bytes changed on their way through parts"
        );
    }

    /// A tiny frame costs its length once sealed, not a block.
    #[test]
    fn small_frames_are_copied() {
        let mut part = PartBuffer::new();
        part.push(Bytes::from_static(b"x"));
        assert_eq!(part.held, BLOCK);
        part.push(Bytes::from(vec![1u8; COPY_BELOW]));
        assert_eq!(part.held, 1 + COPY_BELOW);
        assert_eq!(part.len, 1 + COPY_BELOW);
    }

    #[test]
    fn parts_grow_to_fit_ten_thousand() {
        let mib = 1024 * 1024;
        assert_eq!(part_size_for(8 * mib, None), 8 * mib);
        assert_eq!(
            part_size_for(8 * mib, Some(10 * 1024 * mib as u64)),
            8 * mib
        );
        // 200 GiB in 10,000 parts needs 20.48 MiB parts: rounded up to 21 MiB.
        assert_eq!(
            part_size_for(8 * mib, Some(200 * 1024 * mib as u64)),
            21 * mib
        );
    }
}

//! `PUT artifacts/<path>`: the request body goes to S3 as the `Bytes` frames hyper read, never
//! collected. Small bodies with a Content-Length stream as one PutObject; the rest go as a
//! multipart upload, cut into parts with `Bytes::split_to`, a few parts in flight, all parts
//! together bounded by the upload budget. Any failure aborts the multipart upload, so no object
//! and no orphaned part is left behind. The answer comes only once the object is stored.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use tokio::task::JoinSet;

use super::store_error;
use crate::body::{ProxyBody, empty};
use crate::error::{ProxyError, Side};
use crate::mlflow::content::guess_mime_type;
use crate::mlflow::path::validate_path_is_safe;
use crate::s3::StoreError;
use crate::state::{App, BudgetPermit};

/// A part that fails is sent again this many times (its frames are cheap to clone).
const PART_RETRIES: usize = 2;

pub async fn upload(
    app: &Arc<App>,
    raw_path: &str,
    request: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let path = validate_path_is_safe(raw_path).map_err(|_| ProxyError::invalid_path().fastapi())?;
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
    let declared = content_length(&request)?;
    let key = app.store.upload_key(head, tail);
    let content_type = guess_mime_type(tail);
    let body = request.into_body();

    // A task of its own: if the client goes away, hyper drops this handler, but the task still
    // sees the broken body and aborts the multipart upload.
    let task_app = app.clone();
    let stored =
        tokio::spawn(
            async move { store_body(&task_app, &key, content_type, declared, body).await },
        );
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

async fn store_body(
    app: &Arc<App>,
    key: &str,
    content_type: &'static str,
    declared: Option<u64>,
    body: ProxyBody,
) -> Result<(), ProxyError> {
    let result = match declared {
        Some(len) if len <= app.upload.single_put_max => {
            // hyper ends the body with an error if the client sends fewer bytes than it
            // declared, and S3 then discards the partial object. The flag tells that failure
            // (the client's) from the store's.
            let client_failed = Arc::new(AtomicBool::new(false));
            let flag = client_failed.clone();
            let body = body
                .map_err(move |e| {
                    flag.store(true, Ordering::Relaxed);
                    e
                })
                .boxed();
            match app.store.put_object(key, content_type, len, body).await {
                Err(e) if client_failed.load(Ordering::Relaxed) => Err(client_gone(&e.to_string())),
                other => other.map_err(store_error),
            }
        }
        _ => upload_in_parts(app, key, content_type, declared, body).await,
    };
    if let Err(e) = &result {
        tracing::warn!(key, "upload not stored: {e}");
    }
    result
}

fn client_gone(detail: &str) -> ProxyError {
    ProxyError::mlflow(
        Side::Client,
        StatusCode::BAD_REQUEST,
        "BAD_REQUEST",
        format!("The upload body ended early: {detail}"),
    )
}

/// One part being filled from the body: its frames, their total length, its budget share.
struct PartBuffer {
    frames: Vec<Bytes>,
    len: usize,
    permit: Option<BudgetPermit>,
}

impl PartBuffer {
    fn new(permit: BudgetPermit) -> Self {
        PartBuffer {
            frames: Vec::new(),
            len: 0,
            permit: Some(permit),
        }
    }
}

/// A multipart upload once it has more than one part.
struct Multipart {
    upload_id: String,
    next_part: u32,
    in_flight: JoinSet<Result<(u32, String), StoreError>>,
    done: Vec<(u32, String)>,
}

async fn upload_in_parts(
    app: &Arc<App>,
    key: &str,
    content_type: &'static str,
    declared: Option<u64>,
    mut body: ProxyBody,
) -> Result<(), ProxyError> {
    let part_size = part_size_for(app.upload.part_size, declared);
    let mut part = PartBuffer::new(app.reserve(part_size).await);
    let mut multipart: Option<Multipart> = None;
    let mut received: u64 = 0;

    let outcome: Result<(), ProxyError> = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| client_gone(&e.to_string()))?;
            let Ok(mut data) = frame.into_data() else {
                continue;
            };
            received += data.len() as u64;
            while !data.is_empty() {
                let take = (part_size - part.len).min(data.len());
                part.frames.push(data.split_to(take));
                part.len += take;
                if part.len == part_size {
                    let full = std::mem::replace(
                        &mut part,
                        PartBuffer {
                            frames: Vec::new(),
                            len: 0,
                            permit: None,
                        },
                    );
                    let upload = match &mut multipart {
                        Some(upload) => upload,
                        None => multipart.insert(start_multipart(app, key, content_type).await?),
                    };
                    send_part(app, key, upload, full).await?;
                    // Only now wait for budget for the next part: the full one is on its way
                    // and will give its share back, so waiting uploads cannot deadlock.
                    part.permit = Some(app.reserve(part_size).await);
                }
            }
        }
        if let Some(len) = declared
            && len != received
        {
            return Err(client_gone(&format!("{received} of {len} bytes")));
        }
        Ok(())
    }
    .await;

    match (outcome, multipart) {
        // It all fitted in one part: one PutObject from the frames we hold.
        (Ok(()), None) => {
            let len = part.len as u64;
            let body = crate::body::from_frames(part.frames);
            app.store
                .put_object(key, content_type, len, body)
                .await
                .map_err(store_error)
        }
        (Ok(()), Some(mut upload)) => {
            let finished = async {
                if part.len > 0 {
                    send_part(app, key, &mut upload, part).await?;
                }
                while let Some(joined) = upload.in_flight.join_next().await {
                    upload.done.push(part_result(joined)?);
                }
                app.store
                    .complete_multipart(key, &upload.upload_id, std::mem::take(&mut upload.done))
                    .await
                    .map_err(store_error)
            }
            .await;
            match finished {
                Ok(()) => {
                    app.untrack_upload(&upload.upload_id);
                    app.metrics
                        .multipart_uploads
                        .with_label_values(&["completed"])
                        .inc();
                    Ok(())
                }
                Err(e) => {
                    abort(app, key, upload).await;
                    Err(e)
                }
            }
        }
        (Err(e), Some(upload)) => {
            abort(app, key, upload).await;
            Err(e)
        }
        (Err(e), None) => Err(e),
    }
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
    let upload_id = app
        .store
        .create_multipart(key, content_type)
        .await
        .map_err(store_error)?;
    app.track_upload(&upload_id, key);
    app.metrics
        .multipart_uploads
        .with_label_values(&["started"])
        .inc();
    Ok(Multipart {
        upload_id,
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
    while let Some(joined) = upload.in_flight.try_join_next() {
        upload.done.push(part_result(joined)?);
    }
    while upload.in_flight.len() >= app.upload.parts_in_flight {
        if let Some(joined) = upload.in_flight.join_next().await {
            upload.done.push(part_result(joined)?);
        }
    }
    let part_number = upload.next_part;
    upload.next_part += 1;
    let (app, key, upload_id) = (app.clone(), key.to_owned(), upload.upload_id.clone());
    upload.in_flight.spawn(async move {
        let PartBuffer {
            frames,
            len,
            permit,
        } = part;
        let mut attempt = 0;
        let result = loop {
            match app
                .store
                .upload_part(&key, &upload_id, part_number, frames.clone(), len)
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
        Err(e) => tracing::error!(
            key,
            "could not abort multipart upload {}: {e}",
            upload.upload_id
        ),
    }
    app.untrack_upload(&upload.upload_id);
    app.metrics
        .multipart_uploads
        .with_label_values(&["aborted"])
        .inc();
}

#[cfg(test)]
mod tests {
    use super::part_size_for;

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

//! Garage 2.5.0, a production S3 store, as a process of the bench: one node on loopback,
//! `replication_factor = 1`, its own region name, the bench's key imported at start
//! (`garage server --single-node --default-access-key`), its defaults otherwise (1 MiB blocks,
//! zstd level 1, deduplication of equal blocks: upload bodies must not repeat, see
//! `distinct_pattern`).

use std::path::Path;
use std::process::Command;

use bytes::Bytes;

use crate::procs::{self, Managed};
use crate::s3store::{S3Store, wait_ready};

/// The `s3_region` the bench's Garage signs with.
pub const REGION: &str = "garage";

/// Start Garage with its files under `dir`, S3 on 127.0.0.1:`s3_port`. Returns the process and
/// the admin API's URL (`/health` answers 200 once the node serves).
pub fn start(
    bin: &Path,
    dir: &Path,
    s3_port: u16,
    access_key: &str,
    secret_key: &str,
) -> Result<(Managed, String), String> {
    let rpc_port = procs::free_port().map_err(|e| e.to_string())?;
    let admin_port = procs::free_port().map_err(|e| e.to_string())?;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let config = dir.join("garage.toml");
    let secret: String = (0..32u64)
        .map(|i| format!("{:02x}", (i * 37 + u64::from(s3_port)) % 251))
        .collect();
    std::fs::write(
        &config,
        format!(
            "metadata_dir = \"{meta}\"\ndata_dir = \"{data}\"\ndb_engine = \"lmdb\"\n\
             replication_factor = 1\nrpc_bind_addr = \"127.0.0.1:{rpc_port}\"\n\
             rpc_public_addr = \"127.0.0.1:{rpc_port}\"\nrpc_secret = \"{secret}\"\n\n\
             [s3_api]\ns3_region = \"{REGION}\"\napi_bind_addr = \"127.0.0.1:{s3_port}\"\n\n\
             [admin]\napi_bind_addr = \"127.0.0.1:{admin_port}\"\n",
            meta = dir.join("meta").display(),
            data = dir.join("data").display(),
        ),
    )
    .map_err(|e| e.to_string())?;
    let mut command = Command::new(bin);
    command
        .arg("-c")
        .arg(&config)
        .args(["server", "--single-node", "--default-access-key"])
        .env("GARAGE_DEFAULT_ACCESS_KEY", access_key)
        .env("GARAGE_DEFAULT_SECRET_KEY", secret_key)
        // One log line per request would be part of what is measured.
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1");
    let process = Managed::spawn("garage", &mut command, Some(&dir.join("garage.log")))?;
    Ok((process, format!("http://127.0.0.1:{admin_port}/health")))
}

/// Garage from the tools folder (`scripts/stack setup --s3 garage` builds it there).
pub fn start_store(
    tools: &Path,
    work: &Path,
    access_key: &str,
    secret_key: &str,
) -> Result<S3Store, String> {
    let bin = tools.join("bin").join("garage");
    if !bin.is_file() {
        return Err(format!(
            "{} is not installed (scripts/stack setup --s3 garage builds it)",
            bin.display()
        ));
    }
    let port = procs::free_port().map_err(|e| e.to_string())?;
    let files = work.join("garage");
    let (process, health) = start(&bin, &files, port, access_key, secret_key)?;
    wait_ready(&health).map_err(|e| format!("garage: {e}"))?;
    Ok(S3Store {
        name: "garage",
        process,
        url: format!("http://127.0.0.1:{port}"),
        region: REGION,
        kind: format!("Garage 2.5.0 ({}), one node", bin.display()),
        files,
    })
}

/// Incompressible bytes of an odd length (1 MiB + 1): a body made of repeats of it never lines up
/// with Garage's 1 MiB blocks, so no block is stored twice; each `seed` gives other bytes, so
/// objects do not share blocks either. (A repeated 1 MiB pattern would be stored once.)
pub fn distinct_pattern(seed: u64) -> Bytes {
    let len = (1 << 20) + 1;
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0xD1B5_4A32_D192_ED03);
    let mut data = Vec::with_capacity(len + 8);
    while data.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        data.extend_from_slice(&state.to_le_bytes());
    }
    data.truncate(len);
    Bytes::from(data)
}

//! Which certificate authorities an https:// S3 endpoint may be signed by.
//!
//! Mozilla's roots (compiled in, so a bare image still reaches public stores) plus either the
//! bundle in `AWS_CA_BUNDLE` (the variable boto3, and so MLflow, reads: a store behind a private
//! CA) or the system's store as OpenSSL finds it (`SSL_CERT_FILE`, `SSL_CERT_DIR`, else the
//! distribution's, e.g. `/etc/ssl/certs` from `ca-certificates`).
//!
//! rust-s3's own client (reqwest, for list, delete and the multipart control calls) is built with
//! the same two sources: Mozilla's roots and the system's store (`rustls-tls-native-roots`). It
//! has no setting for a CA file, so `main` hands `AWS_CA_BUNDLE` to it as `SSL_CERT_FILE`
//! (`ca_bundle_as_ssl_cert_file`).

use std::path::Path;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// The roots for the S3 connection; `ca_bundle` is `AWS_CA_BUNDLE` (a PEM file).
pub fn roots(ca_bundle: Option<&Path>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    match ca_bundle {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("AWS_CA_BUNDLE={}: {e}", path.display()))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!(
                    "AWS_CA_BUNDLE={}: no certificate in it",
                    path.display()
                ));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for error in &native.errors {
                tracing::debug!("system certificate store: {error}");
            }
            // Stores carry a few certificates rustls cannot parse; the others still count.
            roots.add_parsable_certificates(native.certs);
        }
    }
    Ok(roots)
}

/// TLS settings for the S3 connection (HTTP/1.1 only, as the connector speaks).
pub fn client_config(ca_bundle: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots(ca_bundle)?)
        .with_no_client_auth())
}

/// The command to run instead of this process so that rust-s3's client trusts `AWS_CA_BUNDLE`
/// too: the same program and arguments with `SSL_CERT_FILE` set to the bundle; None when that is
/// already so (or no bundle is set). Setting the variable in-process would need unsafe code.
pub fn ca_bundle_as_ssl_cert_file() -> Option<std::process::Command> {
    let bundle = std::env::var_os("AWS_CA_BUNDLE").filter(|v| !v.is_empty())?;
    if std::env::var_os("SSL_CERT_FILE").as_ref() == Some(&bundle) {
        return None;
    }
    let program = std::env::current_exe().ok()?;
    let mut command = std::process::Command::new(program);
    command
        .args(std::env::args_os().skip(1))
        .env("SSL_CERT_FILE", bundle);
    Some(command)
}

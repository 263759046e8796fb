//! An S3 store behind TLS with a private certificate authority (issue 20): a CA made here, at
//! test time, signs the certificate of a TLS terminator in front of the test S3 server (as an
//! on-premises nginx would be). The proxy binary works with `AWS_CA_BUNDLE` (boto3's variable)
//! or `SSL_CERT_FILE` naming the CA, on every S3 call (its own connection and rust-s3's client:
//! upload, download, list, delete), and refuses the store without either.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Child;
use std::sync::Arc;

use common::process::{free_port, wait_listening};
use common::{FakeMlflow, S3Server, proxy_command_to, raw_request};
use tokio::net::{TcpListener, TcpStream};

/// A CA and a server certificate for 127.0.0.1 signed by it: (CA PEM, server TLS settings).
fn private_ca() -> (String, Arc<rustls::ServerConfig>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "mlflow-stack test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server_params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    let server = server_params.signed_by(&server_key, &issuer).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![server.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
        )
        .unwrap();
    (ca.pem(), Arc::new(config))
}

/// Terminate TLS on a port of its own and relay the plain bytes to the S3 server.
async fn tls_terminator(config: Arc<rustls::ServerConfig>, upstream: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that does not trust the CA ends the handshake: nothing to relay.
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                if let Ok(mut store) = TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut store).await;
                }
            });
        }
    });
    addr
}

struct ProxyProcess {
    child: Child,
    addr: SocketAddr,
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real binary, with a clean environment plus `extra`, against the store at `endpoint`.
/// MLflow is a stand-in (the proxy asks it which release and modes it runs before serving).
async fn start_proxy(
    s3: &S3Server,
    mlflow: &FakeMlflow,
    endpoint: &str,
    extra: &[(&str, &Path)],
) -> ProxyProcess {
    let port = free_port();
    let upstream = format!("http://{}", mlflow.addr);
    let mut command = proxy_command_to(
        env!("CARGO_BIN_EXE_mlflow-artifact-proxy"),
        s3,
        endpoint,
        &upstream,
    );
    command
        .env("RUST_LOG", "warn")
        .env("PROXY_LISTEN", format!("127.0.0.1:{port}"))
        .env("PROXY_METRICS_LISTEN", format!("127.0.0.1:{}", free_port()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit());
    for (name, value) in extra {
        command.env(name, value);
    }
    let child = command.spawn().expect("start the proxy binary");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_listening(addr).await;
    ProxyProcess { child, addr }
}

const ARTIFACTS: &str = "/api/2.0/mlflow-artifacts/artifacts";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_behind_a_private_ca_works_with_aws_ca_bundle_and_is_refused_without() {
    let s3 = S3Server::start().await;
    let mlflow = FakeMlflow::start().await;
    let (ca_pem, server_config) = private_ca();
    let tls = tls_terminator(server_config, s3.addr).await;
    let endpoint = format!("https://{tls}");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("private-ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();

    for variable in ["AWS_CA_BUNDLE", "SSL_CERT_FILE"] {
        let proxy = start_proxy(&s3, &mlflow, &endpoint, &[(variable, &ca_file)]).await;
        let key = format!("1/{variable}/model.bin");
        let body = common::random_bytes(3 * 1024 * 1024 + 7);
        // Upload and download: the proxy's own connection.
        let put = raw_request(proxy.addr, "PUT", &format!("{ARTIFACTS}/{key}"), &body).await;
        assert_eq!(
            put.status,
            200,
            "{variable}: {}",
            String::from_utf8_lossy(&put.body)
        );
        assert_eq!(s3.object(&key).as_deref(), Some(&body[..]), "{variable}");
        let get = raw_request(proxy.addr, "GET", &format!("{ARTIFACTS}/{key}"), b"").await;
        assert_eq!((get.status, get.body == body), (200, true), "{variable}");
        // List and delete: rust-s3's client.
        let list = raw_request(
            proxy.addr,
            "GET",
            &format!("{ARTIFACTS}?path=1/{variable}"),
            b"",
        )
        .await;
        assert_eq!(
            list.status,
            200,
            "{variable}: {}",
            String::from_utf8_lossy(&list.body)
        );
        assert!(
            String::from_utf8_lossy(&list.body).contains("model.bin"),
            "{}",
            String::from_utf8_lossy(&list.body)
        );
        let delete = raw_request(proxy.addr, "DELETE", &format!("{ARTIFACTS}/{key}"), b"").await;
        assert_eq!(
            delete.status,
            200,
            "{variable}: {}",
            String::from_utf8_lossy(&delete.body)
        );
        assert_eq!(s3.object(&key), None, "{variable}");
    }

    // Neither variable: the store's certificate is not trusted; nothing is stored, and the
    // answer is a server-side error, not a success.
    let proxy = start_proxy(&s3, &mlflow, &endpoint, &[]).await;
    let put = raw_request(proxy.addr, "PUT", &format!("{ARTIFACTS}/1/x.bin"), b"x").await;
    assert!(
        put.status >= 500,
        "{}: {}",
        put.status,
        String::from_utf8_lossy(&put.body)
    );
    assert_eq!(s3.object("1/x.bin"), None);
    let list = raw_request(proxy.addr, "GET", &format!("{ARTIFACTS}?path=1"), b"").await;
    assert!(
        list.status >= 500,
        "{}: {}",
        list.status,
        String::from_utf8_lossy(&list.body)
    );
}

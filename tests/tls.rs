//! TLS through rustls: certificates generated in the test, SNI, ALPN h2 and http/1.1.

mod common;

use std::time::Duration;

use common::{claims, request, send_on, TestPki, TestServer};
use http::Version;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use trackedge::Kind;

fn tls_config(pki: &TestPki, dir: &std::path::Path) -> String {
    let (a_cert, a_key) = pki.leaf(dir, "a", &["a.example.test"]);
    let (b_cert, b_key) = pki.leaf(dir, "b", &["b.example.test", "*.b.example.test"]);
    format!(
        "[[public.tls]]\ncert_path = {:?}\nkey_path = {:?}\nserver_names = [\"a.example.test\"]\n\n\
         [[public.tls]]\ncert_path = {:?}\nkey_path = {:?}\nserver_names = [\"b.example.test\", \"*.b.example.test\"]\n",
        a_cert.display().to_string(),
        a_key.display().to_string(),
        b_cert.display().to_string(),
        b_key.display().to_string(),
    )
}

async fn connect(
    server: &TestServer,
    pki: &TestPki,
    name: &str,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(server.public).await.unwrap();
    pki.connector(alpn)
        .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
        .await
        .unwrap_or_else(|e| panic!("TLS handshake for {name}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_routes_work_over_tls_with_h2_and_http1_and_sni() {
    let pki = TestPki::new();
    let certs = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(&tls_config(&pki, certs.path()));
    let open = server.path_for(&claims(Kind::Open, "tls-open"));
    let click = server.path_for(&claims(Kind::Click, "tls-click"));

    // The handshake only succeeds when the server picked the certificate for the
    // name, because each leaf is valid for its own names only.
    for name in ["a.example.test", "b.example.test", "x.b.example.test"] {
        let stream = connect(&server, &pki, name, &[b"h2", b"http/1.1"]).await;
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let response = send_on(TokioIo::new(stream), Version::HTTP_2, request("GET", &open)).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), Version::HTTP_2);
        assert_eq!(response.body().len(), 43);
    }
    let stream = connect(&server, &pki, "a.example.test", &[b"http/1.1"]).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let response = send_on(
        TokioIo::new(stream),
        Version::HTTP_11,
        request("GET", &click),
    )
    .await;
    assert_eq!(response.status(), 302);
    assert_eq!(
        response.headers()["location"],
        "https://shop.example/landing?x=1"
    );

    // An unknown name gets the first (default) certificate, which does not cover it.
    let tcp = TcpStream::connect(server.public).await.unwrap();
    let refused = pki
        .connector(&[b"h2"])
        .connect(ServerName::try_from("unknown.test").unwrap(), tcp)
        .await;
    assert!(refused.is_err());

    assert!(server.terminate().success());
    assert_eq!(server.events().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_versions_below_1_2_are_not_offered() {
    // rustls clients cannot speak TLS 1.1 at all; a TLS-1.3-only client must work and
    // the server's protocol list is checked by asking for 1.2 only as well.
    let pki = TestPki::new();
    let certs = tempfile::tempdir().unwrap();
    let server = TestServer::start(&tls_config(&pki, certs.path()));
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca_der.clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = TcpStream::connect(server.public).await.unwrap();
        let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(ServerName::try_from("a.example.test").unwrap(), tcp)
            .await
            .unwrap();
        assert_eq!(stream.get_ref().1.protocol_version(), Some(version.version));
    }
}

#[test]
fn a_bad_pem_stops_the_start_with_a_message_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("broken.pem");
    std::fs::write(&cert, "not a certificate").unwrap();
    let config = dir.path().join("trackedge.toml");
    std::fs::write(
        &config,
        format!(
            "[[public.tls]]\ncert_path = {:?}\nkey_path = {:?}\n",
            cert.display().to_string(),
            cert.display().to_string()
        ),
    )
    .unwrap();
    let output = std::process::Command::new(common::BIN)
        .args([
            "serve",
            "--public-addr",
            "127.0.0.1:0",
            "--admin-addr",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("broken.pem"), "{stderr}");
}

/// One certificate for `names`, swapped into `dir/live.{pem,key}` by rename so the
/// server never reads a half-written file.
fn install_leaf(pki: &TestPki, dir: &std::path::Path, names: &[&str]) {
    let staging = tempfile::tempdir_in(dir).unwrap();
    let (cert, key) = pki.leaf(staging.path(), "live", names);
    std::fs::rename(key, dir.join("live.key")).unwrap();
    std::fs::rename(cert, dir.join("live.pem")).unwrap();
}

fn live_config(dir: &std::path::Path, reload_interval_ms: u64) -> String {
    format!(
        "[public]\ntls_reload_interval_ms = {reload_interval_ms}\n\n\
         [[public.tls]]\ncert_path = {:?}\nkey_path = {:?}\n",
        dir.join("live.pem").display().to_string(),
        dir.join("live.key").display().to_string(),
    )
}

async fn handshake_ok(server: &TestServer, pki: &TestPki, name: &str) -> bool {
    let tcp = TcpStream::connect(server.public).await.unwrap();
    pki.connector(&[b"http/1.1"])
        .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_certificate_is_served_without_a_restart_and_a_broken_one_is_not() {
    let pki = TestPki::new();
    let certs = tempfile::tempdir().unwrap();
    install_leaf(&pki, certs.path(), &["old.example.test"]);
    let mut server = TestServer::start(&live_config(certs.path(), 100));
    assert!(handshake_ok(&server, &pki, "old.example.test").await);
    assert!(!handshake_ok(&server, &pki, "new.example.test").await);
    // Held across the reload: an open connection keeps the certificate it got.
    let held = connect(&server, &pki, "old.example.test", &[b"http/1.1"]).await;

    install_leaf(&pki, certs.path(), &["new.example.test"]);
    let switched = common::eventually(Duration::from_secs(10), || {
        handshake_ok(&server, &pki, "new.example.test")
    })
    .await;
    assert!(switched, "the new certificate was never served");
    assert!(!handshake_ok(&server, &pki, "old.example.test").await);
    let open = server.path_for(&claims(Kind::Open, "held"));
    let response = send_on(TokioIo::new(held), Version::HTTP_11, request("GET", &open)).await;
    assert_eq!(
        response.status(),
        200,
        "the connection from before still works"
    );

    let errors_before = server
        .metric("trackedge_tls_reloads_total{result=\"error\"}")
        .await;
    std::fs::write(
        certs.path().join("live.pem"),
        "-----BEGIN CERTIFICATE-----\nbroken\n",
    )
    .unwrap();
    let counted = common::eventually(Duration::from_secs(10), || async {
        server
            .metric("trackedge_tls_reloads_total{result=\"error\"}")
            .await
            > errors_before
    })
    .await;
    assert!(counted, "the broken file was not counted");
    assert!(
        handshake_ok(&server, &pki, "new.example.test").await,
        "a broken file keeps the certificate in force"
    );
    assert!(server.terminate().success());
    assert!(server.stderr().contains("TLS reload failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificates() {
    let pki = TestPki::new();
    let certs = tempfile::tempdir().unwrap();
    install_leaf(&pki, certs.path(), &["old.example.test"]);
    // Polling is too slow to matter here: only the signal reloads.
    let server = TestServer::start(&live_config(certs.path(), 3_600_000));
    install_leaf(&pki, certs.path(), &["new.example.test"]);
    assert!(handshake_ok(&server, &pki, "old.example.test").await);
    server.signal("HUP");
    let switched = common::eventually(Duration::from_secs(10), || {
        handshake_ok(&server, &pki, "new.example.test")
    })
    .await;
    assert!(switched, "SIGHUP did not load the new certificate");
    assert_eq!(
        server
            .metric("trackedge_tls_reloads_total{result=\"ok\"}")
            .await,
        1.0
    );
}

//! The nginx recipe of docs/client-ip.md, run as written: a real nginx (realip) on
//! loopback in front of the real binary, configured with the page's own blocks. The
//! test client plays the CDN: nginx trusts it, so the address it reports is the one
//! recorded; a proxy nginx does not trust cannot choose the recorded address.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{claims, eventually, request_with, send, TestServer};
use http::Version;
use trackedge::Kind;

/// The page's first fenced block of `lang` after the heading `section`.
fn block(section: &str, lang: &str) -> String {
    let page = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/client-ip.md"))
        .expect("docs/client-ip.md");
    let after = page
        .split(&format!("\n## {section}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("no section {section}"));
    after
        .split(&format!("```{lang}\n"))
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .unwrap_or_else(|| panic!("no {lang} block in {section}"))
        .to_owned()
}

struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Nginx {
    fn start(binary: &Path, dir: &Path, server_block: &str) -> Nginx {
        // A free loopback port, bound and released (nginx cannot report one it chose).
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let d = dir.display();
        let conf = format!(
            "worker_processes 1;\ndaemon off;\nmaster_process off;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\nevents {{ worker_connections 64; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/tmp;\n  proxy_temp_path {d}/tmp;\n\
             fastcgi_temp_path {d}/tmp;\n  uwsgi_temp_path {d}/tmp;\n  scgi_temp_path {d}/tmp;\n\
             server {{\n    listen {addr};\n{server_block}\n  }}\n}}\n"
        );
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let child = Command::new(binary)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-p")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        Nginx {
            child,
            addr,
            dir: dir.to_owned(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn recorded_ip(server: &TestServer, nginx: &Nginx, message: &str, xff: &str) -> String {
    let path = server.path_for(&claims(Kind::Open, message));
    let mut answered = false;
    for _ in 0..50 {
        // nginx may still be starting: retry the connection, bounded.
        if tokio::net::TcpStream::connect(nginx.addr).await.is_ok() {
            let request = request_with("GET", &path, &[("x-forwarded-for", xff)]);
            let response = send(nginx.addr, Version::HTTP_11, request).await;
            assert_eq!(response.status(), 200, "{}", nginx.log());
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered, "nginx did not start:\n{}", nginx.log());
    let found = eventually(Duration::from_secs(10), || async {
        server.events().iter().any(|e| e["message"] == message)
    })
    .await;
    assert!(found, "the event did not arrive");
    let events = server.events();
    let event = events.iter().find(|e| e["message"] == message).unwrap();
    event["ip"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nginx_realip_recipe_records_the_address_the_trusted_cdn_reports() {
    let Some(nginx) = common::tools::require("nginx", "nginx-light") else {
        return;
    };
    let server = TestServer::start(&block("nginx in front (realip)", "toml"));
    let recipe = block("nginx in front (realip)", "nginx")
        .replace("127.0.0.1:8080", &server.public.to_string());
    assert!(
        recipe.contains("set_real_ip_from 192.0.2.0/24;"),
        "{recipe}"
    );

    // The test client is the CDN nginx trusts.
    let dir = tempfile::tempdir().unwrap();
    let trusted = Nginx::start(
        &nginx,
        &dir.path().join("trusted"),
        &recipe.replace("192.0.2.0/24", "127.0.0.1"),
    );
    let ip = recorded_ip(&server, &trusted, "via-cdn", "198.51.100.23, 203.0.113.77").await;
    assert_eq!(
        ip, "203.0.113.0",
        "the right-most address the CDN reported, truncated"
    );
    drop(trusted);

    // As written (only 192.0.2.0/24 trusted), the test client is a stranger: its
    // header is ignored and its own address recorded.
    let untrusted = Nginx::start(&nginx, &dir.path().join("untrusted"), &recipe);
    let ip = recorded_ip(&server, &untrusted, "direct", "203.0.113.77").await;
    assert_eq!(ip, "127.0.0.0");
}

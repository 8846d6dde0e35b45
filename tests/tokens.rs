//! Bad tokens never redirect and never record; keys rotate without a restart.

mod common;

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{claims, eventually, get, TestServer};
use hmac::{Hmac, Mac};
use trackedge::{Key, KeyRing, Kind};

const OLD_KEY: &str = "1:old-secret-old-secret-old-secret-0001";
const NEW_KEY: &str = "2:new-secret-new-secret-new-secret-0002";

fn failures(reason: &str, route: &str) -> String {
    format!("trackedge_token_failures_total{{route=\"{route}\",reason=\"{reason}\"}}")
}

/// Builds a token byte by byte as docs/tokens.md describes, signed with `secret`,
/// so the server's own check of the target is tested, not only the signer's.
fn hand_made_click_token(key_id: u8, secret: &[u8], target: &str) -> String {
    let mut bytes = vec![1, key_id, 2, 0b1000];
    for field in ["acme", "launch", "m"] {
        bytes.push(field.len() as u8);
        bytes.extend_from_slice(field.as_bytes());
    }
    bytes.push(0); // link
    bytes.push(target.len() as u8);
    bytes.extend_from_slice(target.as_bytes());
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
    mac.update(&bytes);
    bytes.extend_from_slice(&mac.finalize().into_bytes()[..16]);
    URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_truncated_oversized_wrong_key_and_expired_click_tokens_never_redirect() {
    let mut server = TestServer::start("[public]\nmax_token_bytes = 512\n");
    let good = server.path_for(&claims(Kind::Click, "m"));
    // `/c/{routing key}/{token}`: the token is the last segment.
    let (routing, token) = good
        .trim_start_matches("/c/")
        .split_once('/')
        .map(|(r, t)| (r.to_owned(), t.to_owned()))
        .expect("minted URLs carry a routing key");
    let other_message = server.path_for(&claims(Kind::Click, "another-message"));
    let other_routing = other_message
        .trim_start_matches("/c/")
        .split('/')
        .next()
        .unwrap();

    let mut tampered = token.clone().into_bytes();
    let middle = tampered.len() / 2;
    tampered[middle] = if tampered[middle] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();

    let other_key =
        KeyRing::new(vec![Key::new(9, b"a key the server has never seen....")]).unwrap();
    let wrong_key = trackedge::mint_url("", &other_key, &claims(Kind::Click, "m")).unwrap();

    let mut expired_claims = claims(Kind::Click, "m");
    expired_claims.expires_at = Some(1_000_000_000);
    let expired = server.path_for(&expired_claims);

    let keys = std::fs::read_to_string(server.dir.join("keys.txt")).unwrap();
    let secret = keys
        .lines()
        .find_map(|l| l.strip_prefix("1:"))
        .unwrap()
        .to_owned();
    let javascript = hand_made_click_token(1, secret.as_bytes(), "javascript:alert(1)");
    let crlf = hand_made_click_token(
        1,
        secret.as_bytes(),
        "https://x.example/\r\nSet-Cookie: a=b",
    );

    let mut short = URL_SAFE_NO_PAD.decode(&token).unwrap();
    short.truncate(short.len() - 3);
    let truncated = URL_SAFE_NO_PAD.encode(short);

    let open_token = server.path_for(&claims(Kind::Open, "m"));
    let open_as_click = format!(
        "/c/{}",
        open_token
            .trim_start_matches("/o/")
            .trim_end_matches(".gif")
    );

    let cases = [
        (format!("/c/{tampered}"), "bad_signature"),
        (format!("/c/{truncated}"), "bad_signature"),
        (format!("/c/{}", &token[..10]), "malformed"),
        (format!("/c/{}", "A".repeat(600)), "too_long"),
        (format!("/c/{}", "%3Cscript%3E"), "malformed"),
        (wrong_key.clone(), "unknown_key"),
        (expired, "expired"),
        (format!("/c/{javascript}"), "bad_target"),
        (format!("/c/{crlf}"), "bad_target"),
        (open_as_click, "wrong_kind"),
        (format!("/c/{other_routing}/{token}"), "bad_routing_key"),
        (format!("/c/{routing}x/{token}"), "bad_routing_key"),
    ];
    for (path, reason) in &cases {
        let response = get(server.public, path).await;
        assert_eq!(response.status(), 404, "{path} ({reason})");
        assert!(response.headers().get("location").is_none(), "{path}");
        assert!(String::from_utf8_lossy(response.body()).contains("not valid"));
    }
    let metrics = server.metrics().await;
    for reason in [
        "bad_signature",
        "malformed",
        "too_long",
        "unknown_key",
        "expired",
        "bad_target",
        "wrong_kind",
        "bad_routing_key",
    ] {
        let expected = cases.iter().filter(|(_, r)| *r == reason).count() as f64;
        let series = failures(reason, "click");
        assert_eq!(
            common::metric_value(&metrics, &series),
            Some(expected),
            "{series}"
        );
    }
    // The same token with its real route still works: the refusals were about the token.
    assert_eq!(get(server.public, &good).await.status(), 302);
    // So does the token without a routing key: URLs minted before routing keys.
    let unrouted = get(server.public, &format!("/c/{token}")).await;
    assert_eq!(unrouted.status(), 302);
    let download_path = wrong_key.replace("/c/", "/f/");
    assert_eq!(get(server.public, &download_path).await.status(), 404);

    assert!(server.terminate().success());
    assert_eq!(
        server.events().len(),
        2,
        "only the good clicks are recorded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_pixel_token_still_gets_the_gif_but_records_nothing() {
    let mut server = TestServer::start("");
    for path in ["/o/nonsense.gif", "/o/AQEBAQ.gif"] {
        let response = get(server.public, path).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "image/gif");
        assert_eq!(response.body().len(), 43);
    }
    assert_eq!(server.metric(&failures("malformed", "pixel")).await, 2.0);
    assert!(server.terminate().success());
    assert!(server.events().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_click_tokens_go_to_the_configured_fallback() {
    let server =
        TestServer::start("[public]\nclick_fallback_url = \"https://sender.example/oops\"\n");
    let response = get(server.public, "/c/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").await;
    assert_eq!(response.status(), 302);
    assert_eq!(
        response.headers()["location"],
        "https://sender.example/oops"
    );
    assert_eq!(response.headers()["referrer-policy"], "no-referrer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_keys_keep_old_urls_working_until_the_old_key_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("my-keys.txt");
    std::fs::write(&key_file, format!("{OLD_KEY}\n")).unwrap();
    let config = format!(
        "[tokens]\nkey_file = {:?}\nreload_interval_ms = 100\n",
        key_file.display().to_string()
    );
    let server = TestServer::start(&config);
    assert!(
        !server.dir.join("keys.txt").exists(),
        "a configured key file is never replaced by a generated one"
    );
    assert_eq!(
        server
            .metric("trackedge_token_keys_active{key_id=\"1\"}")
            .await,
        1.0
    );

    let old_ring = trackedge::keys::load(&key_file, false).unwrap();
    let old_url = trackedge::mint_url("", &old_ring, &claims(Kind::Click, "old")).unwrap();
    assert_eq!(get(server.public, &old_url).await.status(), 302);

    // Rotate by file change: the new key signs, the old one still verifies.
    std::fs::write(&key_file, format!("{NEW_KEY}\n{OLD_KEY}\n")).unwrap();
    let rotated = eventually(Duration::from_secs(10), || async {
        server
            .metric("trackedge_token_signing_key_info{key_id=\"2\"}")
            .await
            == 1.0
    })
    .await;
    assert!(rotated, "the key file change was not picked up");
    assert_eq!(
        common::metric_value(
            &server.metrics().await,
            "trackedge_token_signing_key_info{key_id=\"1\"}"
        ),
        Some(0.0),
        "the key that signed before is no longer the signing key"
    );
    let new_ring = trackedge::keys::load(&key_file, false).unwrap();
    let new_url = trackedge::mint_url("", &new_ring, &claims(Kind::Click, "new")).unwrap();
    assert_eq!(get(server.public, &new_url).await.status(), 302);
    assert_eq!(
        get(server.public, &old_url).await.status(),
        302,
        "old URLs keep working"
    );

    // A broken file keeps the keys in force and counts the error.
    std::fs::write(&key_file, "this is not a key file\n").unwrap();
    let counted = eventually(Duration::from_secs(10), || async {
        server
            .metric("trackedge_token_key_reloads_total{result=\"error\"}")
            .await
            >= 1.0
    })
    .await;
    assert!(counted);
    assert_eq!(get(server.public, &new_url).await.status(), 302);

    // Retire the old key, this time by SIGHUP.
    std::fs::write(&key_file, format!("{NEW_KEY}\n")).unwrap();
    server.signal("HUP");
    let retired = eventually(Duration::from_secs(10), || async {
        server
            .metric("trackedge_token_keys_active{key_id=\"1\"}")
            .await
            == 0.0
    })
    .await;
    assert!(retired);
    assert_eq!(get(server.public, &old_url).await.status(), 404);
    assert_eq!(get(server.public, &new_url).await.status(), 302);
}

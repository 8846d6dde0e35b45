//! The committed seed corpus of the fuzz targets: real tokens, header values,
//! agents and a valid segment, made by the same code the checks use.

use super::*;
use crate::token::Claims;

/// The committed seed corpus, `(target, file name, bytes)`: real tokens, header
/// values, agents and a valid segment. `tests/fuzz_corpus.rs` checks that the files
/// under `fuzz/corpus/` are these and rewrites them when asked.
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut seeds = Vec::new();
    let mut add = |target: &'static str, name: &str, bytes: Vec<u8>| {
        seeds.push((target, format!("seed-{name}"), bytes));
    };

    let kind_bits = |kind: Kind| (kind.index() as u8) << 1;
    for (name, claims, time) in token_seed_claims() {
        let token = token::sign(key_ring().signing_key(), &claims).expect("seed claims sign");
        let mut text = vec![kind_bits(claims.kind) | time << 4];
        text.extend_from_slice(token.as_bytes());
        add("token_verify", name, text);
    }
    let (_, claims, _) = &token_seed_claims()[1];
    let old_key = token::sign(&keys()[1], claims).expect("seed claims sign");
    let mut text = vec![kind_bits(claims.kind) | 1 << 4];
    text.extend_from_slice(old_key.as_bytes());
    add("token_verify", "click-old-key", text);
    // The payload of a real token, without its tag: signed by the check itself.
    let payload = {
        use base64::Engine;
        let token = token::sign(&keys()[0], claims).expect("seed claims sign");
        let mut bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .expect("a token is base64url");
        bytes.truncate(bytes.len() - token::TAG_LEN);
        bytes
    };
    let mut sealed = vec![kind_bits(claims.kind) | 1 << 4 | 1];
    sealed.extend_from_slice(&payload);
    add("token_verify", "click-payload", sealed);

    let index = |name: &str| HEADERS.iter().position(|h| *h == name).expect("listed") as u8;
    for (name, header, peer, lines) in [
        (
            "xff-chain",
            "x-forwarded-for",
            0,
            &["6.6.6.6, 203.0.113.9, 10.1.1.1", "10.9.9.9"][..],
        ),
        (
            "xff-ipv6-port",
            "x-forwarded-for",
            2,
            &["[2001:db9::1]:443, [::ffff:10.0.0.1]:8080"],
        ),
        (
            "forwarded",
            "forwarded",
            3,
            &["for=6.6.6.6, for=\"[2001:db9::17]:4711\";proto=https, For=10.1.1.1;by=10.0.0.1"],
        ),
        (
            "forwarded-hidden",
            "forwarded",
            1,
            &["for=_hidden, for=unknown"],
        ),
        ("cf-single", "cf-connecting-ip", 0, &["198.51.100.7"]),
        ("untrusted-peer", "x-real-ip", 4, &["203.0.113.1"]),
        (
            "garbage",
            "true-client-ip",
            1,
            &["not an address, 999.1.1.1"],
        ),
    ] {
        let mut bytes = vec![index(header), peer];
        for line in lines {
            bytes.push(index(header));
            bytes.extend_from_slice(line.as_bytes());
            bytes.push(b'\n');
        }
        add("client_ip", name, bytes);
    }

    for (name, max_bytes, agents) in [
        (
            "browsers",
            63,
            &[UA_CHROME, UA_IPHONE, UA_CHROME, UA_OUTLOOK][..],
        ),
        (
            "proxies-and-bots",
            40,
            &[UA_GMAIL_PROXY, UA_GOOGLEBOT, UA_CURL, UA_GMAIL_PROXY],
        ),
        (
            "short-cut",
            9,
            &[UA_IPHONE, "Mozilla/5.0 (é€😀)", UA_IPHONE],
        ),
    ] {
        let mut bytes = vec![max_bytes - 1];
        bytes.extend_from_slice(agents.join("\n").as_bytes());
        add("ua_cache", name, bytes);
    }

    // Three events in the layout `event` reads: open, click, download.
    let mut description = Vec::new();
    let text = |bytes: &mut Vec<u8>, text: &str| {
        bytes.push(text.len() as u8);
        bytes.extend_from_slice(text.as_bytes());
    };
    for (n, tenant) in [(0u8, "acme"), (1, "globex"), (2, "initech")] {
        // Recipient, target, first; kind n, DNT, HEAD.
        description.extend_from_slice(&[0b1000_0011, n << 5 | 0b101]);
        description.extend_from_slice(&u64::from(n).to_be_bytes());
        description.extend_from_slice(&0x0123_4567_89ab_cdef_u64.to_be_bytes());
        description.extend_from_slice(&(1_795_435_650_917 + u64::from(n)).to_be_bytes());
        for field in [tenant, "spring", "msg-42", "r-9"] {
            text(&mut description, field);
        }
        description.extend_from_slice(&u32::from(n).to_be_bytes());
        text(&mut description, "https://shop.example/spring");
        // Human, proxy_open:gmail, prefetch:gmail.
        description.push(n);
        if n > 0 {
            text(&mut description, "gmail");
        }
        text(&mut description, "no_signal");
        text(&mut description, "edge-1");
    }
    let mut writer = SegmentWriter::new();
    let mut input = Input(&description);
    while !input.0.is_empty() {
        writer
            .push(&event(&mut input))
            .expect("seed events serialize");
    }
    let stored = writer.finish();
    // The same records as older edges stored them.
    let plain = crate::record::to_plain(&stored).expect("a written segment decodes");
    add("segment_decode", "segment", stored);
    add("segment_decode", "segment-plain", plain);
    add("segment_decode", "events", description);
    seeds
}

const UA_CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
const UA_IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148";
const UA_OUTLOOK: &str =
    "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17328; Pro)";
const UA_GMAIL_PROXY: &str =
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)";
const UA_GOOGLEBOT: &str =
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
const UA_CURL: &str = "curl/8.5.0";

/// `(seed name, claims, clock index into the times)`: every kind, with and without
/// the optional fields.
fn token_seed_claims() -> Vec<(&'static str, Claims, u8)> {
    let claims = |kind: Kind| Claims {
        target: kind
            .has_target()
            .then(|| "https://shop.example/spring?utm=mail#top".into()),
        ..Claims::new(kind, "acme", "spring", "msg-42")
    };
    let full = |kind: Kind| Claims {
        recipient: Some("r-9".into()),
        link: 3,
        expires_at: Some(2_000_000_000),
        sent_at: Some(1_795_000_000),
        ..claims(kind)
    };
    vec![
        ("open", claims(Kind::Open), 0),
        ("click", full(Kind::Click), 1),
        ("download", full(Kind::Download), 1),
        ("unsubscribe", full(Kind::Unsubscribe), 0),
        ("sender", claims(Kind::Sender), 0),
        // Verified at the end of time: refused as expired.
        ("click-expired", full(Kind::Click), 2),
    ]
}

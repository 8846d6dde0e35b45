//! The routing key: a short keyed hash of tenant and message that every URL of one
//! message carries in front of its token (`/c/{routing key}/{token}`), so a load
//! balancer or CDN that cannot read tokens can still send every hit of a message
//! (its opens, the clicks of all its links, downloads, unsubscribes) to one edge by
//! hashing that path segment. First/duplicate flags and click bursts are kept per
//! edge, so they are right fleet-wide only under that affinity.
//!
//! The key is [`ROUTING_KEY_LEN`] base64url characters: the first 6 bytes of
//! HMAC-SHA256, under the key that signs the token, of a domain-separation label and
//! the length-prefixed tenant and message. It reveals neither (without the key), and
//! the edge checks it against the token's own claims, so an edited routing key is
//! refused like an edited token. URLs without one (minted before it existed) keep
//! working; a balancer hashes their whole path instead. Layout in `docs/tokens.md`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::Mac;

use super::Key;

/// Characters of a routing key (6 bytes in base64url: no padding, no partial byte).
pub const ROUTING_KEY_LEN: usize = 8;
const ROUTING_KEY_BYTES: usize = 6;

/// Token MACs start with the version byte (1); this label can never be one, so a
/// routing key is never a token tag and the other way round.
const LABEL: &[u8] = b"trackedge routing key v1\0";

/// The routing key of every URL of `message` of `tenant`, under `key`.
pub fn routing_key(key: &Key, tenant: &str, message: &str) -> String {
    URL_SAFE_NO_PAD.encode(raw(key, tenant, message))
}

fn raw(key: &Key, tenant: &str, message: &str) -> [u8; ROUTING_KEY_BYTES] {
    let mut mac = key.mac.clone();
    mac.update(LABEL);
    for part in [tenant, message] {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part.as_bytes());
    }
    let digest = mac.finalize().into_bytes();
    let mut out = [0u8; ROUTING_KEY_BYTES];
    out.copy_from_slice(&digest[..ROUTING_KEY_BYTES]);
    out
}

/// Whether `text` is the routing key of `tenant`'s `message` under `key`, compared
/// in constant time (a timing oracle would let a client find keys byte by byte).
pub(super) fn matches(key: &Key, text: &str, tenant: &str, message: &str) -> bool {
    if text.len() != ROUTING_KEY_LEN {
        return false;
    }
    let mut given = [0u8; ROUTING_KEY_BYTES];
    if URL_SAFE_NO_PAD.decode_slice(text, &mut given) != Ok(ROUTING_KEY_BYTES) {
        return false;
    }
    let expected = raw(key, tenant, message);
    given
        .iter()
        .zip(expected.iter())
        .fold(0u8, |diff, (a, b)| diff | (a ^ b))
        == 0
}

/// Splits a URL's token segment into its routing key (if it has one) and the token:
/// `rk/token` or `token`. `None` for anything else (empty parts, more slashes).
pub fn split(segment: &str) -> Option<(Option<&str>, &str)> {
    match segment.split_once('/') {
        None if !segment.is_empty() => Some((None, segment)),
        Some((routing, token))
            if !routing.is_empty() && !token.is_empty() && !token.contains('/') =>
        {
            Some((Some(routing), token))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        Key::new(1, b"0123456789abcdef0123456789abcdef")
    }

    #[test]
    fn one_message_one_key_and_messages_spread() {
        let a = routing_key(&key(), "acme", "m-1");
        assert_eq!(a.len(), ROUTING_KEY_LEN);
        assert!(a
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(a, routing_key(&key(), "acme", "m-1"), "stable");
        assert_ne!(a, routing_key(&key(), "acme", "m-2"));
        assert_ne!(a, routing_key(&key(), "acm", "em-1"), "parts are delimited");
        assert_ne!(a, routing_key(&Key::new(1, b"another key"), "acme", "m-1"));
        assert!(matches(&key(), &a, "acme", "m-1"));
        assert!(!matches(&key(), &a, "acme", "m-2"));
        assert!(!matches(&key(), &a[..7], "acme", "m-1"));
        assert!(!matches(&key(), "!!!!!!!!", "acme", "m-1"));
    }

    #[test]
    fn segments_split_into_routing_key_and_token() {
        assert_eq!(split("tok"), Some((None, "tok")));
        assert_eq!(split("rk/tok"), Some((Some("rk"), "tok")));
        for bad in ["", "/tok", "rk/", "a/b/c", "/"] {
            assert_eq!(split(bad), None, "{bad:?}");
        }
    }
}

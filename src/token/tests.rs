//! Unit tests of the token format: round trips, tampering, limits, rotation.
use super::*;

fn ring() -> KeyRing {
    KeyRing::new(vec![Key::new(7, b"0123456789abcdef0123456789abcdef")]).unwrap()
}

fn click() -> Claims {
    Claims {
        kind: Kind::Click,
        tenant: "acme".into(),
        campaign: "spring".into(),
        message: "m-1".into(),
        recipient: Some("r-9".into()),
        link: 3,
        target: Some("https://example.com/a?b=c#d".into()),
        expires_at: Some(2_000_000_000),
        sent_at: Some(1_700_000_000),
    }
}

#[test]
fn sign_then_verify_round_trips_every_field() {
    let token = sign(ring().signing_key(), &click()).unwrap();
    let claims = verify(&ring(), &token, Kind::Click, 1_800_000_000, 4096).unwrap();
    assert_eq!(claims, click());
}

#[test]
fn tokens_on_either_side_of_the_stack_buffer_round_trip_and_refuse_tampering() {
    for target_len in [10, 300, STACK_TOKEN_BYTES - 60, STACK_TOKEN_BYTES, 2000] {
        let claims = Claims {
            target: Some(format!("https://example.com/{}", "p".repeat(target_len))),
            ..click()
        };
        let token = sign(ring().signing_key(), &claims).unwrap();
        let verified = verify(&ring(), &token, Kind::Click, 1_800_000_000, 8192);
        assert_eq!(verified, Ok(claims), "target of {target_len}");
        let mut edited = token.into_bytes();
        let last = edited.len() - 1;
        edited[last] = if edited[last] == b'A' { b'B' } else { b'A' };
        let edited = String::from_utf8(edited).unwrap();
        assert!(verify(&ring(), &edited, Kind::Click, 1_800_000_000, 8192).is_err());
    }
}

#[test]
fn minimal_open_token_is_compact() {
    let claims = Claims {
        kind: Kind::Open,
        tenant: "t".into(),
        campaign: "c".into(),
        message: "m".into(),
        recipient: None,
        link: 0,
        target: None,
        expires_at: None,
        sent_at: None,
    };
    let token = sign(ring().signing_key(), &claims).unwrap();
    assert!(token.len() < 40, "{token}");
    assert_eq!(verify(&ring(), &token, Kind::Open, 0, 4096), Ok(claims));
}

#[test]
fn every_flipped_bit_is_refused() {
    let token = sign(ring().signing_key(), &click()).unwrap();
    let bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
    for index in 0..bytes.len() {
        for bit in 0..8 {
            let mut tampered = bytes.clone();
            tampered[index] ^= 1 << bit;
            let tampered = URL_SAFE_NO_PAD.encode(tampered);
            assert!(verify(&ring(), &tampered, Kind::Click, 0, 4096).is_err());
        }
    }
}

#[test]
fn truncated_tokens_are_refused() {
    let token = sign(ring().signing_key(), &click()).unwrap();
    for len in 0..token.len() {
        assert!(verify(&ring(), &token[..len], Kind::Click, 0, 4096).is_err());
    }
}

#[test]
fn refusals_name_their_reason() {
    let token = sign(ring().signing_key(), &click()).unwrap();
    let other = KeyRing::new(vec![Key::new(8, b"another secret of 32 bytes......")]).unwrap();
    let same_id_other_secret =
        KeyRing::new(vec![Key::new(7, b"another secret of 32 bytes......")]).unwrap();
    let check = |ring: &KeyRing, token: &str, kind, now, max| {
        verify(ring, token, kind, now, max).unwrap_err()
    };
    assert_eq!(
        check(&ring(), &token, Kind::Click, 0, 10),
        TokenError::TooLong
    );
    assert_eq!(
        check(&ring(), "!!!!", Kind::Click, 0, 99),
        TokenError::Malformed
    );
    assert_eq!(
        check(&other, &token, Kind::Click, 0, 4096),
        TokenError::UnknownKey
    );
    assert_eq!(
        check(&same_id_other_secret, &token, Kind::Click, 0, 4096),
        TokenError::BadSignature
    );
    assert_eq!(
        check(&ring(), &token, Kind::Open, 0, 4096),
        TokenError::WrongKind
    );
    assert_eq!(
        check(&ring(), &token, Kind::Click, 2_000_000_001, 4096),
        TokenError::Expired
    );
    let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
    bytes[0] = 2;
    assert_eq!(
        check(
            &ring(),
            &URL_SAFE_NO_PAD.encode(bytes),
            Kind::Click,
            0,
            4096
        ),
        TokenError::UnsupportedVersion
    );
}

#[test]
fn ids_that_could_not_be_signed_are_refused_even_under_a_valid_tag() {
    // The payload of the fuzz input (token_verify, crash-b3d6f4e5) that verified
    // with a control character in its tenant, then could not be signed again.
    let payload = b"\x01\x01\x02\x0f\x04acm\x1a\x06spring\x06msg-42\x03\x80\xa8\xd6\xb9\x07\
        \xc0\x8d\xf6\xd7\x06\x03r-9\x28https://shop.example/spring?utm=mail#t/p";
    let key = Key::new(1, b"0123456789abcdef0123456789abcdef");
    let ring = KeyRing::new(vec![key.clone()]).unwrap();
    let token = seal(&key, payload.to_vec());
    assert_eq!(
        verify(&ring, &token, Kind::Click, 0, 4096),
        Err(TokenError::BadPayload)
    );
    // Each id, empty, too long or with a control character, under a valid tag.
    let long = "x".repeat(MAX_ID_BYTES + 1);
    for (index, bad) in ["", long.as_str(), "a\0b"].into_iter().enumerate() {
        for field in 0..4 {
            let mut ids = ["acme", "spring", "m-1", "r-9"];
            ids[field] = bad;
            let mut payload = vec![VERSION, 1, Kind::Open.to_byte(), FLAG_RECIPIENT];
            for id in &ids[..3] {
                put_bytes(&mut payload, id.as_bytes());
            }
            put_varint(&mut payload, 0);
            put_bytes(&mut payload, ids[3].as_bytes());
            let token = seal(&key, payload);
            assert_eq!(
                verify(&ring, &token, Kind::Open, 0, 4096),
                Err(TokenError::BadPayload),
                "bad id {index} as field {field}"
            );
        }
    }
}

#[test]
fn rotation_accepts_every_configured_key() {
    let old = Key::new(1, b"old secret old secret old secret");
    let new = Key::new(2, b"new secret new secret new secret");
    let token = sign(&old, &click()).unwrap();
    let rotated = KeyRing::new(vec![new, old]).unwrap();
    assert!(verify(&rotated, &token, Kind::Click, 0, 4096).is_ok());
    assert_eq!(rotated.signing_key().id(), 2);
}

#[test]
fn duplicate_key_ids_are_refused() {
    assert!(KeyRing::new(vec![Key::new(1, b"a"), Key::new(1, b"b")]).is_none());
    assert!(KeyRing::new(vec![]).is_none());
}

#[test]
fn only_http_targets_without_control_characters_can_be_signed() {
    for target in [
        "javascript:alert(1)",
        "data:text/html,hi",
        "//evil.example",
        "ftp://example.com/x",
        "https://example.com/\r\nSet-Cookie: x=1",
        "https://example.com/a b",
        "https://example.com/\0",
        "https://exämple.com/",
        "https://",
        "https://@/",
        "https://:80/",
        "https://evil.example\\@good.example/",
    ] {
        let mut claims = click();
        claims.target = Some(target.into());
        assert!(
            sign(ring().signing_key(), &claims).is_err(),
            "{target:?} was signed"
        );
    }
    for target in ["HTTPS://Example.com", "http://127.0.0.1:8080/x?y=%20"] {
        assert_eq!(check_target(target), Ok(()), "{target}");
    }
}

#[test]
fn kinds_and_targets_must_agree() {
    let mut claims = click();
    claims.target = None;
    assert_eq!(
        sign(ring().signing_key(), &claims),
        Err(SignError::MissingTarget("click"))
    );
    let mut claims = click();
    claims.kind = Kind::Open;
    assert_eq!(
        sign(ring().signing_key(), &claims),
        Err(SignError::UnexpectedTarget("open"))
    );
}

#[test]
fn every_url_of_a_message_carries_its_routing_key_and_verifies() {
    let key = ring().signing_key().clone();
    let routing = routing_key(&key, "acme", "m-1");
    let mut open = click();
    open.kind = Kind::Open;
    open.target = None;
    let mut other_link = click();
    other_link.link = 9;
    other_link.target = Some("https://example.com/other".into());
    for claims in [click(), other_link, open] {
        let url = mint_url("https://t.example", &ring(), &claims).unwrap();
        let path = url.strip_prefix("https://t.example").unwrap();
        let segment = path[3..].trim_end_matches(".gif");
        assert_eq!(segment.split('/').next(), Some(routing.as_str()), "{url}");
        assert_eq!(
            verify(&ring(), segment, claims.kind, 0, 4096),
            Ok(claims.clone())
        );
        // A token alone (a URL minted before routing keys) still verifies.
        let token = segment.split('/').nth(1).unwrap();
        assert_eq!(verify(&ring(), token, claims.kind, 0, 4096), Ok(claims));
    }
    let mut other_message = click();
    other_message.message = "m-2".into();
    let url = mint_url("https://t.example", &ring(), &other_message).unwrap();
    assert!(!url.contains(&routing), "{url}");
}

#[test]
fn an_edited_routing_key_is_refused() {
    let token = sign(ring().signing_key(), &click()).unwrap();
    let wrong = routing_key(ring().signing_key(), "acme", "m-2");
    for segment in [
        format!("{wrong}/{token}"),
        format!("AAAAAAAA/{token}"),
        format!("short/{token}"),
    ] {
        assert_eq!(
            verify(&ring(), &segment, Kind::Click, 0, 4096),
            Err(TokenError::BadRoutingKey),
            "{segment}"
        );
    }
    for segment in [
        format!("/{token}"),
        format!("a/b/{token}"),
        format!("{token}/"),
    ] {
        assert_eq!(
            verify(&ring(), &segment, Kind::Click, 0, 4096),
            Err(TokenError::Malformed),
            "{segment}"
        );
    }
}

#[test]
fn mint_url_uses_the_route_of_the_kind() {
    let url = mint_url("https://t.example/", &ring(), &click()).unwrap();
    assert!(url.starts_with("https://t.example/c/"), "{url}");
    let mut open = click();
    open.kind = Kind::Open;
    open.target = None;
    let url = mint_url("https://t.example", &ring(), &open).unwrap();
    assert!(url.starts_with("https://t.example/o/") && url.ends_with(".gif"));
}

#[test]
fn varints_round_trip_and_refuse_overlong() {
    for value in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
        let mut out = Vec::new();
        put_varint(&mut out, value);
        assert_eq!(Reader(&out).varint(), Some(value));
    }
    assert_eq!(Reader(&[0xff; 11]).varint(), None);
    assert_eq!(Reader(&[0x80]).varint(), None);
}

//! Signed tracking tokens: the stateless, compact, versioned format every URL carries.
//!
//! A token says which open/click/download/unsubscribe it stands for (tenant, campaign,
//! message, optional recipient, link index, click target, optional expiry and send
//! time) and carries an HMAC-SHA256 tag, truncated to 128 bits, under a key named by a
//! key-id byte so several keys verify at once during a rotation. The layout is in
//! `docs/tokens.md`. Verification checks the tag (in constant time) before it parses
//! a single field, so unsigned bytes never reach the field parser. URLs carry a
//! [`routing`] key in front of the token so balancers can keep a message on one edge.
//!
//! Input: the path segment of a request (hostile) or the sender's claims (trusted).
//! Output: [`Claims`] or a [`TokenError`] whose `as_str` is the metric label.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

mod routing;
pub use routing::{routing_key, split as routing_split, ROUTING_KEY_LEN};

/// The only version this build writes and reads.
pub const VERSION: u8 = 1;
/// Tag bytes kept from the HMAC-SHA256 output.
pub const TAG_LEN: usize = 16;
/// The longest click/download target that can be signed.
pub const MAX_TARGET_BYTES: usize = 2048;
/// The longest tenant, campaign, message or recipient id.
pub const MAX_ID_BYTES: usize = 255;

const HEADER_LEN: usize = 4;
/// Decoded tokens up to this size stay on the stack: every hit decodes one, and a
/// typical token is about 100 bytes (longer ones, with long ids or targets, go to
/// the heap).
const STACK_TOKEN_BYTES: usize = 512;
const FLAG_EXPIRES: u8 = 1;
const FLAG_SENT_AT: u8 = 1 << 1;
const FLAG_RECIPIENT: u8 = 1 << 2;
const FLAG_TARGET: u8 = 1 << 3;
const KNOWN_FLAGS: u8 = FLAG_EXPIRES | FLAG_SENT_AT | FLAG_RECIPIENT | FLAG_TARGET;

type HmacSha256 = Hmac<Sha256>;

/// What a tracking URL records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Open,
    Click,
    Download,
    Unsubscribe,
    /// Marks the sender's own browser (self-open detection); never recorded.
    Sender,
    /// A link no person clicks (put in a mail invisibly): whatever follows it is a
    /// machine. Served under the click path so a scanner cannot tell it apart.
    Trap,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Open,
        Kind::Click,
        Kind::Download,
        Kind::Unsubscribe,
        Kind::Sender,
        Kind::Trap,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Open => "open",
            Kind::Click => "click",
            Kind::Download => "download",
            Kind::Unsubscribe => "unsubscribe",
            Kind::Sender => "sender",
            Kind::Trap => "trap",
        }
    }

    /// The position in [`Kind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.as_str() == name)
    }

    fn to_byte(self) -> u8 {
        match self {
            Kind::Open => 1,
            Kind::Click => 2,
            Kind::Download => 3,
            Kind::Unsubscribe => 4,
            Kind::Sender => 5,
            Kind::Trap => 6,
        }
    }

    fn from_byte(byte: u8) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.to_byte() == byte)
    }

    /// Clicks and downloads redirect, so they must sign a target; the others must not.
    pub fn has_target(self) -> bool {
        matches!(self, Kind::Click | Kind::Download)
    }

    /// The URL path for a token of this kind.
    pub fn path(self, token: &str) -> String {
        match self {
            Kind::Open => format!("/o/{token}.gif"),
            Kind::Click => format!("/c/{token}"),
            Kind::Download => format!("/f/{token}"),
            Kind::Unsubscribe => format!("/u/{token}"),
            Kind::Sender => format!("/s/{token}"),
            Kind::Trap => format!("/c/{token}"),
        }
    }
}

/// Everything a token signs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub kind: Kind,
    pub tenant: String,
    pub campaign: String,
    /// The recipient-level message id (one per recipient per send).
    pub message: String,
    /// A stable recipient key across sends, for suppression and erasure.
    pub recipient: Option<String>,
    /// Which link of the message (0 for opens and unsubscribes).
    pub link: u32,
    /// The redirect target of clicks and downloads.
    pub target: Option<String>,
    /// Unix seconds after which the token is refused.
    pub expires_at: Option<u64>,
    /// Unix seconds when the message was sent.
    pub sent_at: Option<u64>,
}

impl Claims {
    /// Claims of `kind` for one message, with no recipient, link 0, no target, no
    /// expiry and no send time; set the others with struct update syntax.
    pub fn new(
        kind: Kind,
        tenant: impl Into<String>,
        campaign: impl Into<String>,
        message: impl Into<String>,
    ) -> Claims {
        Claims {
            kind,
            tenant: tenant.into(),
            campaign: campaign.into(),
            message: message.into(),
            recipient: None,
            link: 0,
            target: None,
            expires_at: None,
            sent_at: None,
        }
    }
}

/// One HMAC key, with its keyed state computed once so each use only clones it.
#[derive(Clone)]
pub struct Key {
    id: u8,
    mac: HmacSha256,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Key {
    pub fn new(id: u8, secret: &[u8]) -> Key {
        Key {
            id,
            mac: HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length"),
        }
    }

    pub fn id(&self) -> u8 {
        self.id
    }
}

/// The keys in force: the first one signs, all of them verify.
#[derive(Debug, Clone)]
pub struct KeyRing {
    keys: Vec<Key>,
}

impl KeyRing {
    /// `None` when `keys` is empty or names one id twice.
    pub fn new(keys: Vec<Key>) -> Option<KeyRing> {
        let mut seen = [false; 256];
        for key in &keys {
            if std::mem::replace(&mut seen[usize::from(key.id)], true) {
                return None;
            }
        }
        (!keys.is_empty()).then_some(KeyRing { keys })
    }

    pub fn signing_key(&self) -> &Key {
        &self.keys[0]
    }

    pub fn ids(&self) -> impl Iterator<Item = u8> + '_ {
        self.keys.iter().map(|key| key.id)
    }

    fn get(&self, id: u8) -> Option<&Key> {
        self.keys.iter().find(|key| key.id == id)
    }
}

/// Why a token was refused. `as_str` is the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is longer than the configured maximum")]
    TooLong,
    #[error("token is not base64url or too short")]
    Malformed,
    #[error("token version is not supported")]
    UnsupportedVersion,
    #[error("token key id is not configured")]
    UnknownKey,
    #[error("token signature does not match")]
    BadSignature,
    #[error("token payload is inconsistent")]
    BadPayload,
    #[error("token is for another kind of URL")]
    WrongKind,
    #[error("token has expired")]
    Expired,
    #[error("token target is not a safe http(s) URL")]
    BadTarget,
    #[error("routing key in the URL is not the token's")]
    BadRoutingKey,
}

impl TokenError {
    pub const ALL: [TokenError; 10] = [
        TokenError::TooLong,
        TokenError::Malformed,
        TokenError::UnsupportedVersion,
        TokenError::UnknownKey,
        TokenError::BadSignature,
        TokenError::BadPayload,
        TokenError::WrongKind,
        TokenError::Expired,
        TokenError::BadTarget,
        TokenError::BadRoutingKey,
    ];

    /// The position in [`TokenError::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TokenError::TooLong => "too_long",
            TokenError::Malformed => "malformed",
            TokenError::UnsupportedVersion => "unsupported_version",
            TokenError::UnknownKey => "unknown_key",
            TokenError::BadSignature => "bad_signature",
            TokenError::BadPayload => "bad_payload",
            TokenError::WrongKind => "wrong_kind",
            TokenError::Expired => "expired",
            TokenError::BadTarget => "bad_target",
            TokenError::BadRoutingKey => "bad_routing_key",
        }
    }
}

/// Why claims cannot be signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("{field} must be 1 to {MAX_ID_BYTES} bytes without control characters")]
    BadId { field: &'static str },
    #[error("{0} needs a target URL")]
    MissingTarget(&'static str),
    #[error("{0} cannot carry a target URL")]
    UnexpectedTarget(&'static str),
    #[error("target refused: {0}")]
    Target(#[from] TargetError),
}

/// Why a URL cannot be a redirect target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("URL is longer than {MAX_TARGET_BYTES} bytes")]
    TooLong,
    #[error("URL must start with http:// or https://")]
    NotHttp,
    #[error(
        "URL has a space, control character (CR/LF, NUL...) or non-ASCII byte; percent-encode it"
    )]
    BadCharacter,
    #[error("URL has no host")]
    NoHost,
}

/// The one rule for redirect targets, applied when signing and again when serving.
pub fn check_target(url: &str) -> Result<(), TargetError> {
    if url.len() > MAX_TARGET_BYTES {
        return Err(TargetError::TooLong);
    }
    if !url.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TargetError::BadCharacter);
    }
    let rest = strip_prefix_ignore_case(url, "https://")
        .or_else(|| strip_prefix_ignore_case(url, "http://"))
        .ok_or(TargetError::NotHttp)?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    if host.is_empty() || host.starts_with(':') || authority.contains('\\') {
        return Err(TargetError::NoHost);
    }
    Ok(())
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

fn check_id(field: &'static str, value: &str) -> Result<(), SignError> {
    if value.is_empty() || value.len() > MAX_ID_BYTES || value.chars().any(char::is_control) {
        return Err(SignError::BadId { field });
    }
    Ok(())
}

/// Signs `claims` with `key` into a base64url token.
pub fn sign(key: &Key, claims: &Claims) -> Result<String, SignError> {
    check_id("tenant", &claims.tenant)?;
    check_id("campaign", &claims.campaign)?;
    check_id("message", &claims.message)?;
    if let Some(recipient) = &claims.recipient {
        check_id("recipient", recipient)?;
    }
    match (&claims.target, claims.kind.has_target()) {
        (Some(target), true) => check_target(target)?,
        (None, true) => return Err(SignError::MissingTarget(claims.kind.as_str())),
        (Some(_), false) => return Err(SignError::UnexpectedTarget(claims.kind.as_str())),
        (None, false) => {}
    }

    let mut flags = 0;
    for (present, flag) in [
        (claims.expires_at.is_some(), FLAG_EXPIRES),
        (claims.sent_at.is_some(), FLAG_SENT_AT),
        (claims.recipient.is_some(), FLAG_RECIPIENT),
        (claims.target.is_some(), FLAG_TARGET),
    ] {
        if present {
            flags |= flag;
        }
    }
    let mut bytes = Vec::with_capacity(64 + claims.target.as_ref().map_or(0, String::len));
    bytes.extend_from_slice(&[VERSION, key.id, claims.kind.to_byte(), flags]);
    for id in [&claims.tenant, &claims.campaign, &claims.message] {
        put_bytes(&mut bytes, id.as_bytes());
    }
    put_varint(&mut bytes, u64::from(claims.link));
    for value in [claims.expires_at, claims.sent_at].into_iter().flatten() {
        put_varint(&mut bytes, value);
    }
    for text in [&claims.recipient, &claims.target].into_iter().flatten() {
        put_bytes(&mut bytes, text.as_bytes());
    }
    Ok(seal(key, bytes))
}

/// Appends the tag over `payload` and encodes the token. Crate-visible so the fuzz
/// checks can sign arbitrary payloads: without a valid tag no input gets past the
/// signature check to the field parser.
pub(crate) fn seal(key: &Key, mut payload: Vec<u8>) -> String {
    let mut mac = key.mac.clone();
    mac.update(&payload);
    let tag = mac.finalize().into_bytes();
    payload.extend_from_slice(&tag[..TAG_LEN]);
    URL_SAFE_NO_PAD.encode(payload)
}

/// Signs with the ring's signing key and returns the full URL under `base_url`,
/// with the message's routing key in front of the token (`/c/{routing key}/{token}`).
pub fn mint_url(base_url: &str, keys: &KeyRing, claims: &Claims) -> Result<String, SignError> {
    let key = keys.signing_key();
    let token = sign(key, claims)?;
    let routed = format!(
        "{}/{token}",
        routing_key(key, &claims.tenant, &claims.message)
    );
    Ok(format!(
        "{}{}",
        base_url.trim_end_matches('/'),
        claims.kind.path(&routed)
    ))
}

/// Checks the token segment of a request (`token`, or `routing key/token`) and
/// returns what the token signs.
///
/// `now` is unix seconds; `max_len` bounds the text before any decoding.
pub fn verify(
    keys: &KeyRing,
    segment: &str,
    expected: Kind,
    now: u64,
    max_len: usize,
) -> Result<Claims, TokenError> {
    verify_any(keys, segment, &[expected], now, max_len)
}

/// [`verify`] for a path that serves several kinds (the click path serves traps).
pub fn verify_any(
    keys: &KeyRing,
    segment: &str,
    expected: &[Kind],
    now: u64,
    max_len: usize,
) -> Result<Claims, TokenError> {
    if segment.len() > max_len {
        return Err(TokenError::TooLong);
    }
    let (routing, token) = routing::split(segment).ok_or(TokenError::Malformed)?;
    let mut on_stack = [0u8; STACK_TOKEN_BYTES];
    let on_heap: Vec<u8>;
    let bytes: &[u8] = if token.len().div_ceil(4) * 3 <= STACK_TOKEN_BYTES {
        let len = URL_SAFE_NO_PAD
            .decode_slice(token, &mut on_stack)
            .map_err(|_| TokenError::Malformed)?;
        &on_stack[..len]
    } else {
        on_heap = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| TokenError::Malformed)?;
        &on_heap
    };
    if bytes.len() < HEADER_LEN + TAG_LEN {
        return Err(TokenError::Malformed);
    }
    if bytes[0] != VERSION {
        return Err(TokenError::UnsupportedVersion);
    }
    let key = keys.get(bytes[1]).ok_or(TokenError::UnknownKey)?;
    let (signed, tag) = bytes.split_at(bytes.len() - TAG_LEN);
    let mut mac = key.mac.clone();
    mac.update(signed);
    // Constant time: the comparison does not stop at the first differing byte.
    mac.verify_truncated_left(tag)
        .map_err(|_| TokenError::BadSignature)?;

    let claims = parse_signed(signed).ok_or(TokenError::BadPayload)?;
    if routing.is_some_and(|text| !routing::matches(key, text, &claims.tenant, &claims.message)) {
        return Err(TokenError::BadRoutingKey);
    }
    if !expected.contains(&claims.kind) {
        return Err(TokenError::WrongKind);
    }
    if claims.expires_at.is_some_and(|at| now > at) {
        return Err(TokenError::Expired);
    }
    if let Some(target) = &claims.target {
        check_target(target).map_err(|_| TokenError::BadTarget)?;
    }
    Ok(claims)
}

fn parse_signed(signed: &[u8]) -> Option<Claims> {
    let kind = Kind::from_byte(signed[2])?;
    let flags = signed[3];
    if flags & !KNOWN_FLAGS != 0 || (flags & FLAG_TARGET != 0) != kind.has_target() {
        return None;
    }
    let mut reader = Reader(&signed[HEADER_LEN..]);
    let tenant = reader.text()?;
    let campaign = reader.text()?;
    let message = reader.text()?;
    let link = u32::try_from(reader.varint()?).ok()?;
    let expires_at = (flags & FLAG_EXPIRES != 0)
        .then(|| reader.varint())
        .map_or(Some(None), |v| v.map(Some))?;
    let sent_at = (flags & FLAG_SENT_AT != 0)
        .then(|| reader.varint())
        .map_or(Some(None), |v| v.map(Some))?;
    let recipient = (flags & FLAG_RECIPIENT != 0)
        .then(|| reader.text())
        .map_or(Some(None), |v| v.map(Some))?;
    let target = (flags & FLAG_TARGET != 0)
        .then(|| reader.text())
        .map_or(Some(None), |v| v.map(Some))?;
    if !reader.0.is_empty() {
        return None;
    }
    // The signing rule again, as for targets: what verifies can be signed again, and
    // no id brings a control character (NUL separates suppression keys) or more than
    // the documented length into events, cookies and keys.
    let ids = [
        ("tenant", &tenant),
        ("campaign", &campaign),
        ("message", &message),
    ];
    for (field, id) in ids
        .into_iter()
        .chain(recipient.as_ref().map(|r| ("recipient", r)))
    {
        check_id(field, id).ok()?;
    }
    Some(Claims {
        kind,
        tenant,
        campaign,
        message,
        recipient,
        link,
        target,
        expires_at,
        sent_at,
    })
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for (index, &byte) in self.0.iter().enumerate().take(10) {
            value |= u64::from(byte & 0x7f).checked_shl(7 * index as u32)?;
            if byte & 0x80 == 0 {
                self.0 = &self.0[index + 1..];
                return Some(value);
            }
        }
        None
    }

    fn text(&mut self) -> Option<String> {
        let len = usize::try_from(self.varint()?).ok()?;
        if len > MAX_TARGET_BYTES || len > self.0.len() {
            return None;
        }
        let (text, rest) = self.0.split_at(len);
        self.0 = rest;
        String::from_utf8(text.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests;

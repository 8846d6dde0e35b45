//! Signed batches for the `http` sink, in the Standard Webhooks form, so a receiver
//! can tell a batch came from the edge and was not changed on the way.
//!
//! Each attempt carries `webhook-id` (the batch id, as in `Idempotency-Key`),
//! `webhook-timestamp` (unix seconds of this attempt: a retry is signed afresh, so
//! receivers can refuse old timestamps) and `webhook-signature`: `v1,<base64 of
//! HMAC-SHA256(secret, "{id}.{timestamp}." + body)>`, where body is the request body
//! exactly as sent (gzip bytes when gzip is on, so receivers verify before they
//! decompress anything).
//!
//! Secrets come from `forward.http.signing_secret_file`: one `whsec_<base64>` secret
//! a line (24 to 64 random bytes), `#` comments and blank lines ignored, at most
//! [`MAX_SECRETS`]. Every secret in the file signs every batch, in file order, one
//! space-separated `v1,` signature each: that is how secrets rotate without a gap
//! (add the new secret, move the receivers to it, then remove the old one). The file
//! is re-read when it changes (checked before each attempt); a broken file keeps the
//! secrets in force, logs a warning and counts an error.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use metrics::Counter;
use sha2::Sha256;

use crate::metrics as m;
use crate::reload::{FileStamp, LastSeen};

/// Signatures one batch carries at most; keeps the header small.
pub const MAX_SECRETS: usize = 4;
const MIN_SECRET_BYTES: usize = 24;
const MAX_SECRET_BYTES: usize = 64;
const MAX_FILE_BYTES: u64 = 64 * 1024;
const PREFIX: &str = "whsec_";

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("config key `forward.http.signing_secret_file`: cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config key `forward.http.signing_secret_file`: {path} is larger than 64 KiB")]
    TooLarge { path: PathBuf },
    #[error("config key `forward.http.signing_secret_file`: {path} line {line}: {message}")]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("config key `forward.http.signing_secret_file`: {path} holds no secret")]
    Empty { path: PathBuf },
    #[error(
        "config key `forward.http.signing_secret_file`: {path} holds more than {MAX_SECRETS} secrets"
    )]
    TooMany { path: PathBuf },
}

/// The secrets in force, keyed once.
struct Secrets(Vec<Hmac<Sha256>>);

/// Parses the secret file's text into HMAC keys.
fn parse(path: &Path, text: &str) -> Result<Secrets, SigningError> {
    let mut keys = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fail = |message: &str| SigningError::Line {
            path: path.to_owned(),
            line: index + 1,
            message: message.to_owned(),
        };
        let encoded = line
            .strip_prefix(PREFIX)
            .ok_or_else(|| fail("expected a secret of the form whsec_<base64>"))?;
        let secret = STANDARD
            .decode(encoded)
            .map_err(|_| fail("the part after whsec_ is not base64"))?;
        if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&secret.len()) {
            return Err(fail(&format!(
                "the secret is {} bytes; Standard Webhooks asks for {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES}",
                secret.len()
            )));
        }
        if keys.len() == MAX_SECRETS {
            return Err(SigningError::TooMany {
                path: path.to_owned(),
            });
        }
        keys.push(Hmac::<Sha256>::new_from_slice(&secret).expect("HMAC takes keys of any length"));
    }
    if keys.is_empty() {
        return Err(SigningError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(Secrets(keys))
}

fn read(path: &Path) -> Result<Secrets, SigningError> {
    let read_err = |source| SigningError::Read {
        path: path.to_owned(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read_err)?.len();
    if len > MAX_FILE_BYTES {
        return Err(SigningError::TooLarge {
            path: path.to_owned(),
        });
    }
    parse(path, &std::fs::read_to_string(path).map_err(read_err)?)
}

/// One attempt's signature of `body` under `key`: the base64 HMAC-SHA256 of
/// `"{id}.{timestamp}." + body`.
pub fn signature(key: &Hmac<Sha256>, id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = key.clone();
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    STANDARD.encode(mac.finalize().into_bytes())
}

/// The secrets of one sink, re-read when their file changes.
pub struct Signer {
    path: PathBuf,
    secrets: ArcSwap<Secrets>,
    last_seen: LastSeen<Option<FileStamp>>,
    reloaded: Counter,
    reload_failed: Counter,
}

impl Signer {
    /// Reads the file; an error stops the start (a sink that should sign never sends
    /// unsigned batches).
    pub fn open(path: &Path) -> Result<Signer, SigningError> {
        let stamp = FileStamp::of(path);
        let secrets = read(path)?;
        let reloads = |result: &'static str| metrics::counter!(m::FORWARD_SIGNING_RELOADS_TOTAL, "result" => result);
        let (reloaded, reload_failed) = (reloads("ok"), reloads("error"));
        reloaded.absolute(0);
        reload_failed.absolute(0);
        Ok(Signer {
            path: path.to_owned(),
            secrets: ArcSwap::from_pointee(secrets),
            last_seen: LastSeen::new(stamp),
            reloaded,
            reload_failed,
        })
    }

    /// The `webhook-signature` value for one attempt: a `v1,` signature per secret,
    /// space-separated, after picking up a changed secret file.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        self.reload_if_changed();
        let secrets = self.secrets.load();
        let signatures: Vec<String> = secrets
            .0
            .iter()
            .map(|key| format!("v1,{}", signature(key, id, timestamp, body)))
            .collect();
        signatures.join(" ")
    }

    /// A `stat` per attempt (a batch holds up to a thousand events): cheap enough to
    /// spare the operator a SIGHUP or a restart when rotating.
    fn reload_if_changed(&self) {
        let now = FileStamp::of(&self.path);
        if !self.last_seen.changed(now) || now.is_none() {
            return;
        }
        match read(&self.path) {
            Ok(secrets) => {
                let count = secrets.0.len();
                self.secrets.store(Arc::new(secrets));
                self.reloaded.increment(1);
                tracing::info!(path = %self.path.display(), secrets = count, "batch signing secrets reloaded");
            }
            Err(err) => {
                self.reload_failed.increment(1);
                tracing::warn!(error = %err, "batch signing secrets not reloaded; the previous ones stay in force");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(byte: u8, len: usize) -> String {
        format!("{PREFIX}{}", STANDARD.encode(vec![byte; len]))
    }

    #[test]
    fn the_signature_covers_id_timestamp_and_body() {
        let secrets = parse(Path::new("s"), &secret(7, 32)).unwrap();
        let key = &secrets.0[0];
        let base = signature(key, "edge-1-1-9", 1_700_000_000, b"body");
        assert_eq!(STANDARD.decode(&base).unwrap().len(), 32);
        assert_eq!(base, signature(key, "edge-1-1-9", 1_700_000_000, b"body"));
        assert_ne!(base, signature(key, "edge-1-1-8", 1_700_000_000, b"body"));
        assert_ne!(base, signature(key, "edge-1-1-9", 1_700_000_001, b"body"));
        assert_ne!(base, signature(key, "edge-1-1-9", 1_700_000_000, b"bodY"));
        // The same HMAC computed in one piece over the documented string.
        let mut whole = Hmac::<Sha256>::new_from_slice(&[7; 32]).unwrap();
        whole.update(b"edge-1-1-9.1700000000.body");
        assert_eq!(base, STANDARD.encode(whole.finalize().into_bytes()));
    }

    #[test]
    fn secret_files_are_checked_line_by_line() {
        let path = Path::new("secrets");
        let two = format!("# rotation\n{}\n\n{}\n", secret(1, 32), secret(2, 24));
        assert_eq!(parse(path, &two).unwrap().0.len(), 2);
        for (text, says) in [
            ("", "no secret"),
            ("# only a comment\n", "no secret"),
            (
                "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0\n",
                "line 1: expected a secret",
            ),
            ("whsec_not base64!\n", "line 1: the part after whsec_"),
            (&secret(3, 16), "16 bytes"),
            (&secret(3, 65), "65 bytes"),
            (&format!("{}\n", secret(1, 32)).repeat(5), "more than 4"),
        ] {
            let err = parse(path, text).err().expect(says).to_string();
            assert!(err.contains(says), "{text:?}: {err}");
            assert!(err.contains("forward.http.signing_secret_file"), "{err}");
        }
    }

    #[test]
    fn a_changed_file_is_picked_up_and_a_broken_one_keeps_the_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets");
        std::fs::write(&path, secret(1, 32)).unwrap();
        let signer = Signer::open(&path).unwrap();
        let one = signer.sign("id", 1, b"x");
        assert_eq!(one.split(' ').count(), 1);
        std::fs::write(&path, format!("{}\n{}\n", secret(2, 32), secret(1, 32))).unwrap();
        let two = signer.sign("id", 1, b"x");
        assert_eq!(two.split(' ').nth(1), Some(one.as_str()), "{two}");
        std::fs::write(&path, "whsec_broken\n").unwrap();
        assert_eq!(signer.sign("id", 1, b"x"), two);
    }
}

//! The key file: lines of `id:secret` read into a [`KeyRing`], created with one random
//! key when it is the generated default and missing, and re-read without a restart.
//!
//! The ring in force lives in an [`ArcSwap`] so the request path reads it without a
//! lock; a reload swaps a whole new ring or, when the new file is broken, keeps the old
//! one, logs the error and counts it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::metrics as m;
use crate::reload::{FileStamp, LastSeen, Reloadable};
use crate::token::{Key, KeyRing};

/// Secrets shorter than this are refused: a tag is only as strong as its key.
pub const MIN_SECRET_BYTES: usize = 32;
const MAX_KEY_FILE_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("config key `tokens.key_file`: cannot read key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config key `tokens.key_file`: cannot create key file {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config key `tokens.key_file`: key file {path} line {line}: {message}")]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("config key `tokens.key_file`: key file {path} has no keys")]
    Empty { path: PathBuf },
    #[error("config key `tokens.key_file`: key file {path} is larger than 1 MiB")]
    TooLarge { path: PathBuf },
}

/// Parses key file text: `id:secret` per line, `#` comments and blank lines ignored.
pub fn parse(path: &Path, text: &str) -> Result<KeyRing, KeyFileError> {
    let mut keys = Vec::new();
    let mut ids = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fail = |message: String| KeyFileError::Line {
            path: path.to_owned(),
            line: index + 1,
            message,
        };
        let (id, secret) = line
            .split_once(':')
            .ok_or_else(|| fail("expected `id:secret`".into()))?;
        let id: u8 = id
            .trim()
            .parse()
            .map_err(|_| fail(format!("key id {:?} is not a number 0-255", id.trim())))?;
        let secret = secret.trim();
        if secret.len() < MIN_SECRET_BYTES {
            return Err(fail(format!(
                "secret of key {id} is {} bytes, at least {MIN_SECRET_BYTES} are needed",
                secret.len()
            )));
        }
        if ids.contains(&id) {
            return Err(fail(format!("key id {id} appears twice")));
        }
        ids.push(id);
        keys.push(Key::new(id, secret.as_bytes()));
    }
    KeyRing::new(keys).ok_or_else(|| KeyFileError::Empty {
        path: path.to_owned(),
    })
}

/// Reads the key file; when `may_create` and it does not exist, writes one random key.
pub fn load(path: &Path, may_create: bool) -> Result<KeyRing, KeyFileError> {
    if may_create && !path.exists() {
        create(path)?;
    }
    let text = read_bounded(path)?;
    parse(path, &text)
}

fn read_bounded(path: &Path) -> Result<String, KeyFileError> {
    let read_err = |source| KeyFileError::Read {
        path: path.to_owned(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read_err)?.len();
    if len > MAX_KEY_FILE_BYTES {
        return Err(KeyFileError::TooLarge {
            path: path.to_owned(),
        });
    }
    std::fs::read_to_string(path).map_err(read_err)
}

fn create(path: &Path) -> Result<(), KeyFileError> {
    let created = crate::secret_file::create(path, |hex| {
        format!(
            "# trackedge signing keys: `id:secret` per line; the first signs, all verify.\n\
             # Generated on first start. Keep it secret and back it up: URLs already sent\n\
             # stop working when their key is gone.\n1:{hex}\n"
        )
    })
    .map_err(|source| KeyFileError::Create {
        path: path.to_owned(),
        source,
    })?;
    // Otherwise another process (`sign` racing `serve`) created it first: use theirs.
    if created {
        tracing::warn!(path = %path.display(), "no key file configured: generated a new signing key");
    }
    Ok(())
}

/// The ring in force plus what is needed to reload it.
pub struct Keys {
    path: PathBuf,
    current: ArcSwap<KeyRing>,
    last_seen: LastSeen<Option<FileStamp>>,
}

impl Keys {
    pub fn open(path: PathBuf, may_create: bool) -> Result<Keys, KeyFileError> {
        let ring = load(&path, may_create)?;
        let keys = Keys {
            last_seen: LastSeen::new(FileStamp::of(&path)),
            path,
            current: ArcSwap::from_pointee(ring),
        };
        keys.publish_ids(None);
        for result in ["ok", "error"] {
            metrics::counter!(m::TOKEN_KEY_RELOADS_TOTAL, "result" => result).absolute(0);
        }
        Ok(keys)
    }

    pub fn ring(&self) -> arc_swap::Guard<Arc<KeyRing>> {
        self.current.load()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-reads the file; on error the old ring stays in force.
    pub fn reload(&self) -> Result<(), KeyFileError> {
        let result = read_bounded(&self.path).and_then(|text| parse(&self.path, &text));
        match result {
            Ok(ring) => {
                let old = self.current.swap(Arc::new(ring));
                self.publish_ids(Some(&old));
                metrics::counter!(m::TOKEN_KEY_RELOADS_TOTAL, "result" => "ok").increment(1);
                tracing::info!(path = %self.path.display(), ids = ?self.current.load().ids().collect::<Vec<_>>(), "signing keys reloaded");
                Ok(())
            }
            Err(err) => {
                metrics::counter!(m::TOKEN_KEY_RELOADS_TOTAL, "result" => "error").increment(1);
                tracing::warn!(error = %err, "key file reload failed; the previous keys stay in force");
                Err(err)
            }
        }
    }

    fn publish_ids(&self, old: Option<&KeyRing>) {
        let ring = self.current.load();
        if let Some(old) = old {
            // Ids still in the new ring are set back to 1 below; only set what
            // changed to 0, so a scrape in between never sees a key flap.
            for id in old.ids().filter(|id| !ring.ids().any(|new| new == *id)) {
                metrics::gauge!(m::TOKEN_KEYS_ACTIVE, "key_id" => id.to_string()).set(0.0);
            }
            let id = old.signing_key().id();
            if id != ring.signing_key().id() {
                metrics::gauge!(m::TOKEN_SIGNING_KEY_INFO, "key_id" => id.to_string()).set(0.0);
            }
        }
        for id in ring.ids() {
            metrics::gauge!(m::TOKEN_KEYS_ACTIVE, "key_id" => id.to_string()).set(1.0);
        }
        let id = ring.signing_key().id().to_string();
        metrics::gauge!(m::TOKEN_SIGNING_KEY_INFO, "key_id" => id).set(1.0);
    }
}

impl Reloadable for Keys {
    /// Reloads when the file changed since last seen ([`FileStamp`]).
    fn reload_changed(&self) {
        let now = FileStamp::of(&self.path);
        if self.last_seen.changed(now) && now.is_some() {
            // An error is logged and counted inside; the old keys keep serving.
            let _ = self.reload();
        }
    }

    fn reload_all(&self) {
        // Logged and counted inside; the old keys keep serving.
        let _ = self.reload();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_comments_rotation_and_order() {
        let text = "# comment\n\n2: bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\n1:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n";
        let ring = parse(Path::new("k"), text).unwrap();
        assert_eq!(ring.ids().collect::<Vec<_>>(), vec![2, 1]);
        assert_eq!(ring.signing_key().id(), 2);
    }

    #[test]
    fn bad_lines_name_line_and_problem() {
        for (text, needle) in [
            ("1-abc\n", "line 1: expected"),
            ("x:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n", "not a number"),
            ("256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n", "not a number"),
            ("1:short\n", "at least 32"),
            (
                "1:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n1:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\n",
                "line 2: key id 1 appears twice",
            ),
            ("# nothing\n", "no keys"),
        ] {
            let err = parse(Path::new("k"), text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn generated_file_is_private_and_loads_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/keys.txt");
        let first = load(&path, true).unwrap();
        let again = load(&path, true).unwrap();
        assert_eq!(
            first.ids().collect::<Vec<_>>(),
            again.ids().collect::<Vec<_>>()
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn configured_missing_file_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.txt");
        assert!(load(&path, false).is_err());
        assert!(!path.exists());
    }

    #[test]
    fn broken_reload_keeps_the_old_ring() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.txt");
        std::fs::write(&path, "5:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n").unwrap();
        let keys = Keys::open(path.clone(), false).unwrap();
        std::fs::write(&path, "garbage\n").unwrap();
        assert!(keys.reload().is_err());
        assert_eq!(keys.ring().signing_key().id(), 5);
        std::fs::write(
            &path,
            "6:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\n5:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n",
        )
        .unwrap();
        keys.reload().unwrap();
        assert_eq!(keys.ring().ids().collect::<Vec<_>>(), vec![6, 5]);
    }
}

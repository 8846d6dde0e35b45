//! Files that hold a secret the edge generates itself (the signing key file, the IP
//! hash key): created once with 32 random bytes, readable by the owner only (0600),
//! written durably, and never replaced once they exist.

use std::io::Write;
use std::path::Path;

use rand::RngCore;

/// Creates `path` (and its directory) holding `contents(hex)`, where `hex` is 32
/// random bytes in hex. Returns false, leaving the file alone, when it already
/// exists (another process may have just created it).
pub fn create(path: &Path, contents: impl FnOnce(&str) -> String) -> std::io::Result<bool> {
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(mut file) => {
            file.write_all(contents(&hex).as_bytes())?;
            file.sync_all()?;
            Ok(true)
        }
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_owner_only_and_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("secret");
        assert!(create(&path, |hex| format!("1:{hex}\n")).unwrap());
        let first = std::fs::read_to_string(&path).unwrap();
        assert_eq!(first.len(), 2 + 64 + 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(!create(&path, |hex| hex.to_owned()).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), first);
    }
}

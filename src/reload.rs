//! Files the edge re-reads while it runs (signing keys, TLS certificates, GeoIP
//! databases, the operator's classification rules and network sets): change detection by polling size and modification time, and one
//! watch loop that also reloads everything on SIGHUP.
//!
//! A reload reads and parses files (a GeoIP database is tens of megabytes), so the
//! loop runs it on the blocking pool, never on a request worker. Each reloadable
//! swaps its new state in whole or keeps the old one, and logs and counts the
//! result itself.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{signal, SignalKind};

use crate::shutdown::Signal;

/// What identifies a file's version when polling: size and modification time, plus
/// the inode and change time, so a replacement by rename or `cp -p` (same size and
/// mtime, as renewed certificates often are) is still noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
    changed: (i64, i64),
}

impl FileStamp {
    /// `None` when the file cannot be read (missing, no permission).
    pub fn of(path: &Path) -> Option<FileStamp> {
        let meta = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode: meta.ino(),
            changed: (meta.ctime(), meta.ctime_nsec()),
        })
    }
}

/// The stamps of some files as last seen.
pub struct LastSeen<T>(Mutex<T>);

impl<T: PartialEq> LastSeen<T> {
    pub fn new(stamps: T) -> LastSeen<T> {
        LastSeen(Mutex::new(stamps))
    }

    /// Records `now` and tells whether it differs from what was seen before.
    pub fn changed(&self, now: T) -> bool {
        // A poisoned lock only means a panic elsewhere mid-update of plain stamps.
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let changed = *last != now;
        *last = now;
        changed
    }
}

/// What the watch loop drives. Both calls may block on file IO.
pub trait Reloadable: Send + Sync + 'static {
    /// Re-reads whatever changed since the last look.
    fn reload_changed(&self);
    /// Re-reads everything (SIGHUP).
    fn reload_all(&self);
}

/// Polls every `interval` and listens for SIGHUP until `shutdown` fires. `what`
/// names the files in the log.
pub async fn watch<R: Reloadable>(
    what: &'static str,
    target: Arc<R>,
    interval: Duration,
    mut shutdown: Signal,
) {
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(err) => {
            tracing::warn!(what, error = %err, "cannot listen for SIGHUP; reload only by file change");
            None
        }
    };
    // The first look is one interval after start: the files were just read.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let all = tokio::select! {
            _ = tick.tick() => false,
            Some(()) = async {
                match hangup.as_mut() {
                    Some(hangup) => hangup.recv().await,
                    None => std::future::pending().await,
                }
            } => true,
            () = shutdown.recv() => return,
        };
        let target = target.clone();
        let reload = tokio::task::spawn_blocking(move || match all {
            true => target.reload_all(),
            false => target.reload_changed(),
        });
        if let Err(err) = reload.await {
            tracing::error!(what, error = %err, "reload task failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewritten_file_is_seen_as_changed_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "one").unwrap();
        let seen = LastSeen::new(FileStamp::of(&path));
        assert!(!seen.changed(FileStamp::of(&path)));
        std::fs::write(&path, "three").unwrap();
        assert!(seen.changed(FileStamp::of(&path)));
        assert!(!seen.changed(FileStamp::of(&path)));
        // Same size and modification time, put in place by rename.
        let copy = dir.path().join("g");
        std::fs::write(&copy, "three").unwrap();
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::fs::File::options()
            .write(true)
            .open(&copy)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        std::fs::rename(&copy, &path).unwrap();
        assert!(
            seen.changed(FileStamp::of(&path)),
            "a same-size, same-mtime swap"
        );
        std::fs::remove_file(&path).unwrap();
        assert!(seen.changed(FileStamp::of(&path)));
    }
}

//! The `file` sink: appends NDJSON batches to a file under the data dir and rotates it
//! by size (`events.ndjson` -> `events-<unix ms>-<n>.ndjson`). The embedded default, so
//! a new user sees events appear with no other service running.
//!
//! A batch is acknowledged once written and flushed to the operating system; the file
//! is fsynced on rotation. Writes run on the blocking pool, one at a time.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::{Batch, BoxFuture, Failure, Outcome, Sink};
use crate::config::FileSinkConfig;

pub struct FileSink {
    state: Arc<Mutex<State>>,
}

struct State {
    path: PathBuf,
    max_file_bytes: u64,
    file: Option<File>,
    written: u64,
    rotations: u64,
}

impl FileSink {
    pub fn open(config: &FileSinkConfig) -> std::io::Result<FileSink> {
        if let Some(dir) = config.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = open_append(&config.path)?;
        let written = file.metadata()?.len();
        Ok(FileSink {
            state: Arc::new(Mutex::new(State {
                path: config.path.clone(),
                max_file_bytes: config.max_file_bytes,
                file: Some(file),
                written,
                rotations: 0,
            })),
        })
    }
}

fn open_append(path: &std::path::Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl State {
    /// Appends whole lines, rotating whenever the next lines would take the file
    /// past `max_file_bytes` (a batch may span files; a single line longer than the
    /// bound gets a file of its own).
    fn write(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            let room = self.max_file_bytes.saturating_sub(self.written);
            let mut take = if bytes.len() as u64 <= room {
                bytes.len()
            } else {
                let fits = &bytes[..room as usize];
                fits.iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |at| at + 1)
            };
            if take == 0 {
                if self.written > 0 {
                    self.rotate()?;
                    continue;
                }
                take = bytes
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(bytes.len(), |at| at + 1);
            }
            self.append(&bytes[..take])?;
            bytes = &bytes[take..];
        }
        Ok(())
    }

    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let file = match &mut self.file {
            Some(file) => file,
            None => self.file.insert(open_append(&self.path)?),
        };
        if let Err(err) = file.write_all(bytes).and_then(|()| file.flush()) {
            // A partial line may be in the file; reopen so the next batch starts clean.
            self.file = None;
            return Err(err);
        }
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        if let Some(file) = self.file.take() {
            file.sync_all()?;
        }
        let stem = self
            .path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("events");
        // Time sorts the files; the counter keeps two rotations in one ms apart.
        self.rotations += 1;
        let rotated = self.path.with_file_name(format!(
            "{stem}-{}-{}.ndjson",
            crate::event::now_ms(),
            self.rotations
        ));
        std::fs::rename(&self.path, rotated)?;
        self.file = Some(open_append(&self.path)?);
        self.written = 0;
        Ok(())
    }
}

impl Sink for FileSink {
    fn failure_reasons(&self) -> &'static [Failure] {
        &[Failure::Io]
    }

    fn send<'a>(&'a self, batch: &'a Batch) -> BoxFuture<'a, Outcome> {
        let state = self.state.clone();
        let lines = batch.ndjson.clone();
        Box::pin(async move {
            let written = tokio::task::spawn_blocking(move || {
                state
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write(&lines)
            })
            .await;
            match written {
                Ok(Ok(())) => Outcome::Delivered,
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "file sink write failed; will retry");
                    Outcome::Retry {
                        reason: Failure::Io,
                        after: None,
                    }
                }
                Err(_) => Outcome::Retry {
                    reason: Failure::Io,
                    after: None,
                },
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_batch_spans_files_at_line_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.ndjson");
        let sink = FileSink::open(&FileSinkConfig {
            path: path.clone(),
            max_file_bytes: 100,
        })
        .unwrap();
        let batch: String = (0..10).map(|n| format!("{{\"n\":{n:030}}}\n")).collect();
        let long = format!("{{\"long\":\"{}\"}}\n", "x".repeat(150));
        let mut state = sink.state.lock().unwrap();
        state.write(batch.as_bytes()).unwrap();
        state.write(long.as_bytes()).unwrap();
        drop(state);
        let mut lines = Vec::new();
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            assert!(text.ends_with('\n'), "whole lines only");
            assert!(text.len() <= 100 || text == long, "{} bytes", text.len());
            lines.extend(text.lines().map(str::to_owned));
        }
        lines.sort();
        assert_eq!(lines.len(), 11);
    }

    #[test]
    fn rotates_past_the_size_and_keeps_every_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.ndjson");
        let sink = FileSink::open(&FileSinkConfig {
            path: path.clone(),
            max_file_bytes: 100,
        })
        .unwrap();
        let mut state = sink.state.lock().unwrap();
        for n in 0..10 {
            state
                .write(format!("{{\"n\":{n:040}}}\n").as_bytes())
                .unwrap();
        }
        drop(state);
        let mut lines = 0;
        let mut files = 0;
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            assert!(text.len() <= 100);
            lines += text.lines().count();
            files += 1;
        }
        assert_eq!(lines, 10);
        assert!(files >= 5, "{files} files");
    }
}

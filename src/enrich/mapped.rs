//! A read-only, memory-mapped private copy of a file: how GeoIP databases are held.
//!
//! Why mapped: a GeoLite2-City file is about 60 MB, and read into the heap it cost
//! its whole size in private memory, on every edge, for data that lookups touch a
//! few pages of. A mapping costs only the pages touched, and those are page cache
//! the kernel can share and drop.
//!
//! Why a copy: a mapping sees later writes to its file, and a file truncated under
//! it turns a read past the new end into SIGBUS. Operators update databases with
//! `cp` as often as with a rename, so the source is never mapped: it is copied into
//! a new file in the edge's own directory, that file is unlinked at once (it has no
//! name any other process could open, and it disappears with the last mapping, or
//! with the process), and only then mapped. Verification reads every page of the
//! copy; those pages are then dropped from this process by mapping the copy again.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::Mmap;

/// Copies `source` (already open, `len` bytes) into an unnamed file under `dir` and
/// returns the copy, open for reading.
pub fn private_copy(source: &mut File, dir: &Path) -> io::Result<File> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!(
        ".copy-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let mut copy = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    // Unlinked before anything else can go wrong: a failed copy leaves no file.
    std::fs::remove_file(&path)?;
    io::copy(source, &mut copy)?;
    Ok(copy)
}

/// Maps all of `file` read-only.
#[allow(unsafe_code)]
pub fn map(file: &File) -> io::Result<Mmap> {
    // SAFETY: mapping a file is unsound only if the file changes while mapped (Rust
    // assumes the bytes behind a `&[u8]` do not change, and a truncation turns reads
    // into SIGBUS). `file` is always a copy made by `private_copy`: unlinked before
    // it was written, so no other process can open it by name, and this crate writes
    // it only before mapping it and never after. The copy's pages therefore never
    // change while any mapping of it lives, and the mapping keeps the file alive
    // until the last reader drops it.
    unsafe { Mmap::map(file) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn the_copy_has_the_bytes_and_no_name_and_ignores_later_writes_to_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let source_path = dir.path().join("source");
        std::fs::write(&source_path, b"first version of the file").unwrap();
        let copies = dir.path().join("copies");
        let mut source = File::open(&source_path).unwrap();
        let copy = private_copy(&mut source, &copies).unwrap();
        let mapped = map(&copy).unwrap();
        assert_eq!(&mapped[..], b"first version of the file");
        assert_eq!(std::fs::read_dir(&copies).unwrap().count(), 0, "unlinked");
        // The source rewritten in place, shorter: the mapping is unaffected.
        let mut rewrite = File::create(&source_path).unwrap();
        rewrite.write_all(b"x").unwrap();
        drop(rewrite);
        assert_eq!(&mapped[..], b"first version of the file");
        assert_eq!(&map(&copy).unwrap()[..], &mapped[..]);
    }
}

//! Atomic token files.
//!
//! Readers (every AWS SDK in the app container) open the file whenever they need credentials,
//! at any moment. The file is therefore only ever replaced by `rename(2)` of a fully written and
//! fsynced temporary file from the same directory (same filesystem, so the rename is atomic):
//! a reader sees the old token or the new one, never an empty or partial file.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// World-readable: the application container may run as a different non-root uid than the
/// agent, and the token is only useful together with the role it is trusted for.
pub const TOKEN_MODE: u32 = 0o644;

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{path} has no parent directory")]
    NoParent { path: PathBuf },
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> WriteError + 'a {
    move |source| WriteError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Replace `path` atomically with `contents`, with permission bits `mode` (umask ignored).
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), WriteError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        Some(_) => Path::new("."),
        None => return Err(WriteError::NoParent { path: path.into() }),
    };
    let name = path
        .file_name()
        .ok_or_else(|| WriteError::NoParent { path: path.into() })?
        .to_string_lossy();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.tmp.{}.{n}", std::process::id()));
    let result = write_tmp_then_rename(&tmp, path, dir, contents, mode);
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn write_tmp_then_rename(
    tmp: &Path,
    path: &Path,
    dir: &Path,
    contents: &[u8],
    mode: u32,
) -> Result<(), WriteError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(tmp)
        .map_err(io_err("create", tmp))?;
    // The open mode is filtered by the umask; the file must end up readable by other uids.
    file.set_permissions(Permissions::from_mode(mode))
        .map_err(io_err("chmod", tmp))?;
    file.write_all(contents).map_err(io_err("write", tmp))?;
    file.sync_all().map_err(io_err("fsync", tmp))?;
    drop(file);
    fs::rename(tmp, path).map_err(io_err("rename into", path))?;
    // Make the rename itself durable; harmless on the tmpfs emptyDir the webhook uses.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))?;
    Ok(())
}

/// Remove `path` if it exists.
pub fn remove(path: &Path) -> Result<(), WriteError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", path)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn writes_with_mode_regardless_of_umask_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.token");
        write_atomic(&path, b"one", TOKEN_MODE).unwrap();
        write_atomic(&path, b"two", TOKEN_MODE).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("t.token")]);
        write_atomic(&path, b"secret", 0o600).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn failure_leaves_previous_file_and_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.token");
        write_atomic(&path, b"old", TOKEN_MODE).unwrap();
        // A directory at the target makes the rename fail after the temp file was written.
        let blocked = dir.path().join("blocked");
        fs::create_dir(&blocked).unwrap();
        fs::write(blocked.join("x"), b"x").unwrap();
        assert!(write_atomic(&blocked, b"new", TOKEN_MODE).is_err());
        assert_eq!(fs::read(&path).unwrap(), b"old");
        let leftovers = fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains(".tmp.")
            })
            .count();
        assert_eq!(leftovers, 0);
        let missing_dir = dir.path().join("nope/t.token");
        assert!(matches!(
            write_atomic(&missing_dir, b"x", TOKEN_MODE),
            Err(WriteError::Io { op: "create", .. })
        ));
    }

    #[test]
    fn remove_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        remove(&path).unwrap();
        fs::write(&path, b"x").unwrap();
        remove(&path).unwrap();
        assert!(!path.exists());
    }

    #[test]
    fn reader_hammering_the_file_never_sees_partial_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = Arc::new(dir.path().join("t.token"));
        // Large, distinct contents so that a torn write would be visible.
        let a = vec![b'a'; 256 * 1024];
        let b = vec![b'b'; 128 * 1024];
        write_atomic(&path, &a, TOKEN_MODE).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (path, stop, a, b) = (path.clone(), stop.clone(), a.clone(), b.clone());
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let got = fs::read(&*path).expect("file must always exist");
                    assert!(got == a || got == b, "torn read of {} bytes", got.len());
                    reads += 1;
                }
                reads
            })
        };
        for i in 0..300 {
            write_atomic(&path, if i % 2 == 0 { &b } else { &a }, TOKEN_MODE).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        let reads = reader.join().unwrap();
        assert!(reads > 0);
    }
}

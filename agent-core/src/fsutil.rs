//! Durable file writes for the data dir: a crash leaves either the old or the new content,
//! never a torn file.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::error::AgentError;

/// Mode of files that hold secrets (the private key) and of everything else we write;
/// nothing in the data dir is meant for other users.
pub(crate) const PRIVATE_FILE_MODE: u32 = 0o600;
const PRIVATE_DIR_MODE: u32 = 0o700;

/// Creates `dir` (and its parents) with mode 0700 when missing.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), AgentError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(PRIVATE_DIR_MODE);
    }
    builder
        .create(dir)
        .map_err(|e| AgentError::io("create directory", dir, e))?;
    #[cfg(unix)]
    {
        // `mode` is filtered by the umask; the data dir must not be readable by others.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(PRIVATE_DIR_MODE))
            .map_err(|e| AgentError::io("set permissions of", dir, e))?;
    }
    Ok(())
}

/// Writes `contents` to `path` atomically: a temporary file in the same directory (mode
/// 0600), fsync, rename over `path`, fsync of the directory.
pub(crate) fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), AgentError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp-{:016x}", rand::random::<u64>()));
    let result = write_synced(&tmp, contents).and_then(|()| {
        fs::rename(&tmp, path).map_err(|e| AgentError::io("rename into place", path, e))
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_dir(dir)
}

/// Renames `from` to `to` and makes the rename durable.
pub(crate) fn rename_durable(from: &Path, to: &Path) -> Result<(), AgentError> {
    fs::rename(from, to).map_err(|e| AgentError::io("rename into place", to, e))?;
    sync_dir(to.parent().unwrap_or_else(|| Path::new(".")))
}

/// Removes a file; a missing file is fine.
pub(crate) fn remove_if_exists(path: &Path) -> Result<(), AgentError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(AgentError::io("remove", path, e)),
    }
}

/// Reads a UTF-8 file; `Ok(None)` when it does not exist.
pub(crate) fn read_optional(path: &Path) -> Result<Option<String>, AgentError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AgentError::io("read", path, e)),
    }
}

/// Reads a UTF-8 file that must exist.
pub(crate) fn read_required(path: &Path) -> Result<String, AgentError> {
    fs::read_to_string(path).map_err(|e| AgentError::io("read", path, e))
}

/// Whether `name` is a temporary file left by [`write_atomic`].
pub(crate) fn is_temporary(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp-")
}

fn write_synced(path: &Path, contents: &[u8]) -> Result<(), AgentError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(PRIVATE_FILE_MODE);
    }
    let mut file = options
        .open(path)
        .map_err(|e| AgentError::io("create", path, e))?;
    file.write_all(contents)
        .map_err(|e| AgentError::io("write", path, e))?;
    file.sync_all().map_err(|e| AgentError::io("sync", path, e))
}

fn sync_dir(dir: &Path) -> Result<(), AgentError> {
    #[cfg(unix)]
    {
        let handle = File::open(dir).map_err(|e| AgentError::io("open", dir, e))?;
        handle
            .sync_all()
            .map_err(|e| AgentError::io("sync", dir, e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Runs blocking filesystem work off the async executor.
pub(crate) async fn blocking<T, F>(work: F) -> Result<T, AgentError>
where
    F: FnOnce() -> Result<T, AgentError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(AgentError::Join)?
}

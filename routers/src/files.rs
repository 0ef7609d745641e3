//! Files replaced whole: written beside their final name, flushed, then renamed over it,
//! so a reader (nginx at reload) sees the old file or the new one, never a part.

use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;

use crate::error::RouterError;

/// The temporary name `path` is written under first: a dot file with a suffix other than
/// `.conf`, so an `include DIR/*.conf` never picks it up.
fn temporary(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.stella-tmp"))
}

/// Replaces `path` with `contents` atomically.
pub(crate) async fn replace(path: &Path, contents: &[u8]) -> Result<(), RouterError> {
    let tmp = temporary(path);
    let mut file = tokio::fs::File::create(&tmp)
        .await
        .map_err(|e| RouterError::file("creating", &tmp, e))?;
    file.write_all(contents)
        .await
        .map_err(|e| RouterError::file("writing", &tmp, e))?;
    file.sync_all()
        .await
        .map_err(|e| RouterError::file("flushing", &tmp, e))?;
    drop(file);
    tokio::fs::rename(&tmp, path)
        .await
        .map_err(|e| RouterError::file(&format!("renaming {} to", tmp.display()), path, e))
}

/// The contents of `path`, or `None` when there is no such file.
pub(crate) async fn read_if_exists(path: &Path) -> Result<Option<String>, RouterError> {
    match tokio::fs::read_to_string(path).await {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(RouterError::file("reading", path, e)),
    }
}

/// Removes `path`; no such file is not an error.
pub(crate) async fn remove_if_exists(path: &Path) -> Result<(), RouterError> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RouterError::file("removing", path, e)),
    }
}

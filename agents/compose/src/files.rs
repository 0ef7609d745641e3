//! The files a `compose` target keeps on the host, all written atomically (temporary file
//! in the same directory, fsync, rename, fsync of the directory) so a crash leaves the
//! old or the new content, never a torn file:
//! - next to the operator's Compose file: the lock and the previous lock;
//! - under `<sticker_dir>/<target>/`: one sticker per component (`<component>.json`,
//!   canonical JSON) and the sha256 of the lock as written (`compose.stella.lock.sha256`),
//!   so an edit by hand is seen.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use stella_agent_core::Sticker;

use crate::error::ComposeError;
use crate::lockfile::{LOCK_FILE, PREVIOUS_LOCK_FILE};

/// The name of the lock's recorded sha256, beside the sticker files.
const LOCK_SHA_FILE: &str = "compose.stella.lock.sha256";

/// Where one target's files are.
#[derive(Debug, Clone)]
pub(crate) struct TargetFiles {
    /// The operator's Compose file.
    pub(crate) compose_file: PathBuf,
    /// `compose.stella.lock.yml` beside it.
    pub(crate) lock: PathBuf,
    /// `compose.stella.lock.prev.yml` beside it.
    pub(crate) previous_lock: PathBuf,
    /// `<sticker_dir>/<target>`.
    sticker_dir: PathBuf,
}

impl TargetFiles {
    pub(crate) fn new(
        compose_file: &Path,
        sticker_dir: &Path,
        target: &str,
    ) -> Result<Self, ComposeError> {
        check_name("target", target)?;
        let dir = compose_file.parent().unwrap_or_else(|| Path::new("/"));
        Ok(TargetFiles {
            compose_file: compose_file.to_owned(),
            lock: dir.join(LOCK_FILE),
            previous_lock: dir.join(PREVIOUS_LOCK_FILE),
            sticker_dir: sticker_dir.join(target),
        })
    }

    /// Where the sticker of `component` lives.
    pub(crate) fn sticker_path(&self, component: &str) -> Result<PathBuf, ComposeError> {
        check_name("component", component)?;
        Ok(self.sticker_dir.join(format!("{component}.json")))
    }

    /// Where the lock's sha256 is recorded.
    pub(crate) fn lock_sha_path(&self) -> PathBuf {
        self.sticker_dir.join(LOCK_SHA_FILE)
    }

    /// Writes a sticker (canonical JSON).
    pub(crate) async fn write_sticker(&self, sticker: &Sticker) -> Result<(), ComposeError> {
        let path = self.sticker_path(&sticker.component)?;
        write_atomic(path, sticker.to_canonical_json().into_bytes()).await
    }

    /// Reads a sticker; `Ok(None)` when there is no file.
    pub(crate) async fn read_sticker(
        &self,
        component: &str,
    ) -> Result<Option<Sticker>, ComposeError> {
        let path = self.sticker_path(component)?;
        let Some(bytes) = read_optional(&path).await? else {
            return Ok(None);
        };
        Sticker::from_json(bytes.as_bytes())
            .map(Some)
            .map_err(|source| ComposeError::StickerCorrupt { path, source })
    }

    /// Writes the lock and records its sha256; the lock in place before goes to the
    /// previous lock when it differs.
    pub(crate) async fn write_lock(
        &self,
        lock: &str,
        current: Option<&str>,
    ) -> Result<(), ComposeError> {
        if let Some(current) = current.filter(|current| *current != lock) {
            write_atomic(self.previous_lock.clone(), current.as_bytes().to_vec()).await?;
        }
        write_atomic(self.lock.clone(), lock.as_bytes().to_vec()).await?;
        self.record_lock_sha(lock).await
    }

    /// Puts `previous` back as the lock (after a failed deployment).
    pub(crate) async fn restore_lock(&self, previous: &str) -> Result<(), ComposeError> {
        write_atomic(self.lock.clone(), previous.as_bytes().to_vec()).await?;
        self.record_lock_sha(previous).await
    }

    /// The sha256 recorded when the lock was last written, if any.
    pub(crate) async fn recorded_lock_sha(&self) -> Result<Option<String>, ComposeError> {
        Ok(read_optional(&self.lock_sha_path())
            .await?
            .map(|text| text.trim().to_owned()))
    }

    async fn record_lock_sha(&self, lock: &str) -> Result<(), ComposeError> {
        write_atomic(
            self.lock_sha_path(),
            format!("{}\n", sha256_hex(lock)).into_bytes(),
        )
        .await
    }
}

/// `sha256:<hex>` of a text.
pub(crate) fn sha256_hex(text: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(text.as_bytes())))
}

/// Reads a UTF-8 file; `Ok(None)` when it does not exist.
pub(crate) async fn read_optional(path: &Path) -> Result<Option<String>, ComposeError> {
    match tokio::fs::read_to_string(path).await {
        Ok(text) => Ok(Some(text)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ComposeError::Io {
            action: "read",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Names become path components: no separators, no `.`/`..`, nothing hidden.
fn check_name(what: &'static str, name: &str) -> Result<(), ComposeError> {
    let safe = !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\', '\0']);
    if safe {
        Ok(())
    } else {
        Err(ComposeError::UnsafeName {
            what,
            name: name.to_owned(),
        })
    }
}

async fn write_atomic(path: PathBuf, contents: Vec<u8>) -> Result<(), ComposeError> {
    tokio::task::spawn_blocking(move || write_atomic_blocking(&path, &contents))
        .await
        .map_err(ComposeError::Join)?
}

fn write_atomic_blocking(path: &Path, contents: &[u8]) -> Result<(), ComposeError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir).map_err(ComposeError::io("create the directory of", path))?;
    let mut file = tempfile::Builder::new()
        .prefix(".stella-")
        .tempfile_in(dir)
        .map_err(ComposeError::io("create a temporary file for", path))?;
    file.write_all(contents)
        .map_err(ComposeError::io("write", path))?;
    file.as_file()
        .sync_all()
        .map_err(ComposeError::io("sync", path))?;
    file.persist(path).map_err(|error| ComposeError::Io {
        action: "rename into place",
        path: path.to_owned(),
        source: error.error,
    })?;
    std::fs::File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(ComposeError::io("sync the directory of", path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use stella_agent_core::StickerFields;

    #[tokio::test]
    async fn lock_rotation_sha_and_stickers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let compose = dir.path().join("app/compose.yml");
        let files = TargetFiles::new(&compose, &dir.path().join("stickers"), "app").expect("files");
        assert_eq!(files.lock, dir.path().join("app/compose.stella.lock.yml"));
        assert_eq!(files.recorded_lock_sha().await.expect("sha"), None);

        files.write_lock("one", None).await.expect("write");
        assert!(!files.previous_lock.exists());
        assert_eq!(
            files.recorded_lock_sha().await.expect("sha"),
            Some(sha256_hex("one"))
        );
        files.write_lock("one", Some("one")).await.expect("same");
        assert!(
            !files.previous_lock.exists(),
            "an unchanged lock is not rotated"
        );
        files.write_lock("two", Some("one")).await.expect("write");
        assert_eq!(
            std::fs::read_to_string(&files.previous_lock).expect("prev"),
            "one"
        );
        assert_eq!(std::fs::read_to_string(&files.lock).expect("lock"), "two");
        files.restore_lock("one").await.expect("restore");
        assert_eq!(
            files.recorded_lock_sha().await.expect("sha"),
            Some(sha256_hex("one"))
        );

        let sticker = Sticker::seal(StickerFields {
            release: "shop".into(),
            version: "1".into(),
            environment: "prod".into(),
            target: "app".into(),
            component: "web".into(),
            image: "r/web@sha256:00".into(),
            deployment_id: "d".into(),
            decision_id: "x".into(),
            deployed_at: "2024-05-01T12:00:00Z".into(),
            agent_id: "a".into(),
        });
        assert_eq!(files.read_sticker("web").await.expect("read"), None);
        files.write_sticker(&sticker).await.expect("write");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("stickers/app/web.json")).expect("file"),
            sticker.to_canonical_json()
        );
        assert_eq!(
            files.read_sticker("web").await.expect("read"),
            Some(sticker)
        );
        assert!(files.sticker_path("../x").is_err());
        assert!(TargetFiles::new(&compose, dir.path(), "a/b").is_err());
    }
}

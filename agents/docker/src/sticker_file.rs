//! Sticker files: `<sticker_dir>/<target>/<component>.json`, the canonical sticker JSON,
//! written atomically (temp file, fsync, rename, fsync of the directory) so a crash
//! leaves the old or the new sticker, never a torn one.

use std::io::Write;
use std::path::{Path, PathBuf};

use stella_agent_core::Sticker;

use crate::error::DockerError;

/// The sticker files of one agent.
#[derive(Debug, Clone)]
pub(crate) struct StickerFiles {
    dir: PathBuf,
}

impl StickerFiles {
    pub(crate) fn new(dir: PathBuf) -> Self {
        StickerFiles { dir }
    }

    /// Where the sticker of `target`/`component` lives.
    pub(crate) fn path(&self, target: &str, component: &str) -> Result<PathBuf, DockerError> {
        check_name("target", target)?;
        check_name("component", component)?;
        Ok(self.dir.join(target).join(format!("{component}.json")))
    }

    /// Writes a sticker (canonical JSON).
    pub(crate) async fn write(&self, sticker: &Sticker) -> Result<(), DockerError> {
        let path = self.path(&sticker.target, &sticker.component)?;
        let json = sticker.to_canonical_json();
        tokio::task::spawn_blocking(move || write_atomic(&path, json.as_bytes()))
            .await
            .map_err(DockerError::Join)?
    }

    /// Reads a sticker; `Ok(None)` when there is no file.
    pub(crate) async fn read(
        &self,
        target: &str,
        component: &str,
    ) -> Result<Option<Sticker>, DockerError> {
        let path = self.path(target, component)?;
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(DockerError::StickerIo {
                    action: "read",
                    path,
                    source,
                })
            }
        };
        Sticker::from_json(&bytes)
            .map(Some)
            .map_err(|source| DockerError::StickerCorrupt { path, source })
    }
}

/// Names become path components: no separators, no `.`/`..`, nothing hidden.
fn check_name(what: &'static str, name: &str) -> Result<(), DockerError> {
    let safe = !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\', '\0']);
    if safe {
        Ok(())
    } else {
        Err(DockerError::UnsafeName {
            what,
            name: name.to_owned(),
        })
    }
}

fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), DockerError> {
    let io = |action: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| DockerError::StickerIo {
            action,
            path,
            source,
        }
    };
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir).map_err(io("create the directory of", path))?;
    let mut file = tempfile::Builder::new()
        .prefix(".sticker-")
        .tempfile_in(dir)
        .map_err(io("create a temporary file for", path))?;
    file.write_all(contents).map_err(io("write", path))?;
    file.as_file().sync_all().map_err(io("sync", path))?;
    file.persist(path).map_err(|error| DockerError::StickerIo {
        action: "rename into place",
        path: path.to_owned(),
        source: error.error,
    })?;
    std::fs::File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(io("sync the directory of", path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use stella_agent_core::StickerFields;

    #[tokio::test]
    async fn writes_and_reads_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = StickerFiles::new(dir.path().join("stickers"));
        assert_eq!(files.read("app", "web").await.expect("read"), None);
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
        files.write(&sticker).await.expect("write");
        let path = dir.path().join("stickers/app/web.json");
        assert_eq!(
            std::fs::read_to_string(&path).expect("file"),
            sticker.to_canonical_json()
        );
        assert_eq!(files.read("app", "web").await.expect("read"), Some(sticker));
        std::fs::write(&path, b"{not json").expect("overwrite");
        assert!(matches!(
            files.read("app", "web").await,
            Err(DockerError::StickerCorrupt { .. })
        ));
        assert!(files.path("../etc", "web").is_err());
        assert!(files.path("app", "a/b").is_err());
    }
}

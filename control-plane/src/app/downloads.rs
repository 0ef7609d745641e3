//! What the control plane serves for installing agents: agent binaries and `.deb`
//! files from one directory, each with its SHA-256.
//!
//! Names come only from listing the directory; a requested name is looked up in that
//! listing and never joined onto a path, so no request can reach another file. Hashes
//! are computed once per file and kept while its modification time and size stay the
//! same, not on every request.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::config::ServerConfig;
use crate::error::AppError;

/// Where packages put the downloads.
pub const PACKAGED_DOWNLOADS_DIR: &str = "/usr/lib/stella/downloads";

/// The prefix of agent binaries; the full name is `stella-agent-linux-<arch>`.
const AGENT_PREFIX: &str = "stella-agent-linux-";

/// The name `cargo build` gives the agent binary, served as this machine's arch.
const PLAIN_AGENT: &str = "stella-agent";

/// The files of the downloads directory and their cached hashes.
#[derive(Debug, Clone)]
pub struct Downloads {
    dir: PathBuf,
    hashes: Arc<parking_lot::Mutex<HashMap<PathBuf, CachedHash>>>,
}

/// What a download is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DownloadKind {
    /// A `stella-agent` binary.
    Agent,
    /// A Debian package.
    Deb,
}

/// One file served under `/downloads/`.
#[derive(Debug, Clone)]
pub struct Download {
    /// The name it is served as.
    pub name: String,
    /// Agent binary or Debian package.
    pub kind: DownloadKind,
    /// `linux`.
    pub os: String,
    /// As `uname -m` says it: `x86_64`, `aarch64`.
    pub arch: String,
    /// Bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 of the bytes.
    pub sha256: String,
    /// The file on disk.
    pub path: PathBuf,
}

#[derive(Debug, Clone)]
struct CachedHash {
    modified: Option<SystemTime>,
    size: u64,
    sha256: String,
}

impl Downloads {
    /// The downloads of `config`: its `downloads_dir`, else the packaged directory if
    /// it exists, else the directory of the running executable.
    pub fn of(config: &ServerConfig) -> Self {
        let dir = match &config.downloads_dir {
            Some(dir) => dir.clone(),
            None => default_dir(),
        };
        Downloads::new(dir)
    }

    /// The downloads in `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Downloads {
            dir,
            hashes: Arc::default(),
        }
    }

    /// The directory served.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every download, sorted by name. A directory that does not exist lists nothing.
    pub async fn list(&self) -> Result<Vec<Download>, AppError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.list_blocking())
            .await
            .map_err(|error| AppError::internal("listing the downloads", &error))?
    }

    /// The download called `name`.
    pub async fn find(&self, name: &str) -> Result<Download, AppError> {
        self.list()
            .await?
            .into_iter()
            .find(|download| download.name == name)
            .ok_or_else(|| AppError::not_found("download", name))
    }

    fn list_blocking(&self) -> Result<Vec<Download>, AppError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => {
                return Err(AppError::internal(
                    &format!("reading the downloads dir {}", self.dir.display()),
                    &error,
                ))
            }
        };
        let mut found: HashMap<String, (DownloadKind, String, PathBuf)> = HashMap::new();
        let mut plain_agent = None;
        for entry in entries.flatten() {
            let Ok(file_name) = entry.file_name().into_string() else {
                continue;
            };
            let path = entry.path();
            if file_name == PLAIN_AGENT {
                plain_agent = Some(path);
            } else if let Some((kind, arch)) = classify(&file_name) {
                found.insert(file_name, (kind, arch, path));
            }
        }
        // An explicitly named binary of this arch wins over the plain one.
        if let Some(path) = plain_agent {
            let arch = std::env::consts::ARCH.to_owned();
            found.entry(format!("{AGENT_PREFIX}{arch}")).or_insert((
                DownloadKind::Agent,
                arch,
                path,
            ));
        }
        let mut downloads = Vec::with_capacity(found.len());
        for (name, (kind, arch, path)) in found {
            // A file that vanished or cannot be read is left out, not an error of all.
            match self.hashed(&path) {
                Ok((size, sha256)) => downloads.push(Download {
                    name,
                    kind,
                    os: "linux".to_owned(),
                    arch,
                    size,
                    sha256,
                    path,
                }),
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "download left out");
                }
            }
        }
        downloads.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(downloads)
    }

    /// The size and SHA-256 of a regular file, from the cache while its modification
    /// time and size are unchanged.
    fn hashed(&self, path: &Path) -> std::io::Result<(u64, String)> {
        let metadata = std::fs::metadata(path)?;
        if !metadata.is_file() {
            return Err(std::io::Error::other("not a regular file"));
        }
        let (modified, size) = (metadata.modified().ok(), metadata.len());
        if let Some(cached) = self.hashes.lock().get(path) {
            if cached.modified == modified && cached.size == size {
                return Ok((size, cached.sha256.clone()));
            }
        }
        let sha256 = sha256_of_file(path)?;
        self.hashes.lock().insert(
            path.to_owned(),
            CachedHash {
                modified,
                size,
                sha256: sha256.clone(),
            },
        );
        Ok((size, sha256))
    }
}

/// The kind and arch of a file name that is served, `None` for every other file.
fn classify(file_name: &str) -> Option<(DownloadKind, String)> {
    let safe = |text: &str| {
        !text.is_empty()
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '+' | '~'))
            && !text.starts_with('.')
    };
    if let Some(arch) = file_name.strip_prefix(AGENT_PREFIX) {
        let arch_ok = !arch.is_empty()
            && arch
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        return arch_ok.then(|| (DownloadKind::Agent, arch.to_owned()));
    }
    let stem = file_name.strip_suffix(".deb")?;
    if !safe(file_name) {
        return None;
    }
    // `name_version_arch.deb`; Debian's arch names are given as `uname -m` says them.
    let debian_arch = stem.rsplit('_').next().unwrap_or_default();
    let arch = match debian_arch {
        "amd64" => "x86_64",
        "arm64" => "aarch64",
        other => other,
    };
    Some((DownloadKind::Deb, arch.to_owned()))
}

fn default_dir() -> PathBuf {
    let packaged = PathBuf::from(PACKAGED_DOWNLOADS_DIR);
    if packaged.is_dir() {
        return packaged;
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_owned))
        .unwrap_or(packaged)
}

fn sha256_of_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_agent_binaries_and_debs_are_served() {
        assert_eq!(
            classify("stella-agent-linux-x86_64"),
            Some((DownloadKind::Agent, "x86_64".to_owned()))
        );
        assert_eq!(
            classify("stella-agent_0.1.0_amd64.deb"),
            Some((DownloadKind::Deb, "x86_64".to_owned()))
        );
        for refused in [
            "stella",
            "stella-agent-linux-",
            "stella-agent-linux-../x",
            ".hidden.deb",
            "a b.deb",
            "stella.db",
        ] {
            assert_eq!(classify(refused), None, "{refused}");
        }
    }
}

//! `/api/v1/downloads`, `/downloads/{name}` and `/install/agent.sh`: what a new host
//! needs to install an agent, from the control plane itself, so that no public CA and
//! no internet access are needed.
//!
//! Public, like `/api/v1/gateway`: the binaries are open source, and the join token,
//! not these files, is the secret. The install command pins the API's TLS key and the
//! script checks every binary's SHA-256 before it installs or runs it.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::envelope::{ApiError, ErrorEnvelope};
use crate::app::downloads::{Download, DownloadKind};
use crate::app::App;
use crate::error::AppError;

/// The agent install script, built into the binary.
pub const AGENT_INSTALL_SCRIPT: &str = include_str!("../../../installers/agent/install.sh");

/// The suffix that asks for a download's checksum line instead of its bytes.
const SHA256_SUFFIX: &str = ".sha256";

/// `GET /api/v1/downloads`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DownloadList {
    /// Every download, sorted by name.
    pub items: Vec<DownloadInfo>,
}

/// One download.
#[derive(Debug, Serialize, ToSchema)]
pub struct DownloadInfo {
    /// The file name, e.g. `stella-agent-linux-x86_64`.
    pub name: String,
    /// `agent` (a binary) or `deb` (a Debian package).
    pub kind: DownloadKind,
    /// `linux`.
    pub os: String,
    /// As `uname -m` says it: `x86_64`, `aarch64`.
    pub arch: String,
    /// Bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 of the bytes.
    pub sha256: String,
    /// Where to get it, relative to the server: `/downloads/<name>`.
    pub url: String,
}

impl From<Download> for DownloadInfo {
    fn from(download: Download) -> Self {
        DownloadInfo {
            url: format!("/downloads/{}", download.name),
            name: download.name,
            kind: download.kind,
            os: download.os,
            arch: download.arch,
            size: download.size,
            sha256: download.sha256,
        }
    }
}

/// List the downloads.
///
/// Agent binaries (`stella-agent-linux-<arch>`) and Debian packages this server
/// serves, with their sizes and SHA-256. Needs no token.
#[utoipa::path(get, path = "/api/v1/downloads", tag = "downloads", operation_id = "listDownloads",
    responses((status = 200, description = "The downloads, sorted by name", body = DownloadList)))]
pub async fn list_downloads(State(app): State<Arc<App>>) -> Result<Json<DownloadList>, ApiError> {
    let items = app.downloads.list().await?;
    Ok(Json(DownloadList {
        items: items.into_iter().map(DownloadInfo::from).collect(),
    }))
}

/// Download a file, or its checksum.
///
/// The bytes of a download listed by `GET /api/v1/downloads`, streamed with a
/// `content-length`; `<name>.sha256` answers its checksum line as `sha256sum` writes
/// it (`<hex>  <name>`). Names are looked up in the listing, so nothing else can be
/// reached (`not_found`). Needs no token.
#[utoipa::path(get, path = "/downloads/{name}", tag = "downloads", operation_id = "getDownload",
    params(("name" = String, Path, description = "A listed name, or a listed name and `.sha256`")),
    responses(
        (status = 200, description = "The file's bytes", body = Vec<u8>, content_type = "application/octet-stream"),
        (status = 404, description = "No such download (`not_found`)", body = ErrorEnvelope),
    ))]
pub async fn get_download(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    if let Some(listed) = name.strip_suffix(SHA256_SUFFIX) {
        let download = app.downloads.find(listed).await?;
        let line = format!("{}  {}\n", download.sha256, download.name);
        return Ok((
            [(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            line,
        )
            .into_response());
    }
    let download = app.downloads.find(&name).await?;
    let file = tokio::fs::File::open(&download.path)
        .await
        .map_err(|error| AppError::internal("opening a download", &error))?;
    // The length of the file opened, not of the one hashed: a file replaced in between
    // fails the client's checksum instead of being cut short.
    let length = file
        .metadata()
        .await
        .map_err(|error| AppError::internal("reading a download's size", &error))?
        .len();
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok((
        [
            (
                http::header::CONTENT_TYPE,
                "application/octet-stream".to_owned(),
            ),
            (http::header::CONTENT_LENGTH, length.to_string()),
            (
                http::header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}\"", download.name),
            ),
        ],
        body,
    )
        .into_response())
}

/// The agent install script.
///
/// A POSIX shell script that downloads `stella-agent-linux-$(uname -m)` from this
/// server, checks its SHA-256, installs it with a systemd unit and enrols it with a
/// join token. `stella agent token create --install` prints the command that runs it.
/// Needs no token.
#[utoipa::path(get, path = "/install/agent.sh", tag = "downloads", operation_id = "getAgentInstallScript",
    responses((status = 200, description = "The script", body = String, content_type = "text/x-shellscript")))]
pub async fn agent_install_script() -> Response {
    (
        [(http::header::CONTENT_TYPE, "text/x-shellscript")],
        AGENT_INSTALL_SCRIPT,
    )
        .into_response()
}

//! Sticker files on the host: `<sticker_dir>\<target>\<component>.json`, the canonical
//! sticker JSON, and the `.done-<deployment_id>` markers next to them, read all at once
//! with one command (`read-dir`) and written with one (`write-files`).

use std::collections::BTreeMap;

use base64::Engine as _;
use stella_agent_core::{CancellationToken, Sticker};

use crate::error::WinrmError;
use crate::powershell;
use crate::settings::WinrmSettings;
use crate::shell;
use crate::transport::Transport;

/// Names become path components: no separators, no `.`/`..`, nothing hidden, nothing a
/// PowerShell literal or a Windows file name cannot hold.
pub(crate) fn check_name(what: &str, name: &str) -> Result<(), WinrmError> {
    let safe = !name.is_empty()
        && !name.starts_with('.')
        && !name.contains([
            '/', '\\', '\0', '\n', '\r', ':', '*', '?', '"', '<', '>', '|', '\'',
        ]);
    if safe {
        Ok(())
    } else {
        Err(WinrmError::InvalidSettings(format!(
            "{what} name {name:?} cannot name a sticker file"
        )))
    }
}

/// `<sticker_dir>\<target>`.
pub(crate) fn target_dir(sticker_dir: &str, target: &str) -> Result<String, WinrmError> {
    check_name("target", target)?;
    Ok(format!("{sticker_dir}\\{target}"))
}

/// `<component>.json`.
pub(crate) fn file_name(component: &str) -> Result<String, WinrmError> {
    check_name("component", component)?;
    Ok(format!("{component}.json"))
}

/// `.done-<deployment_id>`.
pub(crate) fn marker_name(deployment_id: &str) -> Result<String, WinrmError> {
    check_name("deployment", deployment_id)?;
    Ok(format!(".done-{deployment_id}"))
}

/// What a sticker file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StickerFile {
    Absent,
    /// Not a sticker at all.
    Corrupt,
    Present(Box<Sticker>),
}

/// The files of one target's sticker directory, by name.
#[derive(Debug, Clone, Default)]
pub(crate) struct Dir {
    pub(crate) files: BTreeMap<String, Vec<u8>>,
}

impl Dir {
    pub(crate) fn sticker(&self, component: &str) -> StickerFile {
        match self.files.get(&format!("{component}.json")) {
            None => StickerFile::Absent,
            Some(bytes) => match Sticker::from_json(bytes) {
                Ok(sticker) => StickerFile::Present(Box::new(sticker)),
                Err(_) => StickerFile::Corrupt,
            },
        }
    }

    /// The components that have a sticker file.
    pub(crate) fn components(&self) -> Vec<&str> {
        self.files
            .keys()
            .filter(|name| !name.starts_with('.'))
            .filter_map(|name| name.strip_suffix(".json"))
            .collect()
    }
}

/// Reads the target's sticker directory.
pub(crate) async fn read_dir(
    transport: &Transport,
    settings: &WinrmSettings,
    target: &str,
) -> Result<Dir, WinrmError> {
    let dir = target_dir(&settings.sticker_dir, target)?;
    let output = shell::run(
        transport,
        "reading the sticker directory",
        &powershell::read_dir(&dir),
        settings.command_timeout,
        &CancellationToken::new(),
        |_, _| {},
    )
    .await?;
    if output.exit_code != 0 {
        return Err(remote(transport, "reading the sticker directory", &output));
    }
    let mut files = BTreeMap::new();
    for line in output
        .stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
    {
        let Some((name, encoded)) = line.split_once('\t') else {
            return Err(WinrmError::Failed(format!(
                "reading {dir} on {}: unexpected output line {line:?}",
                transport.endpoint().addr()
            )));
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|e| {
                WinrmError::Failed(format!(
                    "reading {dir} on {}: {name} is not base64 in the output: {e}",
                    transport.endpoint().addr()
                ))
            })?;
        files.insert(name.to_owned(), bytes);
    }
    Ok(Dir { files })
}

/// Writes files (name, bytes) into the target's sticker directory; with `keep_marker`,
/// removes the other `.done-*` markers.
pub(crate) async fn write(
    transport: &Transport,
    settings: &WinrmSettings,
    target: &str,
    files: Vec<(String, Vec<u8>)>,
    keep_marker: Option<&str>,
) -> Result<(), WinrmError> {
    let dir = target_dir(&settings.sticker_dir, target)?;
    let files: Vec<(String, Vec<u8>)> = files
        .into_iter()
        .map(|(name, bytes)| (format!("{dir}\\{name}"), bytes))
        .collect();
    let script = powershell::write_files(&files, keep_marker.map(|keep| (dir.as_str(), keep)));
    let output = shell::run(
        transport,
        "writing sticker files",
        &script,
        settings.command_timeout,
        &CancellationToken::new(),
        |_, _| {},
    )
    .await?;
    if output.exit_code != 0 {
        return Err(remote(transport, "writing sticker files", &output));
    }
    Ok(())
}

pub(crate) fn remote(transport: &Transport, what: &str, output: &shell::Output) -> WinrmError {
    let stderr: Vec<&str> = output.stderr.lines().collect();
    let tail = stderr[stderr.len().saturating_sub(20)..].join("\n");
    WinrmError::Remote {
        addr: transport.endpoint().addr().to_owned(),
        what: what.to_owned(),
        code: output.exit_code,
        stderr: tail,
    }
}

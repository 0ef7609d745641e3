//! Sticker files on the remote host: `<sticker_dir>/<target>/<component>.json`, the
//! canonical sticker JSON, written atomically; and the script mode's
//! `.done-<deployment_id>` markers next to them.

use stella_agent_core::Sticker;

use crate::error::SshError;
use crate::pool::Host;

/// Names become path components: no separators, no `.`/`..`, nothing hidden.
pub(crate) fn check_name(what: &str, name: &str) -> Result<(), SshError> {
    let safe =
        !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\', '\0', '\n']);
    if safe {
        Ok(())
    } else {
        Err(SshError::InvalidSettings(format!(
            "{what} name {name:?} cannot name a sticker file"
        )))
    }
}

/// `<sticker_dir>/<target>`.
pub(crate) fn target_dir(sticker_dir: &str, target: &str) -> Result<String, SshError> {
    check_name("target", target)?;
    Ok(format!("{sticker_dir}/{target}"))
}

/// `<sticker_dir>/<target>/<component>.json`.
pub(crate) fn sticker_path(
    sticker_dir: &str,
    target: &str,
    component: &str,
) -> Result<String, SshError> {
    check_name("component", component)?;
    Ok(format!(
        "{}/{component}.json",
        target_dir(sticker_dir, target)?
    ))
}

/// `<sticker_dir>/<target>/.done-<deployment_id>`.
pub(crate) fn done_marker(
    sticker_dir: &str,
    target: &str,
    deployment_id: &str,
) -> Result<String, SshError> {
    check_name("deployment", deployment_id)?;
    Ok(format!(
        "{}/.done-{deployment_id}",
        target_dir(sticker_dir, target)?
    ))
}

/// What a sticker file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StickerFile {
    Absent,
    /// Not a sticker at all.
    Corrupt,
    Present(Box<Sticker>),
}

impl StickerFile {
    pub(crate) fn sticker(&self) -> Option<&Sticker> {
        match self {
            StickerFile::Present(sticker) => Some(sticker.as_ref()),
            _ => None,
        }
    }
}

pub(crate) async fn read(host: &mut Host, path: &str) -> Result<StickerFile, SshError> {
    Ok(match host.read_file(path.to_owned()).await? {
        None => StickerFile::Absent,
        Some(bytes) => match Sticker::from_json(&bytes) {
            Ok(sticker) => StickerFile::Present(Box::new(sticker)),
            Err(_) => StickerFile::Corrupt,
        },
    })
}

pub(crate) async fn write(
    host: &mut Host,
    sticker_dir: &str,
    sticker: &Sticker,
) -> Result<(), SshError> {
    let path = sticker_path(sticker_dir, &sticker.target, &sticker.component)?;
    host.write_file(path, sticker.to_canonical_json().into_bytes())
        .await
}

/// Writes the sticker unless the file already holds exactly it; says whether it wrote.
pub(crate) async fn ensure(
    host: &mut Host,
    sticker_dir: &str,
    sticker: &Sticker,
) -> Result<bool, SshError> {
    let path = sticker_path(sticker_dir, &sticker.target, &sticker.component)?;
    if read(host, &path).await?.sticker() == Some(sticker) {
        return Ok(false);
    }
    write(host, sticker_dir, sticker).await?;
    Ok(true)
}

//! Script mode: the target's `script` runs on the host through the remote user's shell,
//! with the release in environment variables (exported on the command line, since sshd
//! usually refuses `setenv`). After it succeeds a marker
//! `<sticker_dir>/<target>/.done-<deployment_id>` is written, then the stickers; a
//! re-delivery or a retry of the same deployment that finds the marker does not run the
//! script again. A script interrupted mid-run (the connection lost) is run again, so
//! scripts must be idempotent.

use stella_agent_core::{CancellationToken, ComponentSpec, DeployTask, Progress, Sticker};

use crate::conn::StreamKind;
use crate::error::SshError;
use crate::pool::Host;
use crate::quote::shell_quote;
use crate::settings::SshSettings;
use crate::stickers::{self, StickerFile};

/// The variables the script gets, in order.
pub(crate) fn script_env(
    task: &DeployTask,
    components: &[&ComponentSpec],
) -> Vec<(String, String)> {
    let mut env = vec![
        ("STELLA_RELEASE".to_owned(), task.release.clone()),
        ("STELLA_VERSION".to_owned(), task.version.clone()),
        ("STELLA_ENVIRONMENT".to_owned(), task.environment.clone()),
        ("STELLA_TARGET".to_owned(), task.target.name.clone()),
        ("STELLA_DEPLOYMENT".to_owned(), task.deployment_id.clone()),
        (
            "STELLA_COMPONENTS".to_owned(),
            components
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(" "),
        ),
    ];
    for component in components {
        let suffix = env_suffix(&component.name);
        env.push((format!("STELLA_IMAGE_{suffix}"), component.image.clone()));
        env.push((
            format!("STELLA_DIGEST_{suffix}"),
            component.digest().unwrap_or_default().to_owned(),
        ));
    }
    env
}

/// A component name as part of a variable name: upper case, anything not
/// alphanumeric as `_`.
pub(crate) fn env_suffix(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// The command line: the exports, then the script.
pub(crate) fn command_line(env: &[(String, String)], script: &str) -> String {
    let mut line = String::new();
    for (key, value) in env {
        line.push_str(&format!("export {key}={}; ", shell_quote(value)));
    }
    line.push_str(script);
    line
}

/// Runs the script unless this deployment's marker says it ran, then writes the
/// stickers. Returns the stickers and whether the script ran now.
pub(crate) async fn deploy(
    host: &mut Host,
    task: &DeployTask,
    settings: &SshSettings,
    components: &[&ComponentSpec],
    progress: &Progress,
    cancel: &CancellationToken,
) -> Result<(Vec<Sticker>, bool), SshError> {
    let target = task.target.name.as_str();
    let marker = stickers::done_marker(&settings.sticker_dir, target, &task.deployment_id)?;
    let done = host.read_file(marker.clone()).await?.is_some();
    let mut ran = false;
    if done {
        progress.report(format!(
            "the script already ran for deployment {} ({marker} exists); not running it again",
            task.deployment_id
        ));
    } else {
        if cancel.is_cancelled() {
            return Err(SshError::Cancelled);
        }
        let script = settings.script.clone().unwrap_or_default();
        let env = script_env(task, components);
        progress.report(format!(
            "running the script on {} as {}: {script} (up to {} s)",
            host.addr(),
            settings.endpoint.user,
            settings.command_timeout.as_secs()
        ));
        let lines = progress.clone();
        let output = host
            .exec_streaming(
                "the script",
                command_line(&env, &script),
                move |kind, line| match kind {
                    StreamKind::Stdout => lines.report(format!("script: {line}")),
                    StreamKind::Stderr => lines.report(format!("script (stderr): {line}")),
                },
            )
            .await?;
        if output.status != 0 {
            return Err(host.remote_error("the script", &output));
        }
        progress.report("the script succeeded".to_owned());
        host.write_file(marker.clone(), task.deployment_id.clone().into_bytes())
            .await?;
        ran = true;
    }
    let mut written = Vec::new();
    for component in components {
        let path = stickers::sticker_path(&settings.sticker_dir, target, &component.name)?;
        let sticker = match stickers::read(host, &path).await? {
            StickerFile::Present(sticker) if sticker.verify() && task.wrote(&sticker) => *sticker,
            _ => {
                let sticker = task.sticker(component, progress.agent_id());
                stickers::write(host, &settings.sticker_dir, &sticker).await?;
                progress.report(format!("{}: sticker written to {path}", component.name));
                sticker
            }
        };
        written.push(sticker);
    }
    // Markers of earlier deployments are no longer needed.
    let dir = stickers::target_dir(&settings.sticker_dir, target)?;
    let keep = format!(".done-{}", task.deployment_id);
    let cleanup = format!(
        "find {} -maxdepth 1 -name '.done-*' ! -name {} -type f -delete 2>/dev/null; true",
        shell_quote(&dir),
        shell_quote(&keep)
    );
    host.run("removing old markers", cleanup).await?;
    Ok((written, ran))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_name_the_release_and_each_component() {
        let task: DeployTask = serde_json::from_value(serde_json::json!({
            "deployment_id": "dep-1", "decision_id": "sha256:d", "environment": "prod",
            "release": "shop", "version": "1.2.3",
            "target": {"name": "edge", "kind": "ssh", "settings": {}},
            "components": [
                {"name": "web-api", "image": "r/api@sha256:aa"},
                {"name": "db", "image": "r/db@sha256:bb"}
            ]
        }))
        .expect("task");
        let components: Vec<&ComponentSpec> = task.components.iter().collect();
        let env = script_env(&task, &components);
        let get = |k: &str| {
            env.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("STELLA_COMPONENTS"), Some("web-api db"));
        assert_eq!(get("STELLA_IMAGE_WEB_API"), Some("r/api@sha256:aa"));
        assert_eq!(get("STELLA_DIGEST_DB"), Some("sha256:bb"));
        assert_eq!(get("STELLA_TARGET"), Some("edge"));
        let line = command_line(&[("A".into(), "it's".into())], "./deploy.sh");
        assert_eq!(line, "export A='it'\\''s'; ./deploy.sh");
    }
}

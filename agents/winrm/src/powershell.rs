//! The PowerShell the agent runs on the host: the deploy script with the release in
//! `$env:STELLA_*` variables, and three fixed scripts for the sticker directory. Each
//! fixed script opens with a `# stella: NAME` line and takes its parameters as
//! single-quoted literals on lines of their own; the test double interprets exactly these
//! forms (see `tests/src/doubles/winrm_double.py`), so change both together.

use stella_agent_core::{ComponentSpec, DeployTask};

/// A PowerShell single-quoted string literal: `'` doubled.
pub fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// The variables the script gets, in order: the same names as the `ssh` kind's.
pub fn script_env(task: &DeployTask, components: &[&ComponentSpec]) -> Vec<(String, String)> {
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

/// A component name as part of a variable name: upper case, anything not alphanumeric
/// as `_`.
pub fn env_suffix(name: &str) -> String {
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

/// The deploy script: one `$env:NAME = '…'` line per variable, then the target's script.
pub fn deploy_script(env: &[(String, String)], script: &str) -> String {
    let mut text = String::new();
    for (key, value) in env {
        text.push_str(&format!("$env:{key} = {}\n", quote(value)));
    }
    text.push_str(script);
    text.push('\n');
    text
}

/// Prints `NAME<TAB>BASE64` for each file in `dir` (nothing when it does not exist).
pub fn read_dir(dir: &str) -> String {
    format!(
        concat!(
            "# stella: read-dir\n",
            "$dir = {dir}\n",
            "if (Test-Path -LiteralPath $dir -PathType Container) {{\n",
            "  Get-ChildItem -LiteralPath $dir -File -Force | ForEach-Object {{\n",
            "    $_.Name + \"`t\" + [Convert]::ToBase64String([IO.File]::ReadAllBytes($_.FullName))\n",
            "  }}\n",
            "}}\n"
        ),
        dir = quote(dir)
    )
}

/// Writes each (path, bytes) through a `.tmp` file renamed into place, creating the
/// directories; then, when `cleanup` is `(dir, keep)`, removes the `.done-*` markers
/// in `dir` other than `keep`.
pub fn write_files(files: &[(String, Vec<u8>)], cleanup: Option<(&str, &str)>) -> String {
    use base64::Engine as _;
    let mut text = String::from("# stella: write-files\n$ErrorActionPreference = 'Stop'\n");
    for (path, bytes) in files {
        text.push_str(&format!(
            "$path = {}\n$bytes = [Convert]::FromBase64String({})\n",
            quote(path),
            quote(&base64::engine::general_purpose::STANDARD.encode(bytes))
        ));
        text.push_str(concat!(
            "New-Item -ItemType Directory -Force -Path (Split-Path -Parent $path) | Out-Null\n",
            "[IO.File]::WriteAllBytes($path + '.tmp', $bytes)\n",
            "Move-Item -Force -LiteralPath ($path + '.tmp') -Destination $path\n"
        ));
    }
    if let Some((dir, keep)) = cleanup {
        text.push_str(&format!(
            concat!(
                "$dir = {}\n$keep = {}\n",
                "Get-ChildItem -LiteralPath $dir -File -Force -Filter '.done-*' | ",
                "Where-Object {{ $_.Name -ne $keep }} | Remove-Item -Force\n"
            ),
            quote(dir),
            quote(keep)
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_and_scripts() {
        assert_eq!(quote("it's"), "'it''s'");
        let script = deploy_script(
            &[("STELLA_VERSION".into(), "1.0".into())],
            "& C:\\deploy.ps1",
        );
        assert_eq!(script, "$env:STELLA_VERSION = '1.0'\n& C:\\deploy.ps1\n");
        let write = write_files(
            &[(r"C:\s\t\web.json".to_owned(), b"{}".to_vec())],
            Some((r"C:\s\t", ".done-d1")),
        );
        assert!(write.starts_with("# stella: write-files\n"));
        assert!(write.contains(
            "$path = 'C:\\s\\t\\web.json'\n$bytes = [Convert]::FromBase64String('e30=')"
        ));
        assert!(write.contains("$keep = '.done-d1'"));
        assert!(read_dir(r"C:\s\t").contains("$dir = 'C:\\s\\t'\n"));
    }
}

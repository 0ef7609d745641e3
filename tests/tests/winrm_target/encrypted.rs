//! NTLM over plain HTTP: every envelope sealed and signed (MS-WSMV 2.2.9.1.1), opened
//! by the double with pyspnego's NTLM context; pywinrm's encryption against the same
//! double as the cross-check.

use super::*;

const PYWINRM_ENCRYPTED: &str = r#"
import sys, winrm
endpoint, user, password = sys.argv[1:4]
session = winrm.Session(endpoint, auth=(user, password), transport="ntlm",
                        message_encryption="always")
r = session.run_cmd("echo sealed-by-pywinrm")
assert (r.status_code, r.std_out) == (0, b"sealed-by-pywinrm\n"), r.__dict__
print("ok")
"#;

async fn http_host(prefix: &str) -> anyhow::Result<Host> {
    init_tracing();
    Ok(Host {
        double: WinrmDouble::start_http().await?,
        target: WinrmTarget::new(),
        name: format!("{prefix}-{}", suffix()),
    })
}

#[tokio::test]
async fn ntlm_over_http_encrypts_every_envelope() -> anyhow::Result<()> {
    let host = http_host("winrm-sealed").await?;
    let mut settings = host.settings("ntlm", "echo sealed-$STELLA_VERSION; echo careful >&2");
    settings.remove("ca_file");
    assert!(settings["endpoint"].starts_with("http://"));
    let task = host.task("1.0.0", settings.clone());
    let (outcome, lines) = host.apply(&task).await;
    let outcome =
        outcome.map_err(|e| anyhow::anyhow!("{e}: {lines:#?}\n{}", host.double.log_text()))?;
    assert!(
        lines.iter().any(|l| l == "script: sealed-1.0.0"),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l == "script (stderr): careful"),
        "{lines:#?}"
    );
    assert_eq!(outcome.stickers.len(), 2);
    assert_eq!(host.target.detect_drift(&task).await?, vec![]);
    let records = host.double.records()?;
    assert!(records.len() >= 8, "{records:#?}");
    assert!(
        records
            .iter()
            .all(|r| r["encrypted"] == true && r["auth"] == "ntlm"),
        "{records:#?}"
    );

    // A wrong password is refused before anything is sent.
    let mut wrong = host.task("1.0.1", settings);
    wrong
        .secrets
        .0
        .insert("win_password".to_owned(), "not-the-password".to_owned());
    let (result, _) = host.apply(&wrong).await;
    let error = result.expect_err("wrong password");
    assert!(error.contains("refused the credentials"), "{error}");

    // pywinrm's message encryption is accepted by the same double.
    let output = tokio::process::Command::new("python3")
        .args(["-c", PYWINRM_ENCRYPTED, &host.double.endpoint(), USER])
        .arg(&host.double.password)
        .output()
        .await?;
    assert!(
        output.status.success() && output.stdout.starts_with(b"ok"),
        "pywinrm: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        host.double.log_text()
    );
    // And an unencrypted envelope over http is refused, as Windows does by default.
    let unencrypted = PYWINRM_ENCRYPTED.replace(r#""always""#, r#""never""#);
    let output = tokio::process::Command::new("python3")
        .args(["-c", &unencrypted, &host.double.endpoint(), USER])
        .arg(&host.double.password)
        .output()
        .await?;
    assert!(!output.status.success(), "accepted unencrypted");
    assert!(
        host.double
            .log_text()
            .contains("refused an unencrypted envelope over http"),
        "{}",
        host.double.log_text()
    );
    Ok(())
}

//! pywinrm, a real WinRM client, drives the same double: the double accepts both, and
//! Stella's envelopes carry the same essential elements as pywinrm's (action URIs,
//! resource URI, the WS-Addressing and WS-Management headers, shell options, body
//! elements), so the double is not a mirror of Stella's own client.

use std::collections::BTreeSet;

use serde_json::Value;

use super::*;

const PYWINRM: &str = r#"
import sys, winrm
endpoint, user, password, transport = sys.argv[1:5]
session = winrm.Session(endpoint, auth=(user, password), transport=transport,
                        server_cert_validation="ignore", message_encryption="never")
r = session.run_cmd("echo from-pywinrm; echo oops >&2; exit 5")
assert (r.status_code, r.std_out, r.std_err) == (5, b"from-pywinrm\n", b"oops\n"), r.__dict__
r = session.run_ps("echo from-ps")
assert (r.status_code, r.std_out) == (0, b"from-ps\n"), r.__dict__
print("ok")
"#;

/// (action, what identifies its envelope) for one client's records.
fn shapes(records: &[Value], pywinrm: bool) -> BTreeSet<(String, String)> {
    records
        .iter()
        .filter(|r| (r["client"] == "Python WinRM client") == pywinrm)
        .filter(|r| r.get("fault").is_none())
        .map(|r| {
            let options: Vec<&str> = r["options"]
                .as_object()
                .map(|o| o.keys().map(String::as_str).collect())
                .unwrap_or_default();
            (
                r["action"].as_str().unwrap_or_default().to_owned(),
                format!(
                    "resource={} headers={} options={} body={}",
                    r["resource_uri"],
                    r["headers"],
                    options.join(","),
                    r["body"]
                ),
            )
        })
        .collect()
}

#[tokio::test]
async fn pywinrm_and_stella_send_the_same_envelopes_to_the_double() -> anyhow::Result<()> {
    let host = Host::start("winrm-pywinrm").await?;
    for transport in ["basic", "ntlm"] {
        let output = tokio::process::Command::new("python3")
            .args(["-c", PYWINRM, &host.double.endpoint(), USER])
            .arg(&host.double.password)
            .arg(transport)
            .output()
            .await?;
        assert!(
            output.status.success() && output.stdout.starts_with(b"ok"),
            "pywinrm over {transport}: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            host.double.log_text()
        );
    }
    let task = host.task("1.0.0", host.settings("ntlm", "echo from-stella"));
    let (result, lines) = host.apply(&task).await;
    result.map_err(|e| anyhow::anyhow!("{e}: {lines:#?}"))?;

    let records = host.double.records()?;
    let theirs = shapes(&records, true);
    let ours = shapes(&records, false);
    let actions = |shapes: &BTreeSet<(String, String)>| -> BTreeSet<String> {
        shapes.iter().map(|(a, _)| a.clone()).collect()
    };
    // pywinrm sends Signal after each command; Stella only to stop one, so compare the
    // operations both made.
    let both: BTreeSet<String> = actions(&theirs)
        .intersection(&actions(&ours))
        .cloned()
        .collect();
    for action in [
        stella_target_winrm::ACTION_CREATE,
        stella_target_winrm::ACTION_COMMAND,
        stella_target_winrm::ACTION_RECEIVE,
        stella_target_winrm::ACTION_DELETE,
    ] {
        assert!(
            both.contains(action),
            "{action} not sent by both: {records:#?}"
        );
    }
    for action in &both {
        let of = |shapes: &BTreeSet<(String, String)>| -> BTreeSet<String> {
            shapes
                .iter()
                .filter(|(a, _)| a == action)
                .map(|(_, s)| s.clone())
                .collect()
        };
        assert_eq!(of(&theirs), of(&ours), "{action}");
    }
    assert!(
        records
            .iter()
            .all(|r| r["resource_uri"] == stella_target_winrm::RESOURCE_URI_CMD),
        "{records:#?}"
    );
    Ok(())
}

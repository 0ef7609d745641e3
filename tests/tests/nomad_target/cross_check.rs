//! A real Nomad client, `python-nomad` (installed by `cargo xtask test`), against the
//! double: what the double answers parses as Nomad's answers do.

use super::*;

const SCRIPT: &str = r#"
import json, sys, time
import nomad

host, port = sys.argv[1], int(sys.argv[2])
n = nomad.Nomad(host=host, port=port, timeout=10)
job = json.loads(sys.argv[3])
registered = n.job.register_job(job["ID"], {"Job": job})
assert registered["EvalID"], registered
got = n.job.get_job(job["ID"])
assert got["ID"] == job["ID"] and got["Version"] == 0, got
again = n.job.register_job(job["ID"], {"Job": got})
assert again["JobModifyIndex"] == got["JobModifyIndex"], (again, got)
job["TaskGroups"][0]["Count"] = 3
n.job.register_job(job["ID"], {"Job": job})
versions = n.job.get_versions(job["ID"])
assert [v["Version"] for v in versions["Versions"]] == [1, 0], versions
for _ in range(100):
    deployment = n.job.get_deployment(job["ID"])
    if deployment and deployment["JobVersion"] == 1 and deployment["Status"] == "successful":
        break
    time.sleep(0.05)
else:
    raise SystemExit("no successful deployment of version 1: %r" % deployment)
assert deployment["TaskGroups"]["web"]["HealthyAllocs"] == 3, deployment
jobs = n.jobs.get_jobs()
assert [j["ID"] for j in jobs] == [job["ID"]], jobs
try:
    n.job.get_job("nope")
    raise SystemExit("a missing job was found")
except nomad.api.exceptions.URLNotFoundNomadException as e:
    assert e.nomad_resp.text == "job not found", e.nomad_resp.text
print("ok", deployment["ID"])
"#;

#[tokio::test]
async fn python_nomad_reads_what_the_double_answers() -> anyhow::Result<()> {
    init_tracing();
    let nomad = NomadDouble::start().await?;
    let port = nomad
        .address
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    let job = example_job("cross", &[("web", 2, &["api"])]);
    let output = tokio::process::Command::new("python3")
        .args(["-c", SCRIPT, "127.0.0.1", &port, &job.to_string()])
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "python-nomad: {stdout}\n{stderr}");
    assert!(stdout.starts_with("ok "), "{stdout}");
    assert_eq!(nomad.versions("cross").len(), 2);
    Ok(())
}

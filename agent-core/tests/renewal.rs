//! Certificate renewal: on demand and at half-life.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use stella_agent_core::identity::files;
use stella_agent_core::{enrol, renew, Identity, TargetRegistry};
use stella_pki::AgentIdentity;
use support::{
    agent_config, init_tracing, wait_for, DataDir, RunningAgent, ScriptedControlPlane, DEADLINE,
};

fn spiffe_of(cert_pem: &str) -> String {
    let der = stella_pki::pem_to_der_certs(cert_pem).expect("pem");
    AgentIdentity::from_certificate_der(der[0].as_ref())
        .expect("identity")
        .spiffe_uri()
}

#[tokio::test]
async fn renew_swaps_the_certificate_and_key_on_disk() {
    init_tracing();
    let control_plane = ScriptedControlPlane::start().await;
    let data_dir = DataDir::new();
    let config = agent_config(&control_plane, &data_dir);
    let before = enrol(&config).await.expect("enrol");

    let after = renew(&before, &data_dir.path()).await.expect("renew");

    assert_eq!(control_plane.script.renewals.load(Ordering::SeqCst), 1);
    assert_eq!(after.agent_id, before.agent_id);
    assert_ne!(after.key_pem, before.key_pem, "a new key");
    assert_ne!(after.cert_pem, before.cert_pem, "a new certificate");
    assert_eq!(spiffe_of(&after.cert_pem), spiffe_of(&before.cert_pem));
    let dir = data_dir.path();
    assert_eq!(
        std::fs::read_to_string(dir.join(files::AGENT_KEY)).expect("key"),
        after.key_pem
    );
    assert_eq!(
        std::fs::read_to_string(dir.join(files::AGENT_PEM)).expect("cert"),
        after.cert_pem
    );
    assert!(!dir.join(files::NEXT_KEY).exists());
    assert!(!dir.join(files::RENEWAL_JSON).exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(files::AGENT_KEY))
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert_eq!(Identity::load(&dir).expect("load"), Some(after.clone()));

    // The new credentials work: the old key is gone, a session opens with the new one.
    let agent = RunningAgent::start(config, TargetRegistry::new());
    wait_for("a session with the renewed certificate", DEADLINE, || {
        (control_plane.script.open_sessions() == 1).then_some(())
    })
    .await;
    agent.stop().await;
}

#[tokio::test]
async fn the_running_agent_renews_at_half_life() {
    init_tracing();
    let control_plane = ScriptedControlPlane::start().await;
    // 4 s certificates: renewed after about 2 s, and again after each renewal.
    *control_plane.script.cert_validity.lock().expect("lock") = Duration::from_secs(4);
    let data_dir = DataDir::new();
    let config = agent_config(&control_plane, &data_dir);
    let agent = RunningAgent::start(config, TargetRegistry::new());
    // Read the files, not `Identity`: the agent owns the data dir while it runs.
    let dir = data_dir.path();
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    let (enrolled_cert, enrolled_key) = wait_for("enrolment", DEADLINE, || {
        read(files::AGENT_JSON)?;
        Some((read(files::AGENT_PEM)?, read(files::AGENT_KEY)?))
    })
    .await;

    wait_for("two renewals", DEADLINE, || {
        (control_plane.script.renewals.load(Ordering::SeqCst) >= 2).then_some(())
    })
    .await;
    let (renewed_cert, renewed_key) = wait_for("the renewed credentials on disk", DEADLINE, || {
        let cert = read(files::AGENT_PEM)?;
        let key = read(files::AGENT_KEY)?;
        (cert != enrolled_cert && key != enrolled_key).then_some((cert, key))
    })
    .await;
    assert_eq!(spiffe_of(&renewed_cert), spiffe_of(&enrolled_cert));
    assert!(renewed_key.contains("BEGIN PRIVATE KEY"));

    // New sessions use the renewed certificate (the first one has expired by now).
    control_plane.script.drop_sessions();
    wait_for("a session after renewal", DEADLINE, || {
        (control_plane.script.hellos().len() >= 2 && control_plane.script.open_sessions() == 1)
            .then_some(())
    })
    .await;
    agent.stop().await;
}

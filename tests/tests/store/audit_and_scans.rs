//! The audit log's chain, and scan documents and verdicts.

use super::*;

store_suite!(
    audit_entries_and_checkpoints_are_unique_by_seq,
    concurrent_audit_writers_leave_one_contiguous_chain,
    scan_documents_are_new_once_per_content_and_digest,
    a_verdict_read_earlier_never_replaces_one_read_later,
    imported_evidence_is_kept_once_per_decision,
);

async fn audit_entries_and_checkpoints_are_unique_by_seq(f: &Fixture) {
    use stella_decision::audit::{AuditEntry, Checkpoint};
    let store = &f.store;
    assert!(store.audit_head().await.ok_or_panic("head").is_none());
    let first = AuditEntry::new(None, NOW, "admin", "POST /x", "/x", "sha256:00", "201");
    store
        .append_audit_entries(std::slice::from_ref(&first))
        .await
        .ok_or_panic("append");
    // Another writer's entry 1, linked to the same genesis: refused.
    let rival = AuditEntry::new(None, NOW + 1, "bob", "POST /y", "/y", "sha256:01", "201");
    assert_conflict(
        store.append_audit_entries(&[rival]).await,
        "audit entry",
        "1",
    );
    let second = AuditEntry::new(
        Some(&first),
        NOW + 2,
        "a\u{e9}\"b",
        "DELETE /z/{id}",
        "/z/1",
        "none",
        "403",
    );
    store
        .append_audit_entries(std::slice::from_ref(&second))
        .await
        .ok_or_panic("append");
    assert_eq!(
        store.audit_head().await.ok_or_panic("head"),
        Some(second.clone())
    );
    // A batch whose last seq is free but whose first is taken is refused whole: no
    // entry of it may be linked after a head that is not its own.
    let stale = AuditEntry::new(
        Some(&first),
        NOW + 5,
        "carol",
        "POST /w",
        "/w",
        "none",
        "201",
    );
    let after_stale = AuditEntry::new(
        Some(&stale),
        NOW + 6,
        "carol",
        "POST /v",
        "/v",
        "none",
        "201",
    );
    assert_conflict(
        store.append_audit_entries(&[stale, after_stale]).await,
        "audit entry",
        "2",
    );
    assert_eq!(
        store.list_audit_entries(0, 10).await.ok_or_panic("list"),
        vec![first.clone(), second.clone()]
    );
    assert_eq!(
        store.list_audit_entries(1, 10).await.ok_or_panic("list"),
        vec![second.clone()]
    );
    assert!(
        store
            .list_audit_entries(0, 1)
            .await
            .ok_or_panic("list")
            .len()
            == 1
    );

    let key = stella_decision::dsse::SigningKey::from_seed([3; 32]);
    let checkpoint = Checkpoint::sign(&key, &second, NOW + 3);
    store
        .add_audit_checkpoint(&checkpoint)
        .await
        .ok_or_panic("checkpoint");
    let again = Checkpoint::sign(&key, &second, NOW + 4);
    assert_conflict(
        store.add_audit_checkpoint(&again).await,
        "audit checkpoint",
        "2",
    );
    let listed = store
        .list_audit_checkpoints(0, 10)
        .await
        .ok_or_panic("checkpoints");
    assert_eq!(listed, vec![checkpoint]);
    assert!(store
        .list_audit_checkpoints(2, 10)
        .await
        .ok_or_panic("checkpoints")
        .is_empty());
    let entries = store.list_audit_entries(0, 10).await.ok_or_panic("list");
    stella_decision::audit::verify_chain(&entries, &listed, &[key.public_key()])
        .unwrap_or_else(|fault| panic!("{fault}"));
}

async fn concurrent_audit_writers_leave_one_contiguous_chain(f: &Fixture) {
    use stella_decision::audit::{verify_chain, AuditEntry};
    const WRITERS: usize = 6;
    const EACH: usize = 25;
    // Two pools, as two replicas would have; three writers on each.
    let other = connect(&f.url).await;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = if w % 2 == 0 {
                f.store.clone()
            } else {
                other.clone()
            };
            tokio::spawn(async move {
                let mut conflicts = 0;
                for i in 0..EACH {
                    loop {
                        let head = store.audit_head().await.ok_or_panic("head");
                        let entry = AuditEntry::new(
                            head.as_ref(),
                            NOW,
                            format!("writer-{w}"),
                            "POST /x",
                            format!("/x/{i}"),
                            "sha256:00",
                            "201",
                        );
                        match store.append_audit_entries(&[entry]).await {
                            Ok(()) => break,
                            Err(StoreError::Conflict { .. }) => conflicts += 1,
                            Err(error) => panic!("append: {}", chain(&error)),
                        }
                    }
                }
                conflicts
            })
        })
        .collect();
    let mut conflicts = 0;
    for writer in writers {
        conflicts += writer.await.unwrap_or_else(|e| panic!("writer: {e}"));
    }
    let entries = f
        .store
        .list_audit_entries(0, 10_000)
        .await
        .ok_or_panic("list");
    let seqs: Vec<i64> = entries.iter().map(|e| e.seq).collect();
    let expected: Vec<i64> = (1..=(WRITERS * EACH) as i64).collect();
    assert_eq!(seqs, expected);
    let summary = verify_chain(&entries, &[], &[]).unwrap_or_else(|fault| panic!("{fault}"));
    assert_eq!(summary.entries, WRITERS * EACH);
    eprintln!("{} lost races for a seq, each retried", conflicts);
}

async fn scan_documents_are_new_once_per_content_and_digest(f: &Fixture) {
    use stella_control_plane::store::ScanLink;
    let store = &f.store;
    fn link(digest: &str) -> ScanLink<'_> {
        ScanLink {
            digest,
            image: "registry.example.com/web:1",
        }
    }
    let (d1, d2) = (
        format!("sha256:{}", "1".repeat(64)),
        format!("sha256:{}", "2".repeat(64)),
    );
    let (d1, d2) = (d1.as_str(), d2.as_str());
    let report = scan_document(r#"{"SchemaVersion":2}"#, "trivy", 1_000);
    assert!(store
        .import_scan_document(&report, Some(link(d1)))
        .await
        .ok_or_panic("scan store"));
    assert!(!store
        .import_scan_document(&report, Some(link(d1)))
        .await
        .ok_or_panic("scan store"));
    // The same report for another image is a new link.
    assert!(store
        .import_scan_document(&report, Some(link(d2)))
        .await
        .ok_or_panic("scan store"));
    let vex = scan_document(r#"{"@context":"https://openvex.dev/ns"}"#, "openvex", 1_001);
    assert!(store
        .import_scan_document(&vex, None)
        .await
        .ok_or_panic("scan store"));
    assert!(!store
        .import_scan_document(&vex, None)
        .await
        .ok_or_panic("scan store"));

    let newer = scan_document(r#"{"SchemaVersion":2,"x":1}"#, "trivy", 2_000);
    assert!(store
        .import_scan_document(&newer, Some(link(d1)))
        .await
        .ok_or_panic("scan store"));
    let latest = store
        .latest_report(d1, "trivy")
        .await
        .ok_or_panic("report")
        .unwrap_or_else(|| panic!("no report"));
    assert_eq!(latest.id, newer.id);
    assert!(store
        .latest_report(d1, "grype")
        .await
        .ok_or_panic("scan store")
        .is_none());
    let listed = store.scan_reports(d1).await.ok_or_panic("scan store");
    let ids: Vec<&str> = listed.iter().map(|r| r.document_id.as_str()).collect();
    assert_eq!(ids, [newer.id.as_str(), report.id.as_str()]);
    assert_eq!(listed[1].imported_by, "alice");
    assert_eq!(listed[1].imported_at_ms, 1_000, "the first import stands");
    let vex_documents = store
        .list_documents("openvex")
        .await
        .ok_or_panic("scan store");
    assert_eq!(vex_documents.len(), 1);
}

async fn a_verdict_read_earlier_never_replaces_one_read_later(f: &Fixture) {
    use stella_control_plane::store::{EnvironmentVerdict, VerdictUpdate};
    let store = &f.store;
    store
        .create_environment(&environment("prod", None, 1))
        .await
        .ok_or_panic("scan store");
    let verdict = |passed: bool, at_ms: i64| EnvironmentVerdict {
        environment: "prod".to_owned(),
        release: "web".to_owned(),
        version: "1".to_owned(),
        passed,
        reasons: if passed {
            Vec::new()
        } else {
            vec![format!("blocked at {at_ms}")]
        },
        at_ms,
    };
    assert_eq!(
        store
            .set_verdict(&verdict(true, 100))
            .await
            .ok_or_panic("scan store"),
        VerdictUpdate::Stored { previous: None }
    );
    assert_eq!(
        store
            .set_verdict(&verdict(false, 200))
            .await
            .ok_or_panic("scan store"),
        VerdictUpdate::Stored {
            previous: Some(verdict(true, 100))
        }
    );
    // An evaluation that read its documents before the stored one did is dropped.
    assert_eq!(
        store
            .set_verdict(&verdict(true, 150))
            .await
            .ok_or_panic("scan store"),
        VerdictUpdate::Stale {
            current: verdict(false, 200)
        }
    );
    assert_eq!(
        store.get_verdict("prod").await.ok_or_panic("scan store"),
        Some(verdict(false, 200))
    );
    assert_eq!(
        store.get_verdict("dev").await.ok_or_panic("scan store"),
        None
    );
}

async fn imported_evidence_is_kept_once_per_decision(f: &Fixture) {
    use stella_control_plane::domain::ImportedEvidence;
    let store = &f.store;
    let evidence = |id: &str, release: &str, at_ms: i64| ImportedEvidence {
        decision_id: format!("sha256:{}", id.repeat(64)),
        key_id: "ab".repeat(32),
        outcome: "allowed".to_owned(),
        release: release.to_owned(),
        version: "1".to_owned(),
        environment: "prod".to_owned(),
        // Not UTF-8: packets are gzip.
        packet: vec![0x1f, 0x8b, 0x00, 0xff, 0x80],
        kit_manifest: format!("sha256:{}", "c".repeat(64)),
        imported_by: "admin".to_owned(),
        imported_at_ms: at_ms,
    };
    let first = evidence("1", "shop", NOW);
    assert!(store
        .put_imported_evidence(&first)
        .await
        .ok_or_panic("imported evidence"));
    // The same decision again, later: nothing changes.
    assert!(!store
        .put_imported_evidence(&evidence("1", "shop", NOW + 10))
        .await
        .ok_or_panic("imported evidence"));
    let second = evidence("2", "api", NOW + 20);
    assert!(store
        .put_imported_evidence(&second)
        .await
        .ok_or_panic("imported evidence"));
    assert_eq!(
        store
            .get_imported_evidence(&first.decision_id)
            .await
            .ok_or_panic("imported evidence"),
        first
    );
    let all = store
        .list_imported_evidence(None)
        .await
        .ok_or_panic("imported evidence");
    assert_eq!(all, vec![second.clone(), first.clone()], "newest first");
    assert_eq!(
        store
            .list_imported_evidence(Some("shop"))
            .await
            .ok_or_panic("imported evidence"),
        vec![first]
    );
    assert_not_found(
        store.get_imported_evidence("sha256:none").await,
        "imported evidence",
        "sha256:none",
    );
    // No promotion of this release: no decisions.
    assert!(store
        .decision_ids_of_release("shop", "1")
        .await
        .ok_or_panic("decisions")
        .is_empty());
}

//! Drift: how targets differ from their desired state, and the loop that finds and reports
//! it.
//!
//! What a target should run is its desired state ([`crate::desired`]), updated locally
//! when this agent finishes a deploy successfully, so the round right after a deploy does
//! not compare with the previous release while the server's new `DesiredState` is on its
//! way.
//!
//! The drift loop runs a round every `drift_interval_seconds`, and soon (debounced by
//! [`DEBOUNCE`]) after a target kind's [`Target::watch`] notifies, after a `DesiredState`
//! arrives, after a deploy task finishes and when a session comes up. A round calls
//! [`Target::detect_drift`] for each desired target whose kind is registered and that no
//! deploy task is changing, and sends a `DriftReport` per finding.
//!
//! Resolution: a target that had findings in an earlier round and has none now gets one
//! target-wide `resolved` report. A finding that ends while others of its target last is
//! resolved on its own: a `resolved` report naming its component and `resolved_kind`,
//! sent before the round's findings (so a server that only knows target-wide resolution
//! reopens the others at once). The agent cannot know what it reported before it
//! started, so the first time it checks a target after a start it treats every finding
//! as possibly open on the server: a clean target gets the target-wide `resolved` (the
//! server resolves idempotently); a target with findings gets a per-finding `resolved`
//! for every kind not found on each desired component. (An `unexpected` finding on a
//! component the desired state does not name cannot be listed so; it ends with the
//! target-wide resolution.)
//!
//! Reports go out only while a session is up and rounds run only then; nothing is queued
//! across a disconnection (the first round of the next session reports afresh). A
//! detection error is logged and counted (`drift_detection_errors_total`) and leaves the
//! target's state as it was.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use stella_proto::v1;
use stella_proto::v1::agent_message::Body as AgentBody;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::desired::{DesiredStore, DesiredTargets};
use crate::error::{error_chain, TargetError};
use crate::target::{DeployTask, Target, TargetRegistry};

/// How long the loop collects further triggers after the first before it runs a round,
/// so a burst of engine events costs one round.
pub(crate) const DEBOUNCE: Duration = Duration::from_millis(500);
/// The longest one target's `detect_drift` may take before the round gives up on it.
const DETECT_TIMEOUT: Duration = Duration::from_secs(60);

/// One way a target differs from its desired state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftFinding {
    /// The component concerned.
    pub component: String,
    /// What kind of difference.
    pub kind: DriftKind,
    /// One line for the operator.
    pub detail: String,
}

/// The kinds of drift, as named in `DriftReport.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftKind {
    /// The component runs another image than the desired one.
    ImageChanged,
    /// A desired component does not run.
    Missing,
    /// A component runs that the desired state does not name.
    Unexpected,
    /// The component's configuration differs (only kinds that can see it report this).
    ConfigChanged,
    /// The sticker is missing, does not verify, or does not match what runs.
    StickerTampered,
}

impl DriftKind {
    /// Every kind.
    pub const ALL: [DriftKind; 5] = [
        DriftKind::ImageChanged,
        DriftKind::Missing,
        DriftKind::Unexpected,
        DriftKind::ConfigChanged,
        DriftKind::StickerTampered,
    ];

    /// The wire name: `image_changed`, `missing`, `unexpected`, `config_changed`,
    /// `sticker_tampered`.
    pub fn as_str(self) -> &'static str {
        match self {
            DriftKind::ImageChanged => "image_changed",
            DriftKind::Missing => "missing",
            DriftKind::Unexpected => "unexpected",
            DriftKind::ConfigChanged => "config_changed",
            DriftKind::StickerTampered => "sticker_tampered",
        }
    }
}

impl fmt::Display for DriftKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The drift that [`Target::inspect`] and [`Target::read_sticker`] reveal, the default of
/// [`Target::detect_drift`]: a desired component that does not run is `missing`; one
/// whose image digest is not the desired one is `image_changed`; one whose sticker is
/// absent, does not verify, is not the sticker on the running component, or names another
/// image is `sticker_tampered`; a component that runs but is not desired is `unexpected`.
pub async fn sticker_drift<T>(
    target: &T,
    desired: &DeployTask,
) -> Result<Vec<DriftFinding>, TargetError>
where
    T: Target + ?Sized,
{
    let observed = target.inspect(&desired.target).await?;
    let mut findings = Vec::new();
    for component in &desired.components {
        let Some(running) = observed.iter().find(|o| o.component == component.name) else {
            findings.push(DriftFinding {
                component: component.name.clone(),
                kind: DriftKind::Missing,
                detail: format!("{} is not running", component.image),
            });
            continue;
        };
        if let Some(digest) = component.digest() {
            if running.image_digest != digest {
                findings.push(DriftFinding {
                    component: component.name.clone(),
                    kind: DriftKind::ImageChanged,
                    detail: format!("runs {}, desired {digest}", running.image_digest),
                });
            }
        }
        let sticker = target
            .read_sticker(&desired.target, &component.name)
            .await?;
        let tampered = match &sticker {
            None => Some("the component has no sticker".to_owned()),
            Some(sticker) if !sticker.verify() => {
                Some("the sticker does not match its sticker_digest".to_owned())
            }
            Some(sticker) if running.sticker_digest.as_deref() != Some(&sticker.sticker_digest) => {
                Some(format!(
                    "the sticker ({}) is not the one on the running component ({})",
                    sticker.sticker_digest,
                    running.sticker_digest.as_deref().unwrap_or("none")
                ))
            }
            Some(sticker) if sticker.image != component.image => Some(format!(
                "the sticker names {}, desired {}",
                sticker.image, component.image
            )),
            Some(_) => None,
        };
        if let Some(detail) = tampered {
            findings.push(DriftFinding {
                component: component.name.clone(),
                kind: DriftKind::StickerTampered,
                detail,
            });
        }
    }
    for running in &observed {
        if !desired
            .components
            .iter()
            .any(|c| c.name == running.component)
        {
            findings.push(DriftFinding {
                component: running.component.clone(),
                kind: DriftKind::Unexpected,
                detail: format!(
                    "runs {} but is not in the desired state",
                    running.image_digest
                ),
            });
        }
    }
    Ok(findings)
}

/// Which targets a deploy task is changing now, so the drift loop leaves them alone.
#[derive(Debug, Default)]
pub(crate) struct Deploying {
    targets: Mutex<HashMap<String, DeployingTarget>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct DeployingTarget {
    running: usize,
    /// Bumped by every deploy that starts: a round that saw another generation before
    /// detecting than after raced a deploy and drops its findings.
    generation: u64,
}

impl Deploying {
    /// Marks a deploy of `target` as running until the guard drops.
    pub(crate) fn start(self: &Arc<Self>, target: &str) -> DeployGuard {
        let mut targets = self.lock();
        let entry = targets.entry(target.to_owned()).or_default();
        entry.running += 1;
        entry.generation += 1;
        DeployGuard {
            deploying: Arc::clone(self),
            target: target.to_owned(),
        }
    }

    /// The target's deploy generation when no deploy is changing it, `None` while one is.
    fn idle_generation(&self, target: &str) -> Option<u64> {
        match self.lock().get(target) {
            Some(entry) if entry.running > 0 => None,
            Some(entry) => Some(entry.generation),
            None => Some(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, DeployingTarget>> {
        // Updates are single counter changes: a poisoned map is still consistent.
        self.targets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A deploy in progress (see [`Deploying::start`]).
#[derive(Debug)]
pub(crate) struct DeployGuard {
    deploying: Arc<Deploying>,
    target: String,
}

impl Drop for DeployGuard {
    fn drop(&mut self) {
        if let Some(entry) = self.deploying.lock().get_mut(&self.target) {
            entry.running = entry.running.saturating_sub(1);
        }
    }
}

/// The drift loop and what it needs; runs for the agent's lifetime.
#[derive(Debug)]
pub(crate) struct DriftLoop {
    /// Time between full rounds.
    pub(crate) interval: Duration,
    pub(crate) targets: TargetRegistry,
    pub(crate) desired: Arc<DesiredStore>,
    pub(crate) deploying: Arc<Deploying>,
    /// Towards the current session.
    pub(crate) outbox: mpsc::UnboundedSender<v1::AgentMessage>,
    /// Whether a welcomed session is up.
    pub(crate) session_up: watch::Receiver<bool>,
    /// Target names from [`Target::watch`] and from finished deploy tasks.
    pub(crate) notify: mpsc::UnboundedReceiver<String>,
    /// The desired state as last seen, to tell which targets were dropped.
    pub(crate) held: Arc<DesiredTargets>,
}

/// What a round checks: every desired target, or the ones named.
#[derive(Debug, Default)]
struct Scope {
    all: bool,
    targets: BTreeSet<String>,
}

impl Scope {
    fn everything() -> Scope {
        Scope {
            all: true,
            targets: BTreeSet::new(),
        }
    }

    fn includes(&self, target: &str) -> bool {
        self.all || self.targets.contains(target)
    }

    fn is_empty(&self) -> bool {
        !self.all && self.targets.is_empty()
    }
}

/// What woke the loop.
enum Wake {
    Interval,
    Soon(Scope),
    Nothing,
    Stop,
}

impl DriftLoop {
    /// Runs rounds until `shutdown`.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        let interval = self.interval.max(Duration::from_secs(1));
        let mut tick = tokio::time::interval_at(Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut desired = self.desired.subscribe();
        self.held = Arc::clone(&desired.borrow_and_update());
        let mut rounds = Rounds {
            reported: BTreeMap::new(),
            checked: BTreeSet::new(),
            detection_errors_total: 0,
        };
        loop {
            let (mut scope, debounce) = match self.wait(&mut tick, &mut desired, &shutdown).await {
                Wake::Stop => return,
                Wake::Nothing => continue,
                Wake::Interval => (Scope::everything(), false),
                Wake::Soon(scope) => (scope, true),
            };
            if debounce {
                // Collect what else happens within the window into one round.
                let until = Instant::now() + DEBOUNCE;
                loop {
                    let more = tokio::select! {
                        () = tokio::time::sleep_until(until) => break,
                        more = self.wait(&mut tick, &mut desired, &shutdown) => more,
                    };
                    match more {
                        Wake::Stop => return,
                        Wake::Nothing => {}
                        Wake::Interval => scope.all = true,
                        Wake::Soon(more) => {
                            scope.all |= more.all;
                            scope.targets.extend(more.targets);
                        }
                    }
                }
            }
            if scope.is_empty() || !*self.session_up.borrow() {
                // Nobody to report to; the round of the next session covers it.
                continue;
            }
            if scope.all {
                tick.reset();
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = rounds.run(&self, &scope) => {}
            }
        }
    }

    /// Tells each kind about the targets the desired state no longer holds, so it
    /// drops their secrets, clients and watchers.
    fn forget_dropped(&mut self, now: &Arc<DesiredTargets>) {
        let before = std::mem::replace(&mut self.held, Arc::clone(now));
        for (name, task) in before.iter() {
            if now.contains_key(name) {
                continue;
            }
            if let Some(kind) = self.targets.get(&task.target.kind) {
                tracing::info!(target = %name, kind = %task.target.kind, "target no longer listed; forgetting it");
                kind.forget(name);
            }
        }
    }

    async fn wait(
        &mut self,
        tick: &mut tokio::time::Interval,
        desired: &mut watch::Receiver<Arc<DesiredTargets>>,
        shutdown: &CancellationToken,
    ) -> Wake {
        tokio::select! {
            () = shutdown.cancelled() => Wake::Stop,
            _ = tick.tick() => Wake::Interval,
            changed = desired.changed() => match changed {
                Ok(()) => {
                    let now = Arc::clone(&desired.borrow_and_update());
                    self.forget_dropped(&now);
                    Wake::Soon(Scope::everything())
                }
                Err(_) => Wake::Stop,
            },
            changed = self.session_up.changed() => match changed {
                Ok(()) if *self.session_up.borrow_and_update() => {
                    Wake::Soon(Scope::everything())
                }
                Ok(()) => Wake::Nothing,
                Err(_) => Wake::Stop,
            },
            // When every sender is gone the branch is disabled; the interval still ticks.
            Some(target) = self.notify.recv() => Wake::Soon(Scope {
                all: false,
                targets: BTreeSet::from([target]),
            }),
        }
    }
}

/// What the rounds remember between them.
struct Rounds {
    /// What the server may hold open, per target; a target is present while the server
    /// may hold open findings for it.
    reported: BTreeMap<String, Reported>,
    /// The targets reported on since the agent started.
    checked: BTreeSet<String>,
    detection_errors_total: u64,
}

/// What the server may hold open for one target.
#[derive(Debug, PartialEq, Eq)]
enum Reported {
    /// Anything: the agent started and has not reported on the target yet.
    Unknown,
    /// The findings of the last round that had any.
    Findings(Vec<DriftFinding>),
}

/// The server's key of a finding: (component, kind).
type FindingKey = (String, DriftKind);

fn keys(findings: &[DriftFinding]) -> BTreeSet<FindingKey> {
    findings
        .iter()
        .map(|f| (f.component.clone(), f.kind))
        .collect()
}

/// The findings the server may hold open for a target that it should hear are over,
/// given what was `reported` and what a round found now (not empty).
fn ended(reported: &Reported, desired: &DeployTask, now: &[DriftFinding]) -> Vec<FindingKey> {
    let now = keys(now);
    let candidates: BTreeSet<FindingKey> = match reported {
        Reported::Findings(previous) => keys(previous),
        Reported::Unknown => desired
            .components
            .iter()
            .flat_map(|c| DriftKind::ALL.map(|kind| (c.name.clone(), kind)))
            .collect(),
    };
    candidates.difference(&now).cloned().collect()
}

impl Rounds {
    async fn run(&mut self, drift: &DriftLoop, scope: &Scope) {
        let desired = drift.desired.current();
        // A target no longer desired is the server's business now.
        self.reported
            .retain(|target, _| desired.contains_key(target));
        for target_name in &scope.targets {
            if !scope.all && !desired.contains_key(target_name) {
                tracing::debug!(target = %target_name, "drift notification for a target with no desired state");
            }
        }
        for target_name in desired.keys() {
            if !scope.includes(target_name) {
                continue;
            }
            let Some(generation) = drift.deploying.idle_generation(target_name) else {
                tracing::debug!(target = %target_name, "a deploy is running; drift check skipped");
                continue;
            };
            // Read again now that no deploy runs: one may have finished since the round
            // began (a deploy records its desired state before it stops counting as
            // running), and comparing with the round's older snapshot would report the
            // new version as drift.
            let fresh = drift.desired.current();
            let Some(task) = fresh.get(target_name) else {
                continue;
            };
            let Some(target) = drift.targets.get(&task.target.kind) else {
                tracing::debug!(
                    target = %target_name,
                    kind = %task.target.kind,
                    "no target kind registered for a desired target; drift check skipped"
                );
                continue;
            };
            let detected = tokio::time::timeout(DETECT_TIMEOUT, target.detect_drift(task)).await;
            let findings = match detected {
                Ok(Ok(findings)) => findings,
                Ok(Err(error)) => {
                    self.detection_failed(target_name, &task.target.kind, &error_chain(&error));
                    continue;
                }
                Err(_) => {
                    let reason = format!("timed out after {} s", DETECT_TIMEOUT.as_secs());
                    self.detection_failed(target_name, &task.target.kind, &reason);
                    continue;
                }
            };
            if drift.deploying.idle_generation(target_name) != Some(generation) {
                tracing::debug!(target = %target_name, "a deploy started during the drift check; findings dropped");
                continue;
            }
            if !*drift.session_up.borrow() {
                return;
            }
            if self.checked.insert(target_name.clone()) {
                // The agent cannot know what it reported before it started: the server
                // may hold anything open for the target.
                self.reported.insert(target_name.clone(), Reported::Unknown);
            }
            self.report(drift, target_name, task, findings);
        }
    }

    fn report(
        &mut self,
        drift: &DriftLoop,
        target: &str,
        desired: &DeployTask,
        findings: Vec<DriftFinding>,
    ) {
        let observed_at_unix_ms = crate::now_unix_ms();
        let send = |component: &str, kind: &str, detail: &str, resolved_kind: &str| {
            // The receiver lives as long as the agent; after shutdown nothing listens.
            let _ = drift.outbox.send(v1::AgentMessage {
                body: Some(AgentBody::DriftReport(v1::DriftReport {
                    target: target.to_owned(),
                    component: component.to_owned(),
                    kind: kind.to_owned(),
                    detail: detail.to_owned(),
                    observed_at_unix_ms,
                    resolved_kind: resolved_kind.to_owned(),
                })),
            });
        };
        if findings.is_empty() {
            if let Some(previous) = self.reported.remove(target) {
                send("", "resolved", "", "");
                if previous != Reported::Unknown {
                    tracing::info!(target = %target, "drift resolved");
                }
            }
            return;
        }
        if let Some(reported) = self.reported.get(target) {
            for (component, kind) in ended(reported, desired, &findings) {
                send(&component, "resolved", "", kind.as_str());
                if *reported != Reported::Unknown {
                    tracing::info!(target = %target, component = %component, kind = %kind, "drift finding resolved");
                }
            }
        }
        for finding in &findings {
            send(
                &finding.component,
                finding.kind.as_str(),
                &finding.detail,
                "",
            );
        }
        let changed = !matches!(
            self.reported.get(target),
            Some(Reported::Findings(previous)) if *previous == findings
        );
        if changed {
            for finding in &findings {
                tracing::warn!(
                    target = %target,
                    component = %finding.component,
                    kind = %finding.kind,
                    detail = %finding.detail,
                    "drift found"
                );
            }
        }
        self.reported
            .insert(target.to_owned(), Reported::Findings(findings));
    }

    fn detection_failed(&mut self, target: &str, kind: &str, error: &str) {
        self.detection_errors_total += 1;
        tracing::warn!(
            target = %target,
            kind = %kind,
            error = %error,
            drift_detection_errors_total = self.detection_errors_total,
            "drift detection failed"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::target::{ApplyOutcome, ObservedComponent, Plan, TargetSpec};
    use crate::{Progress, Sticker};

    /// Serves `inspect` and `read_sticker` from memory.
    #[derive(Debug, Default)]
    struct Fixed {
        observed: Vec<ObservedComponent>,
        stickers: Mutex<BTreeMap<String, Sticker>>,
    }

    #[async_trait::async_trait]
    impl Target for Fixed {
        fn kind(&self) -> &'static str {
            "fixed"
        }

        async fn plan(&self, _task: &DeployTask) -> Result<Plan, TargetError> {
            Ok(Plan::default())
        }

        async fn apply(
            &self,
            _task: &DeployTask,
            _plan: &Plan,
            _progress: &Progress,
            _cancel: &CancellationToken,
        ) -> Result<ApplyOutcome, TargetError> {
            Ok(ApplyOutcome::default())
        }

        async fn inspect(
            &self,
            _target: &TargetSpec,
        ) -> Result<Vec<ObservedComponent>, TargetError> {
            Ok(self.observed.clone())
        }

        async fn write_sticker(
            &self,
            _target: &TargetSpec,
            sticker: &Sticker,
        ) -> Result<(), TargetError> {
            self.stickers
                .lock()
                .expect("lock")
                .insert(sticker.component.clone(), sticker.clone());
            Ok(())
        }

        async fn read_sticker(
            &self,
            _target: &TargetSpec,
            component: &str,
        ) -> Result<Option<Sticker>, TargetError> {
            Ok(self.stickers.lock().expect("lock").get(component).cloned())
        }
    }

    fn desired() -> DeployTask {
        crate::target::example_task("fixed")
    }

    /// A target running `desired` exactly, with its sticker, after `tamper` had its way.
    async fn drift_after(
        tamper: impl FnOnce(&mut ObservedComponent, &mut Sticker),
    ) -> Vec<DriftFinding> {
        let task = desired();
        let mut sticker = task.sticker(&task.components[0], "agent");
        let mut running = ObservedComponent {
            component: "api".into(),
            image_digest: "sha256:aaa".into(),
            sticker_digest: Some(sticker.sticker_digest.clone()),
        };
        tamper(&mut running, &mut sticker);
        let target = Fixed {
            observed: vec![running],
            ..Fixed::default()
        };
        target
            .write_sticker(&task.target, &sticker)
            .await
            .expect("write");
        target.detect_drift(&task).await.expect("detect")
    }

    fn kinds(findings: &[DriftFinding]) -> Vec<(&str, DriftKind)> {
        findings
            .iter()
            .map(|f| (f.component.as_str(), f.kind))
            .collect()
    }

    #[tokio::test]
    async fn a_target_that_runs_what_its_sticker_says_has_no_drift() {
        assert!(drift_after(|_, _| {}).await.is_empty());
    }

    #[tokio::test]
    async fn the_default_detection_finds_each_kind() {
        let findings = drift_after(|running, _| running.image_digest = "sha256:bbb".into()).await;
        assert_eq!(kinds(&findings), vec![("api", DriftKind::ImageChanged)]);
        assert_eq!(findings[0].detail, "runs sha256:bbb, desired sha256:aaa");

        let findings = drift_after(|running, _| running.component = "other".into()).await;
        assert_eq!(
            kinds(&findings),
            vec![
                ("api", DriftKind::Missing),
                ("other", DriftKind::Unexpected)
            ]
        );
    }

    #[tokio::test]
    async fn every_kind_of_sticker_trouble_is_tampering() {
        let tampered = [
            // Edited after sealing.
            drift_after(|_, sticker| sticker.version = "2.0.0".into()).await,
            // Resealed, but not the sticker the running component carries.
            drift_after(|_, sticker| *sticker = Sticker::seal(other_deployment(sticker))).await,
            // The running component carries no sticker.
            drift_after(|running, _| running.sticker_digest = None).await,
            // A consistent sticker for another image.
            drift_after(|running, sticker| {
                let mut fields = sticker.fields();
                fields.image = "r.local/api@sha256:ccc".into();
                *sticker = Sticker::seal(fields);
                running.sticker_digest = Some(sticker.sticker_digest.clone());
            })
            .await,
        ];
        for findings in &tampered {
            assert_eq!(
                kinds(findings),
                vec![("api", DriftKind::StickerTampered)],
                "{findings:?}"
            );
        }
        assert!(tampered[3][0].detail.contains("sha256:ccc"));

        // No sticker at all.
        let task = desired();
        let target = Fixed {
            observed: vec![ObservedComponent {
                component: "api".into(),
                image_digest: "sha256:aaa".into(),
                sticker_digest: None,
            }],
            ..Fixed::default()
        };
        let findings = target.detect_drift(&task).await.expect("detect");
        assert_eq!(kinds(&findings), vec![("api", DriftKind::StickerTampered)]);
        assert_eq!(findings[0].detail, "the component has no sticker");
    }

    /// A sticker's fields with another deployment id.
    fn other_deployment(sticker: &Sticker) -> crate::StickerFields {
        let mut fields = sticker.fields();
        fields.deployment_id = "dep-2".into();
        fields
    }

    #[test]
    fn kinds_have_their_wire_names() {
        let names: Vec<&str> = [
            DriftKind::ImageChanged,
            DriftKind::Missing,
            DriftKind::Unexpected,
            DriftKind::ConfigChanged,
            DriftKind::StickerTampered,
        ]
        .into_iter()
        .map(DriftKind::as_str)
        .collect();
        assert_eq!(
            names,
            [
                "image_changed",
                "missing",
                "unexpected",
                "config_changed",
                "sticker_tampered"
            ]
        );
        assert_eq!(
            serde_json::to_string(&DriftKind::ConfigChanged).expect("json"),
            "\"config_changed\""
        );
        assert_eq!(DriftKind::StickerTampered.to_string(), "sticker_tampered");
    }

    #[test]
    fn a_deploy_in_progress_hides_its_target_and_bumps_its_generation() {
        let deploying = Arc::new(Deploying::default());
        assert_eq!(deploying.idle_generation("web-1"), Some(0));
        let first = deploying.start("web-1");
        let second = deploying.start("web-1");
        assert_eq!(deploying.idle_generation("web-1"), None);
        assert_eq!(deploying.idle_generation("web-2"), Some(0));
        drop(first);
        assert_eq!(deploying.idle_generation("web-1"), None);
        drop(second);
        assert_eq!(deploying.idle_generation("web-1"), Some(2));
    }
}

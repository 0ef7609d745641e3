//! The `Target` trait that every target kind (docker, compose, ssh, …) implements, the
//! registry of the kinds an agent drives, and the deploy task they receive.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::drift::DriftFinding;
use crate::error::TargetError;
use crate::router::{RouterKind, RouterRegistry};
use crate::sticker::{Sticker, StickerFields};
use stella_proto::v1;

/// A kind of deployment target. Implementations are idempotent reconcilers: `apply` brings
/// the target to the state `task` describes whatever state it is in, so the agent may run
/// the same task again after a crash.
#[async_trait]
pub trait Target: Send + Sync + fmt::Debug {
    /// The kind this implementation drives: `docker`, `compose`, `ssh`, …; reported as a
    /// capability in `Hello` and matched against `TargetSpec::kind`.
    fn kind(&self) -> &'static str;

    /// What `apply` would do, without changing anything.
    async fn plan(&self, task: &DeployTask) -> Result<Plan, TargetError>;

    /// Carries out the plan, reporting progress lines; stops early with
    /// [`TargetError::Cancelled`] when `cancel` fires. Writes a sticker per component.
    async fn apply(
        &self,
        task: &DeployTask,
        plan: &Plan,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<ApplyOutcome, TargetError>;

    /// What runs on the target now.
    async fn inspect(&self, target: &TargetSpec) -> Result<Vec<ObservedComponent>, TargetError>;

    /// Stores a sticker where this kind keeps them (labels, a file, tags, …).
    async fn write_sticker(
        &self,
        target: &TargetSpec,
        sticker: &Sticker,
    ) -> Result<(), TargetError>;

    /// Reads the sticker of one component, if there is one.
    async fn read_sticker(
        &self,
        target: &TargetSpec,
        component: &str,
    ) -> Result<Option<Sticker>, TargetError>;

    /// How the target differs from `desired` (the last successful deployment), for the
    /// drift loop. The default compares [`Target::inspect`] and [`Target::read_sticker`]
    /// with `desired` (see [`sticker_drift`](crate::sticker_drift)); a kind that can see
    /// more (e.g. `config_changed`) overrides it and may call that function for the rest.
    async fn detect_drift(&self, desired: &DeployTask) -> Result<Vec<DriftFinding>, TargetError> {
        crate::drift::sticker_drift(self, desired).await
    }

    /// Whether this agent can reach and drive the target as configured, changing
    /// nothing: `Ok` with what it found, or the reason it cannot. `task` carries the
    /// target (settings and secret values) and no components. The default inspects the
    /// target (which reaches the engine, host or service the settings name). A kind whose
    /// settings may reference secrets overrides it, since [`Target::inspect`] gets none
    /// (it relies on secrets remembered from earlier tasks, which a target being created
    /// has not had); so does a kind that can say more.
    async fn check(&self, task: &DeployTask) -> Result<String, TargetError> {
        let observed = self.inspect(&task.target).await?;
        Ok(match observed.len() {
            0 => "reachable; no component of a release runs there yet".to_owned(),
            1 => "reachable; 1 component observed".to_owned(),
            n => format!("reachable; {n} components observed"),
        })
    }

    /// The control plane no longer lists `target` for this agent (it was deleted, or
    /// moved to another agent): drop what the kind holds for it in memory — remembered
    /// secret values, clients, watchers. Nothing on the target itself is touched. The
    /// default holds nothing per target.
    fn forget(&self, target: &str) {
        let _ = target;
    }

    /// Starts watching the engine, if this kind can: whenever something changes on a
    /// target it sends the target's name on `notify`, and the agent runs a drift round
    /// soon (debounced) instead of waiting for the interval. Called once per agent run;
    /// the implementation spawns its own task and stops when `notify` is closed. The
    /// default watches nothing: drift is then found at the interval.
    fn watch(&self, notify: mpsc::UnboundedSender<String>) {
        let _ = notify;
    }

    /// Whether this kind deploys to slots ([`DeployTask::slot`]) and retires them. The
    /// agent refuses a slot deploy for a kind that does not, before anything is touched.
    /// The default is no.
    fn supports_slots(&self) -> bool {
        false
    }

    /// Removes every container (or whatever the kind runs) of `slot` on `target`, and
    /// says how many in the outcome's summary; a slot with nothing left succeeds. The
    /// outcome names the slot and has no stickers and no endpoints. The default refuses:
    /// the kind has no slots.
    async fn retire(
        &self,
        target: &TargetSpec,
        slot: &str,
        progress: &Progress,
    ) -> Result<ApplyOutcome, TargetError> {
        let _ = progress;
        Err(TargetError::failed(format!(
            "targets of kind {} have no slots: cannot retire slot {slot} of {}",
            self.kind(),
            target.name
        )))
    }
}

/// The target kinds an agent drives, by kind, and the router kinds it drives beside
/// them (see [`RouterRegistry`]): everything the agent advertises in `Hello`.
#[derive(Debug, Clone, Default)]
pub struct TargetRegistry {
    targets: BTreeMap<&'static str, Arc<dyn Target>>,
    routers: RouterRegistry,
}

impl TargetRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        TargetRegistry::default()
    }

    /// Adds a target kind; returns the implementation it replaces, if any.
    pub fn register(&mut self, target: Arc<dyn Target>) -> Option<Arc<dyn Target>> {
        self.targets.insert(target.kind(), target)
    }

    /// The target kinds, sorted.
    pub fn kinds(&self) -> Vec<&'static str> {
        self.targets.keys().copied().collect()
    }

    /// Adds a router kind; returns the one it replaces, if any.
    pub fn register_router(&mut self, kind: Arc<dyn RouterKind>) -> Option<Arc<dyn RouterKind>> {
        self.routers.register(kind)
    }

    /// The router kinds.
    pub fn routers(&self) -> &RouterRegistry {
        &self.routers
    }

    /// What the agent advertises in `Hello`: the target kinds, then `router:KIND` for
    /// each router kind.
    pub fn capabilities(&self) -> Vec<String> {
        let mut capabilities: Vec<String> = self.kinds().into_iter().map(str::to_owned).collect();
        // `slots:KIND`: this agent deploys to slots of KIND targets and runs `retire`
        // tasks for them (an older agent would deploy a slot's payload to the stable
        // containers), so the control plane sends slot work only where it is said.
        let mut slotted: Vec<String> = self
            .targets
            .values()
            .filter(|target| target.supports_slots())
            .map(|target| format!("slots:{}", target.kind()))
            .collect();
        slotted.sort();
        capabilities.extend(slotted);
        capabilities.extend(self.routers.capabilities());
        capabilities
    }

    /// The implementation of a kind.
    pub fn get(&self, kind: &str) -> Option<Arc<dyn Target>> {
        self.targets.get(kind).cloned()
    }

    /// Whether no kind is registered.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }
}

/// The `payload_json` of a `deploy` task assignment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployTask {
    /// The deployment this task belongs to.
    pub deployment_id: String,
    /// The promotion decision being carried out.
    pub decision_id: String,
    /// Environment name.
    pub environment: String,
    /// Release name.
    pub release: String,
    /// Release version.
    pub version: String,
    /// Where to deploy.
    pub target: TargetSpec,
    /// What to deploy, images pinned by digest.
    pub components: Vec<ComponentSpec>,
    /// Credentials for the registries the images come from, added by the control plane
    /// when it sends the task. Never stored by the agent (the journal holds no payload,
    /// `desired.json` is written without them) and never logged: `Debug` redacts the
    /// passwords. Targets must keep them out of progress lines, summaries and errors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub registry_auth: Vec<RegistryCredential>,
    /// The deployment's generation: grows with every deployment the control plane
    /// creates, so the agent can tell a newer desired state from an older one. 0 from a
    /// control plane that does not send it.
    #[serde(default)]
    pub generation: u64,
    /// Values of the secrets the settings reference as `${secret.NAME}`, added by the
    /// control plane when it sends the task; kept like `registry_auth` (never stored,
    /// never logged). The settings themselves keep the references: see
    /// [`DeployTask::resolved_settings`].
    #[serde(default, skip_serializing_if = "Secrets::is_empty")]
    pub secrets: Secrets,
    /// The slot to deploy to (RFC 0005): a deployment beside the target's own, for a
    /// router to send traffic to, which a `retire` task removes later. `None` is the
    /// target's own ("stable") deployment; a payload's `"stable"` reads as `None`, any
    /// other name must pass [`check_slot_name`](crate::check_slot_name). A slot deploy
    /// is not the target's desired state, writes no stickers and is not drift. Only kinds
    /// whose [`Target::supports_slots`] run it.
    #[serde(
        default,
        deserialize_with = "crate::slot::deserialize_slot",
        skip_serializing_if = "Option::is_none"
    )]
    pub slot: Option<String>,
}

/// Secret values by name. `Debug` shows the names only.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secrets(pub BTreeMap<String, String>);

impl Secrets {
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

// By hand so no value reaches a log line.
impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// The secret values the last task of each target came with, in memory only, for a kind
/// whose methods that get only a [`TargetSpec`] (inspect, stickers, drift) need a secret
/// its settings reference: a key, a token, a password. `Debug` shows target names only.
#[derive(Default)]
pub struct RememberedSecrets(std::sync::Mutex<HashMap<String, Secrets>>);

impl RememberedSecrets {
    /// `task`'s settings with secret references resolved: with the task's own secret
    /// values when it has some (remembered for its target from then on), else with the
    /// values last remembered for its target. An error names the setting and the
    /// secret, never a value.
    pub fn resolved_settings(
        &self,
        task: &DeployTask,
    ) -> Result<BTreeMap<String, String>, TargetError> {
        let mut known = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !task.secrets.is_empty() {
            known.insert(task.target.name.clone(), task.secrets.clone());
            return task.resolved_settings();
        }
        let secrets = known.get(&task.target.name).cloned().unwrap_or_default();
        task.target
            .settings
            .iter()
            .map(|(key, value)| Ok((key.clone(), resolve_secrets(key, value, &secrets)?)))
            .collect()
    }
}

impl RememberedSecrets {
    /// Drops the values remembered for `target` (see [`Target::forget`]).
    pub fn forget(&self, target: &str) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(target);
    }
}

impl fmt::Debug for RememberedSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let known = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f.debug_set().entries(known.keys()).finish()
    }
}

impl DeployTask {
    /// A task holding only `target` (no release, no components, no secrets), for the
    /// [`Target`] methods that get only a [`TargetSpec`] and share code with a deploy.
    pub fn for_target(target: &TargetSpec) -> DeployTask {
        DeployTask {
            deployment_id: String::new(),
            decision_id: String::new(),
            environment: String::new(),
            release: String::new(),
            version: String::new(),
            target: target.clone(),
            components: Vec::new(),
            registry_auth: Vec::new(),
            generation: 0,
            secrets: Secrets::default(),
            slot: None,
        }
    }

    /// The credential for the registry `image` (`host[:port]/repo[:tag]@digest`) comes
    /// from, if the control plane sent one. Registry names compare without case; Docker
    /// Hub's aliases (`docker.io`, `index.docker.io`, `registry-1.docker.io`) are one.
    pub fn credential_for(&self, image: &str) -> Option<&RegistryCredential> {
        let wanted = normalize_registry(registry_of(image));
        self.registry_auth
            .iter()
            .find(|credential| normalize_registry(&credential.registry) == wanted)
    }

    /// The task without its registry credentials and secret values: the form the agent
    /// keeps.
    pub fn without_credentials(mut self) -> DeployTask {
        self.registry_auth = Vec::new();
        self.secrets = Secrets::default();
        self
    }

    /// The task without its registry credentials, keeping the secret values: the form
    /// the agent holds in memory as a target's desired state, so a kind whose drift
    /// check needs a secret (an SSH key) has it. Never written to disk: see
    /// [`DeployTask::without_credentials`].
    pub fn without_registry_auth(mut self) -> DeployTask {
        self.registry_auth = Vec::new();
        self
    }

    /// The settings as the target applies them: each `${secret.NAME}` replaced by the
    /// secret's value and each `$${` by a literal `${`. Compare and digest
    /// `target.settings` (the references) instead, so that what the agent stores and
    /// reports never depends on a secret's value. An error names the setting and the
    /// secret, never a value.
    pub fn resolved_settings(&self) -> Result<BTreeMap<String, String>, TargetError> {
        self.target
            .settings
            .iter()
            .map(|(key, value)| Ok((key.clone(), resolve_secrets(key, value, &self.secrets)?)))
            .collect()
    }

    /// The sealed sticker for one component of this task, deployed now by `agent_id`.
    pub fn sticker(&self, component: &ComponentSpec, agent_id: &str) -> Sticker {
        Sticker::seal(StickerFields {
            release: self.release.clone(),
            version: self.version.clone(),
            environment: self.environment.clone(),
            target: self.target.name.clone(),
            component: component.name.clone(),
            image: component.image.clone(),
            deployment_id: self.deployment_id.clone(),
            decision_id: self.decision_id.clone(),
            deployed_at: crate::sticker::rfc3339_utc(time::OffsetDateTime::now_utc()),
            agent_id: agent_id.to_owned(),
        })
    }

    /// Whether `sticker` is one this task's deployment writes: for one of its components,
    /// with every field [`DeployTask::sticker`] takes from the task equal (`deployed_at`
    /// and `agent_id` may differ — a retry of the task, after a crash, writes the same
    /// deployment's sticker). A component that runs the right image under a sticker of
    /// another deployment must be redeployed for its sticker to tell the truth.
    pub fn wrote(&self, sticker: &Sticker) -> bool {
        self.components
            .iter()
            .any(|c| c.name == sticker.component && c.image == sticker.image)
            && sticker.release == self.release
            && sticker.version == self.version
            && sticker.environment == self.environment
            && sticker.target == self.target.name
            && sticker.deployment_id == self.deployment_id
            && sticker.decision_id == self.decision_id
    }
}

/// `value` with `${secret.NAME}` replaced from `secrets` and `$${` unescaped.
fn resolve_secrets(key: &str, value: &str, secrets: &Secrets) -> Result<String, TargetError> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find("${") {
        if rest[..at].ends_with('$') {
            out.push_str(&rest[..at - 1]);
            out.push_str("${");
            rest = &rest[at + 2..];
            continue;
        }
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let reference = after
            .find('}')
            .map(|end| (&after[..end], &after[end + 1..]));
        match reference.and_then(|(inner, tail)| Some((inner.strip_prefix("secret.")?, tail))) {
            Some((name, tail)) => {
                let secret = secrets.0.get(name).ok_or_else(|| {
                    TargetError::InvalidSettings(format!(
                        "{key} references the secret {name:?}, which the control plane did not send"
                    ))
                })?;
                out.push_str(secret);
                rest = tail;
            }
            None => {
                return Err(TargetError::InvalidSettings(format!(
                    "{key}: only ${{secret.NAME}} references can be resolved by the agent"
                )));
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// A deployment target as configured on the control plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetSpec {
    /// Target name.
    pub name: String,
    /// Target kind: selects the [`Target`] implementation.
    pub kind: String,
    /// Kind-specific settings (`--set key=value`).
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
}

/// One component of a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentSpec {
    /// Component name.
    pub name: String,
    /// Image pinned by digest: `repo@sha256:…`.
    pub image: String,
}

impl ComponentSpec {
    /// The digest the image is pinned by (`sha256:…`, the part after `@`), if it is.
    pub fn digest(&self) -> Option<&str> {
        self.image
            .rsplit_once('@')
            .map(|(_, digest)| digest)
            .filter(|digest| !digest.is_empty())
    }
}

/// Credentials for one registry, as the control plane sends them with a deploy task.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryCredential {
    /// The registry as it appears in image references: `host[:port]`.
    pub registry: String,
    /// User name.
    pub username: String,
    /// Password or token. Never logged.
    pub password: String,
}

// By hand so the password never reaches a log line.
impl fmt::Debug for RegistryCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryCredential")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The registry part of an image reference (`host[:port]/repo[:tag][@digest]`), as Docker
/// reads it: the first path component when it looks like a host (has a `.` or a `:`, or
/// is `localhost`), otherwise Docker Hub (`docker.io`).
pub fn registry_of(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first
        }
        _ => DOCKER_HUB,
    }
}

const DOCKER_HUB: &str = "docker.io";

/// A registry name for comparison: lowercase, without a URL scheme or trailing slash (as
/// operators sometimes write them), Docker Hub's aliases folded into one.
fn normalize_registry(registry: &str) -> String {
    let registry = registry.trim();
    let registry = registry
        .strip_prefix("https://")
        .or_else(|| registry.strip_prefix("http://"))
        .unwrap_or(registry)
        .trim_end_matches('/')
        .to_ascii_lowercase();
    match registry.as_str() {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_owned(),
        _ => registry,
    }
}

/// What `apply` will do, one human-readable line per step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The steps, in order.
    pub steps: Vec<String>,
}

/// What `apply` did; sent to the server as the task's `output_json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyOutcome {
    /// One line for the operator.
    pub summary: String,
    /// The stickers written, one per component deployed; each is also sent as a
    /// `StickerReport`.
    #[serde(default)]
    pub stickers: Vec<Sticker>,
    /// The slot deployed to or retired; `None` for the target's own deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    /// Where the deployed containers can be reached, as the engine reports them after
    /// they run: one entry per published port binding (a router points at these, in
    /// particular at the host ports an engine picked for a slot). Empty for kinds that
    /// publish no ports themselves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Endpoint>,
}

/// One published port of a deployed component, as the engine bound it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Component name.
    pub component: String,
    /// The port inside the container.
    pub container_port: u16,
    /// `tcp` or `udp` (or whatever else the engine reports, e.g. `sctp`).
    pub protocol: String,
    /// The host address bound, as the engine reports it; `0.0.0.0` when it reports none.
    pub host_ip: String,
    /// The host port bound.
    pub host_port: u16,
}

/// The `payload_json` of a `retire` task assignment: remove every container of a slot
/// of a target (RFC 0005). Retiring a slot that has none succeeds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetireTask {
    /// The deployment (rollout) this task belongs to.
    pub deployment_id: String,
    /// The target whose slot is retired.
    pub target: TargetSpec,
    /// The slot: a name that passes [`check_slot_name`](crate::check_slot_name), never
    /// `stable`.
    pub slot: String,
}

/// One component as found running on a target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedComponent {
    /// Component name.
    pub component: String,
    /// The digest of the image that runs (`sha256:…`).
    pub image_digest: String,
    /// The `sticker_digest` of the component's sticker, if it has one.
    pub sticker_digest: Option<String>,
}

/// How a running task reports progress lines to the server (as `TaskUpdate`s).
#[derive(Clone)]
pub struct Progress {
    agent_id: String,
    task_id: String,
    sink: ProgressSink,
}

#[derive(Clone)]
enum ProgressSink {
    Session {
        epoch: Arc<AtomicU64>,
        outbox: mpsc::UnboundedSender<v1::AgentMessage>,
        /// The task's journaled lines; `None` when the journal could not be opened.
        lines: Option<Arc<crate::journal::TaskLines>>,
    },
    Lines(mpsc::UnboundedSender<String>),
    Log,
}

impl Progress {
    /// A progress reporter that only logs: for running a target outside a session.
    pub fn detached(agent_id: impl Into<String>, task_id: impl Into<String>) -> Self {
        Progress {
            agent_id: agent_id.into(),
            task_id: task_id.into(),
            sink: ProgressSink::Log,
        }
    }

    /// A progress reporter whose lines arrive on the returned receiver: for target tests.
    pub fn channel(
        agent_id: impl Into<String>,
        task_id: impl Into<String>,
    ) -> (Self, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let progress = Progress {
            agent_id: agent_id.into(),
            task_id: task_id.into(),
            sink: ProgressSink::Lines(tx),
        };
        (progress, rx)
    }

    pub(crate) fn session(
        agent_id: String,
        task_id: String,
        epoch: Arc<AtomicU64>,
        outbox: mpsc::UnboundedSender<v1::AgentMessage>,
        lines: Option<Arc<crate::journal::TaskLines>>,
    ) -> Self {
        Progress {
            agent_id,
            task_id,
            sink: ProgressSink::Session {
                epoch,
                outbox,
                lines,
            },
        }
    }

    /// Reports one progress line.
    pub fn report(&self, message: impl Into<String>) {
        let message = message.into();
        tracing::info!(task_id = %self.task_id, "{message}");
        match &self.sink {
            ProgressSink::Session {
                epoch,
                outbox,
                lines,
            } => {
                let at_unix_ms = crate::now_unix_ms();
                // Journaled first: a line the session cannot take now is re-sent after
                // the next reconnect (see the journal).
                let line = lines
                    .as_ref()
                    .map_or(0, |lines| lines.append(at_unix_ms, &message));
                let update = v1::TaskUpdate {
                    task_id: self.task_id.clone(),
                    epoch: epoch.load(Ordering::SeqCst),
                    message,
                    at_unix_ms,
                    line,
                };
                let _ = outbox.send(v1::AgentMessage {
                    body: Some(v1::agent_message::Body::TaskUpdate(update)),
                });
            }
            ProgressSink::Lines(tx) => {
                let _ = tx.send(message);
            }
            ProgressSink::Log => {}
        }
    }

    /// The id of the agent running the task (for stickers).
    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }

    /// The id of the task being run.
    pub fn task_id(&self) -> &str {
        &self.task_id
    }

    /// The newest lease epoch the server assigned the task under; 0 outside a session.
    pub fn epoch(&self) -> u64 {
        match &self.sink {
            ProgressSink::Session { epoch, .. } => epoch.load(Ordering::SeqCst),
            ProgressSink::Lines(_) | ProgressSink::Log => 0,
        }
    }
}

impl fmt::Debug for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Progress")
            .field("agent_id", &self.agent_id)
            .field("task_id", &self.task_id)
            .finish_non_exhaustive()
    }
}

/// A deploy task of target `web-1` (of `kind`) running component `api`, for unit tests.
#[cfg(test)]
pub(crate) fn example_task(kind: &str) -> DeployTask {
    DeployTask {
        deployment_id: "dep-1".into(),
        decision_id: "sha256:d".into(),
        environment: "prod".into(),
        release: "shop".into(),
        version: "1.0.0".into(),
        target: TargetSpec {
            name: "web-1".into(),
            kind: kind.into(),
            settings: BTreeMap::new(),
        },
        components: vec![ComponentSpec {
            name: "api".into(),
            image: "r.local/api@sha256:aaa".into(),
        }],
        registry_auth: Vec::new(),
        generation: 0,
        secrets: Secrets::default(),
        slot: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task_with(registry_auth: Vec<RegistryCredential>) -> DeployTask {
        DeployTask {
            deployment_id: "dep-1".into(),
            decision_id: "sha256:d".into(),
            environment: "prod".into(),
            release: "shop".into(),
            version: "1.0.0".into(),
            target: TargetSpec {
                name: "web-1".into(),
                kind: "docker".into(),
                settings: BTreeMap::new(),
            },
            components: vec![ComponentSpec {
                name: "api".into(),
                image: "registry.local:5000/shop/api@sha256:abc".into(),
            }],
            registry_auth,
            generation: 0,
            secrets: Secrets::default(),
            slot: None,
        }
    }

    #[test]
    fn remembered_secrets_serve_later_calls_of_the_same_target_and_never_show() {
        let mut task = DeployTask::for_target(&TargetSpec {
            name: "edge-1".into(),
            kind: "ssh".into(),
            settings: BTreeMap::from([("key_secret".into(), "${secret.deploy_key}".into())]),
        });
        let remembered = RememberedSecrets::default();
        let error = remembered
            .resolved_settings(&task)
            .expect_err("nothing remembered yet");
        assert!(error.to_string().contains("deploy_key"), "{error}");
        task.secrets
            .0
            .insert("deploy_key".into(), "PEM-VALUE".into());
        assert_eq!(
            remembered
                .resolved_settings(&task)
                .ok()
                .and_then(|s| s.get("key_secret").cloned()),
            Some("PEM-VALUE".to_owned())
        );
        let later = DeployTask::for_target(&task.target);
        assert_eq!(
            remembered
                .resolved_settings(&later)
                .ok()
                .and_then(|s| s.get("key_secret").cloned()),
            Some("PEM-VALUE".to_owned())
        );
        let other = DeployTask::for_target(&TargetSpec {
            name: "edge-2".into(),
            ..task.target.clone()
        });
        assert!(remembered.resolved_settings(&other).is_err(), "per target");
        let shown = format!("{remembered:?}");
        assert!(
            shown.contains("edge-1") && !shown.contains("PEM-VALUE"),
            "{shown}"
        );
    }

    #[test]
    fn secrets_are_resolved_only_for_applying_and_never_kept_or_shown() {
        let mut task = task_with(Vec::new());
        task.target.settings = BTreeMap::from([
            (
                "env.DB_PASSWORD".to_owned(),
                "${secret.db_password}".to_owned(),
            ),
            (
                "env.PRICE".to_owned(),
                "$${AMOUNT} and ${secret.db_password}!".to_owned(),
            ),
            ("ports".to_owned(), "8080:80".to_owned()),
        ]);
        task.secrets = Secrets(BTreeMap::from([(
            "db_password".to_owned(),
            "hunter2".to_owned(),
        )]));
        let resolved = task.resolved_settings().expect("resolve");
        assert_eq!(resolved["env.DB_PASSWORD"], "hunter2");
        assert_eq!(resolved["env.PRICE"], "${AMOUNT} and hunter2!");
        assert_eq!(resolved["ports"], "8080:80");
        assert!(!format!("{task:?}").contains("hunter2"));
        let kept = task.clone().without_credentials();
        assert!(kept.secrets.is_empty());
        assert!(!serde_json::to_string(&kept)
            .expect("json")
            .contains("hunter2"));
        assert_eq!(
            kept.target.settings, task.target.settings,
            "references stay"
        );
        let mut missing = task;
        missing.secrets = Secrets::default();
        let error = missing.resolved_settings().expect_err("not sent");
        assert!(error.to_string().contains("db_password"), "{error}");
    }

    fn credential(registry: &str, password: &str) -> RegistryCredential {
        RegistryCredential {
            registry: registry.into(),
            username: "deployer".into(),
            password: password.into(),
        }
    }

    #[test]
    fn registry_of_reads_image_references_as_docker_does() {
        for (image, registry) in [
            ("registry.local/shop/api@sha256:abc", "registry.local"),
            ("127.0.0.1:5000/api@sha256:abc", "127.0.0.1:5000"),
            ("localhost/api:1@sha256:abc", "localhost"),
            ("[::1]:5000/api@sha256:abc", "[::1]:5000"),
            ("library/nginx@sha256:abc", "docker.io"),
            ("nginx@sha256:abc", "docker.io"),
            ("nginx", "docker.io"),
        ] {
            assert_eq!(registry_of(image), registry, "{image}");
        }
    }

    #[test]
    fn credential_for_matches_the_registry_of_the_image() {
        let task = task_with(vec![
            credential("other.local", "no"),
            credential("Registry.Local:5000", "yes"),
            credential("https://index.docker.io/", "hub"),
        ]);
        let image = &task.components[0].image;
        assert_eq!(
            task.credential_for(image).map(|c| c.password.as_str()),
            Some("yes")
        );
        assert_eq!(
            task.credential_for("nginx@sha256:abc")
                .map(|c| c.password.as_str()),
            Some("hub")
        );
        assert!(task
            .credential_for("registry.local/shop/api@sha256:abc")
            .is_none());
        assert!(task_with(Vec::new()).credential_for(image).is_none());
    }

    #[test]
    fn credentials_are_redacted_and_optional_on_the_wire() {
        let task = task_with(vec![credential("registry.local", "hunter2")]);
        let debug = format!("{task:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("<redacted>") && debug.contains("deployer"));

        let json = serde_json::to_value(task.clone().without_credentials()).expect("json");
        assert!(json.get("registry_auth").is_none(), "{json}");
        let parsed: DeployTask = serde_json::from_value(json).expect("parse");
        assert!(parsed.registry_auth.is_empty());
        let json = serde_json::to_string(&task).expect("json");
        let parsed: DeployTask = serde_json::from_str(&json).expect("parse");
        assert_eq!(parsed, task);
    }

    #[test]
    fn a_slot_is_optional_on_the_wire_and_stable_is_no_slot() {
        let task = task_with(Vec::new());
        let json = serde_json::to_value(&task).expect("json");
        assert!(json.get("slot").is_none(), "absent when stable: {json}");
        let parsed: DeployTask = serde_json::from_value(json.clone()).expect("parse");
        assert_eq!(parsed.slot, None);

        let with_slot = |slot: serde_json::Value| {
            let mut json = json.clone();
            json["slot"] = slot;
            serde_json::from_value::<DeployTask>(json)
        };
        assert_eq!(with_slot(serde_json::json!(null)).expect("null").slot, None);
        assert_eq!(
            with_slot(serde_json::json!("stable")).expect("stable").slot,
            None
        );
        let canary = with_slot(serde_json::json!("canary")).expect("canary");
        assert_eq!(canary.slot.as_deref(), Some("canary"));
        assert_eq!(
            serde_json::to_value(&canary).expect("json")["slot"],
            "canary"
        );
        for bad in ["Bad!", "", "web-canary", "abcdefghijklmnopq"] {
            let error = with_slot(serde_json::json!(bad)).expect_err(bad);
            assert!(
                error.to_string().contains("is not a valid slot name"),
                "{error}"
            );
        }
    }

    #[test]
    fn an_outcome_names_its_slot_and_endpoints_only_when_it_has_them() {
        let stable = ApplyOutcome {
            summary: "deployed".into(),
            ..ApplyOutcome::default()
        };
        let json = serde_json::to_value(&stable).expect("json");
        assert!(
            json.get("slot").is_none() && json.get("endpoints").is_none(),
            "{json}"
        );
        let parsed: ApplyOutcome =
            serde_json::from_str(r#"{"summary":"old agent","stickers":[]}"#).expect("parse");
        assert_eq!(parsed.slot, None);
        assert!(parsed.endpoints.is_empty());

        let slot = ApplyOutcome {
            summary: "web deployed".into(),
            stickers: Vec::new(),
            slot: Some("canary".into()),
            endpoints: vec![Endpoint {
                component: "web".into(),
                container_port: 8080,
                protocol: "tcp".into(),
                host_ip: "0.0.0.0".into(),
                host_port: 32768,
            }],
        };
        let json = serde_json::to_value(&slot).expect("json");
        assert_eq!(
            json["endpoints"],
            serde_json::json!([{
                "component": "web",
                "container_port": 8080,
                "protocol": "tcp",
                "host_ip": "0.0.0.0",
                "host_port": 32768
            }])
        );
        assert_eq!(
            serde_json::from_value::<ApplyOutcome>(json).expect("parse"),
            slot
        );
    }

    #[test]
    fn a_task_wrote_the_stickers_of_its_deployment_only() {
        let task = task_with(Vec::new());
        let sticker = task.sticker(&task.components[0], "agent-1");
        assert!(task.wrote(&sticker));
        // A retry, by another agent process, later.
        let mut retried = sticker.fields();
        retried.deployed_at = "2030-01-01T00:00:00Z".into();
        retried.agent_id = "agent-2".into();
        assert!(task.wrote(&Sticker::seal(retried)));
        for change in [
            |f: &mut StickerFields| f.deployment_id = "dep-2".into(),
            |f: &mut StickerFields| f.version = "1.0.1".into(),
            |f: &mut StickerFields| f.decision_id = "sha256:e".into(),
            |f: &mut StickerFields| f.image = "registry.local:5000/shop/api@sha256:def".into(),
            |f: &mut StickerFields| f.component = "web".into(),
            |f: &mut StickerFields| f.target = "web-2".into(),
        ] {
            let mut fields = sticker.fields();
            change(&mut fields);
            assert!(!task.wrote(&Sticker::seal(fields)));
        }
    }

    #[test]
    fn component_digest_is_the_part_after_the_at() {
        let component = |image: &str| ComponentSpec {
            name: "api".into(),
            image: image.into(),
        };
        assert_eq!(
            component("r.local/api@sha256:abc").digest(),
            Some("sha256:abc")
        );
        assert_eq!(component("r.local/api:1").digest(), None);
        assert_eq!(component("r.local/api@").digest(), None);
    }
}

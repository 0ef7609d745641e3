//! The `sim` target kind: a target that lives in the memory of the process running the
//! agent and records every change made to it as a [`SideEffect`] in a shared [`Ledger`],
//! so a fault scenario can count, per task, how often a deployment was really applied.
//!
//! It drives the control plane's `sim` kind (free-form settings). Read settings:
//! `apply_ms`, how long an apply takes (default 0), so deployments stay in flight long
//! enough for a fault to hit them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use stella_agent_core::{
    async_trait, ApplyOutcome, CancellationToken, DeployTask, ObservedComponent, Plan, Progress,
    Sticker, Target, TargetError, TargetSpec,
};

/// One change applied to a simulated target: a task's deployment carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SideEffect {
    /// The agent that applied it.
    pub agent_id: String,
    /// The target changed.
    pub target: String,
    /// The deployment carried out.
    pub deployment_id: String,
    /// The task, as the control plane numbered it.
    pub task_id: String,
    /// The lease epoch the task ran under.
    pub epoch: u64,
    /// When, on this process's clock.
    pub at: Instant,
}

/// Every side effect of every simulated target of a scenario.
#[derive(Debug, Default)]
pub struct Ledger {
    effects: Mutex<Vec<SideEffect>>,
    /// Applies stopped by a cancellation: task id and when.
    stopped: Mutex<Vec<(String, Instant)>>,
}

impl Ledger {
    /// An empty ledger, to share between the agents of a scenario.
    pub fn new() -> Arc<Self> {
        Arc::new(Ledger::default())
    }

    fn record(&self, effect: SideEffect) {
        self.lock().push(effect);
    }

    /// How many side effects were recorded.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none was.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// A copy of every side effect, in the order they happened.
    pub fn effects(&self) -> Vec<SideEffect> {
        self.lock().clone()
    }

    /// Side effects per task id.
    pub fn per_task(&self) -> HashMap<String, Vec<SideEffect>> {
        let mut tasks: HashMap<String, Vec<SideEffect>> = HashMap::new();
        for effect in self.lock().iter() {
            tasks
                .entry(effect.task_id.clone())
                .or_default()
                .push(effect.clone());
        }
        tasks
    }

    /// The tasks applied more than once, with every one of their side effects.
    pub fn duplicated(&self) -> Vec<(String, Vec<SideEffect>)> {
        let mut duplicated: Vec<_> = self
            .per_task()
            .into_iter()
            .filter(|(_, effects)| effects.len() > 1)
            .collect();
        duplicated.sort_by(|a, b| a.0.cmp(&b.0));
        duplicated
    }

    /// When the apply of `task_id` was stopped by a cancellation, if it was.
    pub fn stopped_at(&self, task_id: &str) -> Option<Instant> {
        self.stopped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .find(|(id, _)| id == task_id)
            .map(|(_, at)| *at)
    }

    fn lock(&self) -> MutexGuard<'_, Vec<SideEffect>> {
        self.effects.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What runs on one simulated target: per component, the image and its sticker.
#[derive(Debug, Clone, Default)]
struct TargetState {
    components: BTreeMap<String, (String, Sticker)>,
}

/// The `sim` kind of one agent.
#[derive(Debug)]
pub struct SimTarget {
    ledger: Arc<Ledger>,
    targets: Mutex<HashMap<String, TargetState>>,
}

impl SimTarget {
    /// A kind whose applies are recorded in `ledger`.
    pub fn new(ledger: Arc<Ledger>) -> Arc<Self> {
        Arc::new(SimTarget {
            ledger,
            targets: Mutex::new(HashMap::new()),
        })
    }

    /// A registry holding only this kind, for `stella_agent_core::run`.
    pub fn registry(self: &Arc<Self>) -> stella_agent_core::TargetRegistry {
        let mut registry = stella_agent_core::TargetRegistry::new();
        registry.register(Arc::clone(self) as Arc<dyn Target>);
        registry
    }

    /// Changes what runs on `target` behind the agent's back (as someone with a shell on
    /// the host would): every component now runs another image. The next drift round
    /// finds `image_changed`. Returns whether the target had components.
    pub fn tamper(&self, target: &str) -> bool {
        let mut targets = self.lock();
        let Some(state) = targets.get_mut(target) else {
            return false;
        };
        for (image, _) in state.components.values_mut() {
            *image = format!("tampered@sha256:{}", "0".repeat(64));
        }
        !state.components.is_empty()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, TargetState>> {
        self.targets.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn digest_of(image: &str) -> String {
    image
        .split_once('@')
        .map_or_else(String::new, |(_, digest)| digest.to_owned())
}

#[async_trait]
impl Target for SimTarget {
    fn kind(&self) -> &'static str {
        "sim"
    }

    async fn plan(&self, task: &DeployTask) -> Result<Plan, TargetError> {
        Ok(Plan {
            steps: task
                .components
                .iter()
                .map(|c| format!("run {} as {}", c.image, c.name))
                .collect(),
        })
    }

    async fn apply(
        &self,
        task: &DeployTask,
        _plan: &Plan,
        progress: &Progress,
        cancel: &CancellationToken,
    ) -> Result<ApplyOutcome, TargetError> {
        let apply_ms: u64 = task
            .target
            .settings
            .get("apply_ms")
            .and_then(|ms| ms.parse().ok())
            .unwrap_or(0);
        progress.report(format!("applying for {apply_ms} ms"));
        tokio::select! {
            () = cancel.cancelled() => {
                self.ledger
                    .stopped
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((progress.task_id().to_owned(), Instant::now()));
                return Err(TargetError::Cancelled);
            }
            () = tokio::time::sleep(Duration::from_millis(apply_ms)) => {}
        }
        // The change itself: recorded and made in one step, so the ledger is the truth
        // about what the target went through.
        let stickers: Vec<Sticker> = task
            .components
            .iter()
            .map(|component| task.sticker(component, progress.agent_id()))
            .collect();
        {
            let mut targets = self.lock();
            let state = targets.entry(task.target.name.clone()).or_default();
            state.components = task
                .components
                .iter()
                .zip(&stickers)
                .map(|(c, s)| (c.name.clone(), (c.image.clone(), s.clone())))
                .collect();
            self.ledger.record(SideEffect {
                agent_id: progress.agent_id().to_owned(),
                target: task.target.name.clone(),
                deployment_id: task.deployment_id.clone(),
                task_id: progress.task_id().to_owned(),
                epoch: progress.epoch(),
                at: Instant::now(),
            });
        }
        progress.report("applied");
        Ok(ApplyOutcome {
            summary: format!("{} component(s) applied", stickers.len()),
            stickers,
            ..ApplyOutcome::default()
        })
    }

    async fn inspect(&self, target: &TargetSpec) -> Result<Vec<ObservedComponent>, TargetError> {
        let targets = self.lock();
        Ok(targets
            .get(&target.name)
            .map(|state| {
                state
                    .components
                    .iter()
                    .map(|(name, (image, sticker))| ObservedComponent {
                        component: name.clone(),
                        image_digest: digest_of(image),
                        sticker_digest: Some(sticker.sticker_digest.clone()),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn write_sticker(
        &self,
        target: &TargetSpec,
        sticker: &Sticker,
    ) -> Result<(), TargetError> {
        let mut targets = self.lock();
        let state = targets.entry(target.name.clone()).or_default();
        if let Some((_, stored)) = state.components.get_mut(&sticker.component) {
            *stored = sticker.clone();
        }
        Ok(())
    }

    async fn read_sticker(
        &self,
        target: &TargetSpec,
        component: &str,
    ) -> Result<Option<Sticker>, TargetError> {
        Ok(self
            .lock()
            .get(&target.name)
            .and_then(|state| state.components.get(component))
            .map(|(_, sticker)| sticker.clone()))
    }
}

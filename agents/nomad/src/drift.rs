//! What runs in the job, and how it differs from the desired state.

use serde_json::Value;
use stella_agent_core::{DriftFinding, DriftKind, ObservedComponent, Sticker};

use crate::client::{job_stopped, job_version};
use crate::jobspec;
use crate::settings::NomadSettings;

/// The components the job runs: those with a sticker in `Meta` and those the settings
/// map, whose task exists; `None` job (purged) or a stopped job runs nothing.
pub(crate) fn observed(job: Option<&Value>, settings: &NomadSettings) -> Vec<ObservedComponent> {
    let Some(job) = job.filter(|j| !job_stopped(j)) else {
        return Vec::new();
    };
    let mut names: Vec<String> = job
        .get("Meta")
        .and_then(Value::as_object)
        .map(|meta| {
            meta.keys()
                .filter_map(|k| k.strip_prefix(jobspec::META_STICKER_PREFIX))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    names.extend(settings.tasks.keys().cloned());
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter(|name| settings.runs(name))
        .filter_map(|name| {
            let at = jobspec::find_task(job, &name, &settings.task_of(&name)).ok()?;
            let image = jobspec::image(job, at)?;
            let image_digest = image
                .rsplit_once('@')
                .map_or(image, |(_, digest)| digest)
                .to_owned();
            Some(ObservedComponent {
                sticker_digest: sticker(job, &name).map(|s| s.sticker_digest),
                component: name,
                image_digest,
            })
        })
        .collect()
}

/// The sticker of `component` in the job's `Meta`; `None` when absent or not a sticker.
pub(crate) fn sticker(job: &Value, component: &str) -> Option<Sticker> {
    let json = jobspec::meta(job, &jobspec::sticker_key(component))?;
    Sticker::from_json(json.as_bytes()).ok()
}

/// What the job itself says beyond images and stickers: purged, stopped, or edited
/// outside Stella (its task groups differ from what Stella registered).
pub(crate) fn job_findings(
    job: Option<&Value>,
    job_id: &str,
    components: &[String],
) -> Vec<DriftFinding> {
    let finding = |kind, detail: String| {
        components
            .iter()
            .map(|component| DriftFinding {
                component: component.clone(),
                kind,
                detail: detail.clone(),
            })
            .collect::<Vec<_>>()
    };
    match job {
        None => finding(
            DriftKind::Missing,
            format!("job {job_id} is not registered (purged)"),
        ),
        Some(job) if job_stopped(job) => finding(
            DriftKind::Missing,
            format!("job {job_id} is stopped (version {})", job_version(job)),
        ),
        Some(job) => {
            let registered = jobspec::meta(job, jobspec::META_SPEC);
            let now = jobspec::spec_digest(job);
            if registered.is_some_and(|r| r != now) {
                finding(
                    DriftKind::ConfigChanged,
                    format!(
                        "job {job_id} was edited outside Stella: version {} has other task groups than Stella registered",
                        job_version(job)
                    ),
                )
            } else {
                Vec::new()
            }
        }
    }
}

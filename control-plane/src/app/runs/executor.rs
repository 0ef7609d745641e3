//! The executors of run steps (`uses`): `builtin:scanner`, `builtin:build`,
//! `builtin:script` (in the [`super::sandbox`]), `builtin:deploy`,
//! `builtin:promotion` (in a promotion workflow, `app::workflows`), `builtin:http-check`
//! and `builtin:wait`; `gate.policy` evaluations (`super::policy_gate`); and the capture
//! of a run's outputs.
//!
//! Every executor gets the step's `with` rendered by the scheduler and a cancellation
//! token (the run was cancelled, or this replica stops); it answers the step's outputs
//! or why it failed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use stella_decision::scan::Severity;
use stella_packs::manifest::OutputType;
use stella_packs::schedule::Dispatch;
use stella_packs::{CompiledPlan, RunState};
use tokio_util::sync::CancellationToken;

use super::sandbox::{self, ScriptSpec};
use crate::app::now_ms;
use crate::domain::{NewRunLog, Run, RunArtifact};
use crate::App;

/// What a step runs with.
#[derive(Debug, Clone)]
pub(super) struct StepContext {
    pub app: Arc<App>,
    pub run: Run,
    pub plan: Arc<CompiledPlan>,
    pub cancel: CancellationToken,
    /// Log lines written while the step runs (a script's output as it comes); the
    /// driver stores them under its lease.
    pub live: tokio::sync::mpsc::UnboundedSender<NewRunLog>,
}

/// What a step did: its outputs or why it failed, and lines for the run's log.
#[derive(Debug)]
pub(super) struct StepOutcome {
    pub result: Result<Map<String, Value>, String>,
    pub logs: Vec<NewRunLog>,
}

/// The directory of a run on this replica: `work/` (scripts' working directory,
/// shared by the run's steps) and `output/` (where file outputs are written).
pub(super) fn run_dir(app: &App, run: &Run) -> PathBuf {
    app.config
        .data_dir
        .join("runs")
        .join(&run.tenant)
        .join(&run.id)
}

/// Runs one dispatched step.
pub(super) async fn execute(context: &StepContext, dispatch: &Dispatch) -> StepOutcome {
    let mut logs = Vec::new();
    let with = &dispatch.with;
    let result = match dispatch.uses.as_deref() {
        Some("builtin:scanner") => scanner(context, with).await,
        Some("builtin:build") => build(context, with, &mut logs).await,
        Some("builtin:script") => script(context, dispatch, &mut logs).await,
        Some("builtin:deploy") => deploy(context, with, &mut logs).await,
        Some("builtin:promotion") => {
            context
                .app
                .run_promotion_step(&context.run, with, &context.cancel, &mut logs)
                .await
        }
        Some("builtin:http-check") => http_check(context, with).await,
        Some("builtin:wait") => wait(context, with).await,
        Some(other) => Err(format!("unknown executor `{other}`")),
        None => super::policy_gate::evaluate(context, dispatch, &mut logs).await,
    };
    let result = if context.cancel.is_cancelled() && result.is_err() {
        Err("stopped: the run was cancelled".to_owned())
    } else {
        result
    };
    StepOutcome { result, logs }
}

fn text<'a>(with: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, String> {
    match with.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(other) => Err(format!("`{name}` must be a string, found {other}")),
    }
}

fn integer(with: &Map<String, Value>, name: &str) -> Result<Option<u64>, String> {
    match with.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("`{name}` must be a non-negative integer, found {value}")),
    }
}

fn parse_severity(text: &str) -> Option<Severity> {
    Severity::ALL
        .into_iter()
        .find(|s| format!("{s:?}").eq_ignore_ascii_case(text.trim()))
}

/// The security verdict of `target` from the stored scan reports, after VEX: fails
/// when an unsuppressed finding is at or above `failOn` (default `critical`), or when
/// no report covers the image.
async fn scanner(
    context: &StepContext,
    with: &Map<String, Value>,
) -> Result<Map<String, Value>, String> {
    let target = text(with, "target")?.ok_or("`target` is required")?.trim();
    let fail_on = match text(with, "failOn")? {
        Some(s) => {
            parse_severity(s).ok_or_else(|| format!("unknown severity `{s}` in `failOn`"))?
        }
        None => Severity::Critical,
    };
    let digest = if let Some((_, digest)) = target.split_once('@') {
        digest.to_owned()
    } else if target.starts_with("sha256:") {
        target.to_owned()
    } else {
        context
            .app
            .store
            .scanned_digest_of(target)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("not scanned: no scan report was imported for `{target}`"))?
    };
    let detail = context
        .app
        .scan_detail(&digest)
        .await
        .map_err(|e| format!("not scanned: {}", e.message))?;
    let mut counts: std::collections::BTreeMap<Severity, u64> = Default::default();
    let mut blocking = Vec::new();
    let mut suppressed = 0_u64;
    for shown in &detail.findings {
        if shown.suppressed_by.is_some() {
            suppressed += 1;
            continue;
        }
        *counts.entry(shown.finding.severity).or_default() += 1;
        if shown.finding.severity >= fail_on {
            blocking.push(shown.finding.vulnerability.clone());
        }
    }
    let count = |s: Severity| counts.get(&s).copied().unwrap_or(0);
    let mut outputs = Map::new();
    outputs.insert("digest".into(), json!(detail.digest));
    outputs.insert("critical".into(), json!(count(Severity::Critical)));
    outputs.insert("high".into(), json!(count(Severity::High)));
    outputs.insert("medium".into(), json!(count(Severity::Medium)));
    outputs.insert("low".into(), json!(count(Severity::Low)));
    outputs.insert("suppressed".into(), json!(suppressed));
    outputs.insert(
        "failOn".into(),
        json!(format!("{fail_on:?}").to_lowercase()),
    );
    if blocking.is_empty() {
        outputs.insert("verdict".into(), json!("pass"));
        Ok(outputs)
    } else {
        blocking.sort();
        blocking.dedup();
        Err(format!(
            "{} finding(s) at or above {}: {}",
            blocking.len(),
            format!("{fail_on:?}").to_lowercase(),
            blocking.join(", ")
        ))
    }
}

/// `docker build` of `context` (relative to the run's work directory) when one is
/// given; without a context there is nothing to build.
async fn build(
    context: &StepContext,
    with: &Map<String, Value>,
    logs: &mut Vec<NewRunLog>,
) -> Result<Map<String, Value>, String> {
    let Some(build_context) = text(with, "context")? else {
        logs.push(
            NewRunLog::info(
                "step.output",
                "builtin:build: no `context` given, nothing to build",
            )
            .level("warn"),
        );
        return Ok(Map::from_iter([("built".to_owned(), json!(false))]));
    };
    let work = run_dir(&context.app, &context.run).join("work");
    std::fs::create_dir_all(&work).map_err(|e| format!("cannot create the work directory: {e}"))?;
    let mut command = tokio::process::Command::new("docker");
    command.current_dir(&work).arg("build").arg("--quiet");
    if let Some(image) = text(with, "image")? {
        command.args(["--tag", image]);
    }
    if let Some(dockerfile) = text(with, "dockerfile")? {
        command.args(["--file", dockerfile]);
    }
    if let Some(target) = text(with, "target")? {
        command.args(["--target", target]);
    }
    if let Some(Value::Object(args)) = with.get("args") {
        for (name, value) in args {
            command.args([
                "--build-arg",
                &format!("{name}={}", stella_packs::expr::to_text(value)),
            ]);
        }
    }
    command.arg(build_context).kill_on_drop(true);
    let output = tokio::select! {
        output = command.output() => output.map_err(|e| format!("cannot run docker: {e}"))?,
        () = context.cancel.cancelled() => return Err("stopped: the run was cancelled".into()),
    };
    if !output.status.success() {
        return Err(format!(
            "docker build failed: {}",
            tail(&String::from_utf8_lossy(&output.stderr), 2000)
        ));
    }
    let id = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let mut outputs = Map::new();
    outputs.insert("built".into(), json!(true));
    outputs.insert("imageId".into(), json!(id));
    if let Some(image) = text(with, "image")? {
        outputs.insert("image".into(), json!(image));
    }
    Ok(outputs)
}

async fn script(
    context: &StepContext,
    dispatch: &Dispatch,
    logs: &mut Vec<NewRunLog>,
) -> Result<Map<String, Value>, String> {
    let with = &dispatch.with;
    let body = text(with, "script")?.ok_or("`script` is required")?;
    let shell = text(with, "shell")?.unwrap_or("bash");
    let mut env = Vec::new();
    if let Some(Value::Object(vars)) = with.get("env") {
        for (name, value) in vars {
            env.push((name.clone(), stella_packs::expr::to_text(value)));
        }
    }
    let args = match with.get("args") {
        Some(Value::Array(items)) => items.iter().map(stella_packs::expr::to_text).collect(),
        _ => Vec::new(),
    };
    let dir = run_dir(&context.app, &context.run);
    let (lines_tx, mut lines_rx) = tokio::sync::mpsc::unbounded_channel();
    let spec = ScriptSpec {
        shell: shell.to_owned(),
        script: body.to_owned(),
        args,
        env,
        work_dir: dir.join("work"),
        output_dir: dir.join("output"),
        scratch_dir: dir
            .join("tmp")
            .join(dispatch.key.replace(['[', ']', '.'], "_")),
        sandbox: context.plan.plan.sandbox.clone(),
        live: Some(lines_tx),
    };
    // Each line goes to the run's log as the script writes it.
    let forward = {
        let (live, key) = (context.live.clone(), dispatch.key.clone());
        tokio::spawn(async move {
            while let Some(line) = lines_rx.recv().await {
                let _ = live.send(
                    NewRunLog::info("step.output", line)
                        .step(&key)
                        .meta("stream", "live"),
                );
            }
        })
    };
    let result = sandbox::run_script(&spec, &context.cancel).await;
    drop(spec);
    let _ = forward.await;
    let result = result?;
    logs.push(
        NewRunLog::info(
            "step.output",
            match result.exit_code {
                Some(code) => format!("the script exited with status {code}"),
                None => "the script was killed by a signal".to_owned(),
            },
        )
        .step(&dispatch.key)
        .meta(
            "exitCode",
            result.exit_code.map_or("none".into(), |c| c.to_string()),
        ),
    );
    if let Some(reason) = result.killed {
        return Err(reason);
    }
    match result.exit_code {
        Some(0) => {
            let mut outputs = result.outputs;
            outputs.insert("exitCode".into(), json!(0));
            Ok(outputs)
        }
        Some(code) => Err(format!("the script exited with status {code}")),
        None => Err("the script was killed by a signal".to_owned()),
    }
}

/// Promotes a release to an environment through the normal promotion path (gates,
/// approvals, signed decision) and waits until the promotion has settled.
async fn deploy(
    context: &StepContext,
    with: &Map<String, Value>,
    logs: &mut Vec<NewRunLog>,
) -> Result<Map<String, Value>, String> {
    let (release, version) = match (
        text(with, "release")?,
        text(with, "version")?,
        text(with, "image")?,
    ) {
        (Some(r), Some(v), _) => (Some(r.to_owned()), Some(v.to_owned())),
        (None, None, Some(image)) => match image.split_once('@') {
            Some((r, v)) => (Some(r.to_owned()), Some(v.to_owned())),
            None => return Err(format!("`image` must be RELEASE@VERSION, found `{image}`")),
        },
        (None, None, None) => (None, None),
        _ => return Err("give both `release` and `version` (or `image: RELEASE@VERSION`)".into()),
    };
    let environment = text(with, "environment")?;
    let (Some(release), Some(version), Some(environment)) = (release, version, environment) else {
        if text(with, "environment")?.is_none()
            && text(with, "release")?.is_none()
            && text(with, "image")?.is_none()
        {
            logs.push(
                NewRunLog::info(
                    "step.output",
                    "builtin:deploy: no release or environment given, nothing deployed",
                )
                .level("warn"),
            );
            return Ok(Map::from_iter([("deployed".to_owned(), json!(false))]));
        }
        return Err("builtin:deploy needs `environment` and a release (`release` + `version`, or `image: RELEASE@VERSION`)".into());
    };
    let user = context
        .app
        .run_user(&context.run)
        .await
        .map_err(|e| e.message)?;
    let detail = context
        .app
        .promote(&release, &version, environment, &user, None)
        .await
        .map_err(|e| format!("promotion refused: {}", e.message))?;
    let id = detail.promotion.id.clone();
    logs.push(NewRunLog::info(
        "step.output",
        format!("promotion {id} of {release}@{version} to {environment} requested"),
    ));
    let timeout = Duration::from_secs(integer(with, "timeoutSeconds")?.unwrap_or(1800));
    let started = Instant::now();
    let mut detail = detail;
    while !detail.promotion.state.is_terminal() {
        if started.elapsed() > timeout {
            return Err(format!(
                "promotion {id} did not settle within {}s (state {})",
                timeout.as_secs(),
                detail.promotion.state
            ));
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            () = context.cancel.cancelled() => return Err("stopped: the run was cancelled".into()),
        }
        detail = context
            .app
            .promotion_detail(&id)
            .await
            .map_err(|e| e.message)?;
    }
    let promotion = detail.promotion;
    let state = promotion.state.to_string();
    if state != "deployed" {
        return Err(format!(
            "promotion {id} ended {state}{}",
            promotion
                .message
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        ));
    }
    let mut outputs = Map::new();
    outputs.insert("deployed".into(), json!(true));
    outputs.insert("promotionId".into(), json!(id));
    outputs.insert("decisionId".into(), json!(promotion.decision_id));
    outputs.insert("deploymentId".into(), json!(promotion.deployment_id));
    outputs.insert("release".into(), json!(release));
    outputs.insert("version".into(), json!(version));
    outputs.insert("environment".into(), json!(environment));
    Ok(outputs)
}

/// One HTTP request (tried again `retries` times a second apart) whose status must be
/// `expectStatus` (default 200).
async fn http_check(
    context: &StepContext,
    with: &Map<String, Value>,
) -> Result<Map<String, Value>, String> {
    let url = text(with, "url")?.ok_or("`url` is required")?;
    let method = text(with, "method")?.unwrap_or("GET").to_ascii_uppercase();
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .map_err(|_| format!("unknown method `{method}`"))?;
    let expect = integer(with, "expectStatus")?.unwrap_or(200);
    let timeout = Duration::from_secs(integer(with, "timeoutSeconds")?.unwrap_or(10).max(1));
    let retries = integer(with, "retries")?.unwrap_or(0).min(100);
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| e.to_string())?;
    let mut last = String::new();
    for attempt in 0..=retries {
        if attempt > 0 {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = context.cancel.cancelled() => return Err("stopped: the run was cancelled".into()),
            }
        }
        let started = Instant::now();
        let response = tokio::select! {
            r = client.request(method.clone(), url).send() => r,
            () = context.cancel.cancelled() => return Err("stopped: the run was cancelled".into()),
        };
        match response {
            Ok(response) if u64::from(response.status().as_u16()) == expect => {
                let mut outputs = Map::new();
                outputs.insert("status".into(), json!(response.status().as_u16()));
                outputs.insert(
                    "durationMs".into(),
                    json!(started.elapsed().as_millis() as u64),
                );
                return Ok(outputs);
            }
            Ok(response) => {
                last = format!(
                    "{url} answered {} (expected {expect})",
                    response.status().as_u16()
                );
            }
            Err(error) => last = format!("{url}: {}", crate::error::ErrorChain(&error)),
        }
    }
    Err(last)
}

async fn wait(
    context: &StepContext,
    with: &Map<String, Value>,
) -> Result<Map<String, Value>, String> {
    let seconds = integer(with, "seconds")?.ok_or("`seconds` is required")?;
    tokio::select! {
        () = tokio::time::sleep(Duration::from_secs(seconds)) => {
            Ok(Map::from_iter([("waitedSeconds".to_owned(), json!(seconds))]))
        }
        () = context.cancel.cancelled() => Err("stopped: the run was cancelled".into()),
    }
}

fn tail(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.trim_end().to_owned();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", text[start..].trim_end())
}

/// The pack's outputs once the run finished: files read from the run's `output/` or
/// `work/` directory (the sandbox's `/output` and `/work`), objects evaluated from the
/// inputs and step outputs.
pub(super) async fn capture_outputs(
    app: &App,
    run: &Run,
    plan: &CompiledPlan,
    state: &RunState,
) -> Vec<RunArtifact> {
    let context =
        stella_packs::expr::context(&plan.plan.inputs, &super::outputs_context(state), &[]);
    let dir = run_dir(app, run);
    let now = now_ms();
    let mut artifacts = Vec::new();
    for output in &plan.plan.outputs {
        let mut artifact = RunArtifact {
            name: output.name.clone(),
            kind: match output.ty {
                OutputType::File => "file",
                OutputType::Object => "object",
            }
            .to_owned(),
            source_path: None,
            stored_path: None,
            status: "failed".to_owned(),
            notes: None,
            captured_at_ms: None,
            expression_json: None,
            content: None,
        };
        let rendered = |template: &Option<String>| -> Result<Value, String> {
            let text = template.as_deref().ok_or("no expression")?;
            stella_packs::expr::Template::parse(text)
                .and_then(|t| t.render(&context))
                .map_err(|e| e.0)
        };
        match output.ty {
            OutputType::Object => match rendered(&output.value_expression) {
                Ok(value) => {
                    artifact.status = "captured".into();
                    artifact.captured_at_ms = Some(now);
                    artifact.expression_json = Some(value.to_string());
                }
                Err(e) => artifact.notes = Some(e),
            },
            OutputType::File => match rendered(&output.path_expression) {
                Ok(Value::String(path)) => {
                    artifact.source_path = Some(path.clone());
                    match read_output(&dir, &path, app.config.run_max_artifact_bytes).await {
                        Ok(bytes) => {
                            artifact.status = "captured".into();
                            artifact.captured_at_ms = Some(now);
                            artifact.stored_path =
                                Some(format!("runs/{}/artifacts/{}", run.id, output.name));
                            artifact.content = Some(bytes);
                        }
                        Err(e) => artifact.notes = Some(e),
                    }
                }
                Ok(other) => artifact.notes = Some(format!("the path is not a string: {other}")),
                Err(e) => artifact.notes = Some(e),
            },
        }
        artifacts.push(artifact);
    }
    artifacts
}

async fn read_output(dir: &Path, path: &str, max: usize) -> Result<Vec<u8>, String> {
    let (base, rest) = if let Some(rest) = path.strip_prefix("/output/") {
        (dir.join("output"), rest)
    } else if let Some(rest) = path.strip_prefix("/work/") {
        (dir.join("work"), rest)
    } else {
        return Err(format!("`{path}` is outside /output and /work"));
    };
    if rest.split('/').any(|part| part == "..") {
        return Err(format!("`{path}` leaves its directory"));
    }
    let file = base.join(rest);
    let meta = tokio::fs::symlink_metadata(&file)
        .await
        .map_err(|e| format!("`{path}`: {e}"))?;
    if !meta.is_file() {
        return Err(format!("`{path}` is not a regular file"));
    }
    if meta.len() > max as u64 {
        return Err(format!("`{path}` is larger than {max} bytes"));
    }
    tokio::fs::read(&file)
        .await
        .map_err(|e| format!("`{path}`: {e}"))
}

//! Progress of a wait (`promote --wait`, `rollback --wait`) on stderr, never on stdout,
//! which keeps the result (`-o json`: one document).
//!
//! On a terminal with `-o table`: a live display (indicatif) — a spinner for the
//! deployment with its state and latest line, and one per target with the target's
//! state and latest line. Otherwise (a pipe, a file, CI, `-o json`): plain timestamped
//! lines, one per log line. With `--quiet`: nothing.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use crate::client::ClientError;
use crate::follow::Observer;
use crate::output::{self, cell, Format};

/// How a wait shows progress.
#[derive(Debug)]
pub enum Progress {
    /// A live display on the terminal.
    Live(Box<Live>),
    /// Timestamped lines.
    Plain(Plain),
    /// Nothing.
    Silent,
}

impl Progress {
    /// Live on a terminal with `-o table`; plain lines otherwise; nothing when `quiet`.
    pub fn choose(format: Format, quiet: bool) -> Progress {
        if quiet {
            Progress::Silent
        } else if format == Format::Table && std::io::stderr().is_terminal() {
            Progress::Live(Box::default())
        } else {
            Progress::Plain(Plain::default())
        }
    }
}

impl Observer for Progress {
    fn deployment(&mut self, deployment: &Value) {
        match self {
            Progress::Live(live) => live.deployment(deployment),
            Progress::Plain(plain) => plain.deployment(deployment),
            Progress::Silent => {}
        }
    }

    fn line(&mut self, line: &Value, target: Option<&str>) {
        match self {
            Progress::Live(live) => live.line(line, target),
            Progress::Plain(plain) => plain.line(line),
            Progress::Silent => {}
        }
    }

    fn retrying(&mut self, cause: &ClientError) {
        match self {
            Progress::Live(live) => live.retrying(cause),
            Progress::Plain(plain) => plain.retrying(cause),
            Progress::Silent => {}
        }
    }

    fn finished(&mut self, deployment: &Value) {
        if let Progress::Live(live) = self {
            live.finished(deployment);
        }
    }
}

/// Timestamped lines on stderr.
#[derive(Debug, Default)]
pub struct Plain {
    started: bool,
    retrying: bool,
}

impl Plain {
    fn deployment(&mut self, deployment: &Value) {
        self.retrying = false;
        if !self.started {
            self.started = true;
            eprintln!(
                "{}  following deployment {} ({} of {}@{} to {})",
                output::now(),
                cell(deployment, "/id"),
                cell(deployment, "/kind"),
                cell(deployment, "/release"),
                cell(deployment, "/version"),
                cell(deployment, "/environment"),
            );
        }
    }

    fn line(&mut self, line: &Value) {
        eprintln!("{}  {}", cell(line, "/at"), cell(line, "/message"));
    }

    fn retrying(&mut self, cause: &ClientError) {
        if !self.retrying {
            self.retrying = true;
            eprintln!("{}  {cause}; retrying", output::now());
        }
    }
}

/// The live display: a spinner line for the deployment, one per target; replaced, once
/// the deployment is finished, by a static summary of the same lines.
#[derive(Debug)]
pub struct Live {
    multi: MultiProgress,
    header: Option<ProgressBar>,
    header_latest: String,
    state: String,
    /// In the deployment's task order.
    tasks: Vec<TaskBar>,
    width: usize,
    started: Instant,
}

#[derive(Debug)]
struct TaskBar {
    id: String,
    target: String,
    bar: ProgressBar,
    state: String,
    latest: String,
}

const TICK: Duration = Duration::from_millis(100);

impl Default for Live {
    fn default() -> Self {
        Live {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            header: None,
            header_latest: String::new(),
            state: String::new(),
            tasks: Vec::new(),
            width: 0,
            started: Instant::now(),
        }
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn is_final(state: &str) -> bool {
    matches!(state, "succeeded" | "failed")
}

impl Live {
    fn deployment(&mut self, deployment: &Value) {
        let header = match &self.header {
            Some(header) => header.clone(),
            None => {
                let header = self.multi.add(ProgressBar::new_spinner());
                header.set_style(style("{spinner} {prefix}  {wide_msg}"));
                header.set_prefix(format!(
                    "{} {}@{} → {}",
                    cell(deployment, "/kind"),
                    cell(deployment, "/release"),
                    cell(deployment, "/version"),
                    cell(deployment, "/environment"),
                ));
                header.enable_steady_tick(TICK);
                self.header = Some(header.clone());
                header
            }
        };
        let tasks = deployment["tasks"].as_array().cloned().unwrap_or_default();
        if self.width == 0 {
            self.width = tasks
                .iter()
                .map(|task| cell(task, "/target").chars().count())
                .max()
                .unwrap_or(0);
        }
        for task in &tasks {
            let id = cell(task, "/id");
            let index = match self.tasks.iter().position(|t| t.id == id) {
                Some(index) => index,
                None => {
                    let after = self.tasks.last().map_or(&header, |t| &t.bar);
                    let bar = self.multi.insert_after(after, ProgressBar::new_spinner());
                    bar.set_style(style(&format!(
                        "  {{spinner}} {{prefix:<{}}}  {{wide_msg}}",
                        self.width
                    )));
                    bar.set_prefix(cell(task, "/target"));
                    bar.enable_steady_tick(TICK);
                    self.tasks.push(TaskBar {
                        id,
                        target: cell(task, "/target"),
                        bar,
                        state: String::new(),
                        latest: String::new(),
                    });
                    self.tasks.len() - 1
                }
            };
            let Some(entry) = self.tasks.get_mut(index) else {
                continue;
            };
            let state = cell(task, "/state");
            if entry.state != state {
                entry.state = state;
                if is_final(&entry.state) {
                    // The agent's result says it best; later lines change nothing.
                    if let Some(message) = task["message"].as_str().filter(|m| !m.is_empty()) {
                        entry.latest = message.to_owned();
                    }
                }
                entry.show();
            }
        }
        let state = cell(deployment, "/state");
        if state != self.state {
            self.state = state;
            self.show_header();
        }
    }

    fn line(&mut self, line: &Value, target: Option<&str>) {
        let message = cell(line, "/message");
        let task_id = line["task_id"].as_str().unwrap_or_default();
        let task = self.tasks.iter_mut().find(|t| t.id == task_id);
        match (task, target) {
            (Some(task), Some(target)) => {
                if !is_final(&task.state) {
                    task.latest = message
                        .strip_prefix(&format!("{target}: "))
                        .unwrap_or(&message)
                        .to_owned();
                    task.show();
                }
            }
            _ => {
                self.header_latest = message;
                self.show_header();
            }
        }
    }

    fn retrying(&mut self, cause: &ClientError) {
        if let Some(header) = &self.header {
            header.set_message(format!("{}  ({cause}; retrying)", self.state));
        }
    }

    /// Replaces the live lines by a summary that stays on the screen.
    fn finished(&mut self, deployment: &Value) {
        for task in &self.tasks {
            task.bar.finish_and_clear();
        }
        let Some(header) = &self.header else {
            return;
        };
        header.finish_and_clear();
        let _ = self.multi.clear();
        let seconds = self.started.elapsed().as_secs_f64();
        let outcome = if cell(deployment, "/state") == "succeeded" {
            format!("✓ succeeded in {seconds:.1}s")
        } else {
            format!(
                "✗ failed after {seconds:.1}s: {}",
                cell(deployment, "/message")
            )
        };
        eprintln!("{}  {outcome}", header.prefix());
        for task in &self.tasks {
            let mark = match task.state.as_str() {
                "succeeded" => '✓',
                "failed" => '✗',
                _ => '-',
            };
            eprintln!(
                "  {mark} {:<width$}  {}",
                task.target,
                task.text(),
                width = self.width
            );
        }
    }

    fn show_header(&self) {
        if let Some(header) = &self.header {
            if self.header_latest.is_empty() {
                header.set_message(self.state.clone());
            } else {
                header.set_message(format!("{}  {}", self.state, self.header_latest));
            }
        }
    }
}

impl TaskBar {
    fn text(&self) -> String {
        if self.latest.is_empty() {
            self.state.clone()
        } else {
            format!("{}  {}", self.state, self.latest)
        }
    }

    fn show(&self) {
        self.bar.set_message(self.text());
    }
}

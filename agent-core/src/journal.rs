//! The task journal: one JSON file per task id under `<data-dir>/journal/`, so a task the
//! agent finished is answered from disk and never executed twice, and a task a crash
//! interrupted is known to be in flight.
//!
//! The server answers a stored `TaskResult` with `TaskAck`; the entry is then marked
//! acknowledged. Until then the result is listed in `Hello.in_flight` and sent again after
//! each reconnect. The server handles duplicates idempotently, and an assignment of a
//! finished task is answered from here in any case.
//!
//! Entries hold no task payload, so nothing secret in one (registry credentials, secret
//! values) reaches the disk.
//!
//! Beside each entry, `<task>.lines` holds the task's progress lines, numbered from 1 (one
//! JSON object a line, appended as they are reported). Until the task's result is
//! acknowledged they are re-sent after every reconnect, so lines reported while the server
//! was down reach it; the server stores each (task, line number) once. The file goes when
//! the result is acknowledged.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::AgentError;
use crate::fsutil;
use stella_proto::v1;

/// How long finished entries are kept.
pub const RETENTION: Duration = Duration::from_secs(7 * 24 * 60 * 60);

const MAX_TASK_ID_LEN: usize = 128;

/// The journal in a data dir.
#[derive(Debug, Clone)]
pub struct Journal {
    dir: PathBuf,
}

/// Where a task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryState {
    /// Started and not finished: if the agent is not running it now, it crashed midway.
    Running,
    /// Finished; `result` holds the answer.
    Finished,
}

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The target reached the desired state.
    Succeeded,
    /// It did not.
    Failed,
    /// The task was cancelled, by the server or at its deadline.
    Cancelled,
}

impl Outcome {
    /// The wire state.
    pub fn to_proto(self) -> v1::TaskState {
        match self {
            Outcome::Succeeded => v1::TaskState::Succeeded,
            Outcome::Failed => v1::TaskState::Failed,
            Outcome::Cancelled => v1::TaskState::Cancelled,
        }
    }
}

/// A progress line as journaled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournaledLine {
    /// Its number within the task, from 1.
    pub line: u64,
    /// When it was reported.
    pub at_unix_ms: i64,
    /// The line.
    pub message: String,
}

/// Appends a task's progress lines to its `.lines` file and numbers them.
#[derive(Debug)]
pub struct TaskLines {
    path: PathBuf,
    /// The number the next line gets.
    next: Mutex<u64>,
}

impl TaskLines {
    /// Journals a line and returns its number. A line that cannot be written is logged
    /// and still numbered and sent: progress is advisory, and the task goes on.
    ///
    /// This writes to a file from async code on purpose: one short append to the page
    /// cache (no fsync) per progress line, far below the point where it would stall the
    /// runtime; a crash of the agent process loses nothing written, a crash of the host
    /// may lose the last lines, which only cost progress.
    pub fn append(&self, at_unix_ms: i64, message: &str) -> u64 {
        let mut next = self
            .next
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let line = *next;
        *next += 1;
        let record = JournaledLine {
            line,
            at_unix_ms,
            message: message.to_owned(),
        };
        let written = serde_json::to_vec(&record)
            .map_err(std::io::Error::other)
            .and_then(|mut json| {
                json.push(b'\n');
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?
                    .write_all(&json)
            });
        if let Err(error) = written {
            tracing::warn!(path = %self.path.display(), %error, "could not journal a progress line");
        }
        line
    }
}

/// The stored answer of a finished task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResult {
    /// How it ended.
    pub outcome: Outcome,
    /// One line for the operator.
    pub message: String,
    /// The task's output document (JSON), empty when there is none.
    pub output_json: String,
    /// When it finished.
    pub finished_at_unix_ms: i64,
}

/// One task in the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// The server's task id.
    pub task_id: String,
    /// The lease epoch the task was (last) run under.
    pub epoch: u64,
    /// The task kind (`deploy` or `retire`); the journal treats every kind alike.
    pub kind: String,
    /// Running or finished.
    pub state: EntryState,
    /// When the agent (last) started it.
    pub started_at_unix_ms: i64,
    /// The answer, once finished.
    #[serde(default)]
    pub result: Option<StoredResult>,
    /// Whether the server acknowledged the result (`TaskAck`).
    #[serde(default)]
    pub acknowledged: bool,
}

impl JournalEntry {
    /// A task that starts now.
    pub fn running(task_id: impl Into<String>, epoch: u64, kind: impl Into<String>) -> Self {
        JournalEntry {
            task_id: task_id.into(),
            epoch,
            kind: kind.into(),
            state: EntryState::Running,
            started_at_unix_ms: crate::now_unix_ms(),
            result: None,
            acknowledged: false,
        }
    }

    /// The `TaskResult` of a finished entry, under `epoch`.
    pub fn task_result(&self, epoch: u64) -> Option<v1::TaskResult> {
        let result = self.result.as_ref()?;
        Some(v1::TaskResult {
            task_id: self.task_id.clone(),
            epoch,
            state: result.outcome.to_proto().into(),
            message: result.message.clone(),
            output_json: result.output_json.clone().into_bytes(),
            finished_at_unix_ms: result.finished_at_unix_ms,
        })
    }

    /// The entry as reported in `Hello.in_flight`.
    pub fn status(&self) -> v1::TaskStatus {
        let state = match (&self.state, &self.result) {
            (EntryState::Finished, Some(result)) => result.outcome.to_proto(),
            _ => v1::TaskState::Running,
        };
        v1::TaskStatus {
            task_id: self.task_id.clone(),
            epoch: self.epoch,
            state: state.into(),
        }
    }
}

impl Journal {
    /// Opens (creating, mode 0700) the journal of a data dir and removes temporary files
    /// a crash left behind.
    pub fn open(data_dir: &Path) -> Result<Journal, AgentError> {
        let dir = crate::identity::journal_dir(data_dir);
        fsutil::create_private_dir(&dir)?;
        let journal = Journal { dir };
        for name in journal.file_names()? {
            if fsutil::is_temporary(&name) {
                fsutil::remove_if_exists(&journal.dir.join(name))?;
            }
        }
        Ok(journal)
    }

    /// The journal of `data_dir` for reading only, while the agent that owns it runs:
    /// unlike [`Journal::open`] it creates nothing and leaves temporary files alone
    /// (removing them would pull a write in progress from under the agent).
    pub fn inspect(data_dir: &Path) -> Journal {
        Journal {
            dir: crate::identity::journal_dir(data_dir),
        }
    }

    /// The journal directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether a task id is safe to use as a file name: server ids are UUIDs, anything
    /// with a path separator or a leading dot is refused.
    pub fn is_valid_task_id(task_id: &str) -> bool {
        !task_id.is_empty()
            && task_id.len() <= MAX_TASK_ID_LEN
            && !task_id.starts_with('.')
            && task_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    }

    /// The entry of a task, if any.
    pub fn get(&self, task_id: &str) -> Result<Option<JournalEntry>, AgentError> {
        let path = self.path_of(task_id)?;
        let Some(json) = fsutil::read_optional(&path)? else {
            return Ok(None);
        };
        serde_json::from_str(&json)
            .map(Some)
            .map_err(|e| AgentError::Corrupt {
                path,
                source: Box::new(e),
            })
    }

    /// Writes an entry (atomically).
    pub fn put(&self, entry: &JournalEntry) -> Result<(), AgentError> {
        let path = self.path_of(&entry.task_id)?;
        let json = serde_json::to_vec_pretty(entry).map_err(|e| AgentError::Corrupt {
            path: path.clone(),
            source: Box::new(e),
        })?;
        fsutil::write_atomic(&path, &json)
    }

    /// Marks a task finished with its result.
    pub fn finish(
        &self,
        task_id: &str,
        epoch: u64,
        kind: &str,
        result: StoredResult,
    ) -> Result<JournalEntry, AgentError> {
        let started_at_unix_ms = self
            .get(task_id)
            .ok()
            .flatten()
            .map_or(result.finished_at_unix_ms, |e| e.started_at_unix_ms);
        let entry = JournalEntry {
            task_id: task_id.to_owned(),
            epoch,
            kind: kind.to_owned(),
            state: EntryState::Finished,
            started_at_unix_ms,
            result: Some(result),
            acknowledged: false,
        };
        self.put(&entry)?;
        Ok(entry)
    }

    /// The progress-line writer of a task, numbering on from the lines journaled by an
    /// earlier run of it.
    pub fn task_lines(&self, task_id: &str) -> Result<TaskLines, AgentError> {
        let path = self.lines_path(task_id)?;
        let text = fsutil::read_optional(&path)?.unwrap_or_default();
        if !text.is_empty() && !text.ends_with('\n') {
            // A crash tore the last line: end it, so the next line starts on its own.
            std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .and_then(|mut file| file.write_all(b"\n"))
                .map_err(|e| AgentError::io("write", &path, e))?;
        }
        let next = parse_lines(&text).last().map_or(1, |line| line.line + 1);
        Ok(TaskLines {
            path,
            next: Mutex::new(next),
        })
    }

    /// The progress lines journaled for a task, in order. A torn last line (a crash while
    /// writing it) is skipped.
    pub fn read_lines(&self, task_id: &str) -> Result<Vec<JournaledLine>, AgentError> {
        let path = self.lines_path(task_id)?;
        let Some(text) = fsutil::read_optional(&path)? else {
            return Ok(Vec::new());
        };
        Ok(parse_lines(&text))
    }

    /// Records that the server stored a task's result, sent under lease `epoch`
    /// (`TaskAck`); returns whether the entry changed. An acknowledgement under an older
    /// epoch than the entry's, or of a task that has not finished, changes nothing.
    pub fn acknowledge(&self, task_id: &str, epoch: u64) -> Result<bool, AgentError> {
        let Some(mut entry) = self.get(task_id)? else {
            return Ok(false);
        };
        if entry.state != EntryState::Finished || entry.acknowledged || epoch < entry.epoch {
            return Ok(false);
        }
        entry.acknowledged = true;
        self.put(&entry)?;
        // The lines came before the result on the same stream: the server has them.
        fsutil::remove_if_exists(&self.lines_path(task_id)?)?;
        Ok(true)
    }

    /// All entries, sorted by start time. Unreadable files are logged and skipped.
    pub fn entries(&self) -> Result<Vec<JournalEntry>, AgentError> {
        let mut entries = Vec::new();
        for name in self.file_names()? {
            let Some(task_id) = name.strip_suffix(".json") else {
                continue;
            };
            if fsutil::is_temporary(&name) || !Journal::is_valid_task_id(task_id) {
                continue;
            }
            match self.get(task_id) {
                Ok(Some(entry)) => entries.push(entry),
                Ok(None) => {}
                Err(error) => tracing::warn!(
                    error = %crate::error::error_chain(&error),
                    "skipping an unreadable journal entry"
                ),
            }
        }
        entries.sort_by(|a, b| {
            (a.started_at_unix_ms, &a.task_id).cmp(&(b.started_at_unix_ms, &b.task_id))
        });
        Ok(entries)
    }

    /// The tasks to list in `Hello.in_flight`: running ones and finished ones whose result
    /// the server may not have seen.
    pub fn in_flight(&self) -> Result<Vec<JournalEntry>, AgentError> {
        Ok(self
            .entries()?
            .into_iter()
            .filter(|e| e.state == EntryState::Running || !e.acknowledged)
            .collect())
    }

    /// Removes finished entries that finished more than `retention` before `now_unix_ms`;
    /// returns how many.
    pub fn prune(&self, retention: Duration, now_unix_ms: i64) -> Result<usize, AgentError> {
        let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now_unix_ms.saturating_sub(retention_ms);
        let mut removed = 0;
        for entry in self.entries()? {
            let finished_before_cutoff = entry
                .result
                .as_ref()
                .is_some_and(|r| r.finished_at_unix_ms < cutoff);
            if entry.state == EntryState::Finished && finished_before_cutoff {
                fsutil::remove_if_exists(&self.lines_path(&entry.task_id)?)?;
                fsutil::remove_if_exists(&self.path_of(&entry.task_id)?)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn path_of(&self, task_id: &str) -> Result<PathBuf, AgentError> {
        if !Journal::is_valid_task_id(task_id) {
            return Err(AgentError::InvalidResponse {
                call: "Connect",
                reason: format!("task id {task_id:?} is not a valid journal key"),
            });
        }
        Ok(self.dir.join(format!("{task_id}.json")))
    }

    fn lines_path(&self, task_id: &str) -> Result<PathBuf, AgentError> {
        Ok(self.path_of(task_id)?.with_extension("lines"))
    }

    fn file_names(&self) -> Result<Vec<String>, AgentError> {
        let read =
            std::fs::read_dir(&self.dir).map_err(|e| AgentError::io("list", &self.dir, e))?;
        let mut names = Vec::new();
        for entry in read {
            let entry = entry.map_err(|e| AgentError::io("list", &self.dir, e))?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        Ok(names)
    }
}

fn parse_lines(text: &str) -> Vec<JournaledLine> {
    text.lines()
        .filter_map(|line| serde_json::from_str::<JournaledLine>(line).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(outcome: Outcome, at: i64) -> StoredResult {
        StoredResult {
            outcome,
            message: "done".into(),
            output_json: "{}".into(),
            finished_at_unix_ms: at,
        }
    }

    #[test]
    fn records_running_then_finished() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = Journal::open(dir.path()).expect("open");
        assert!(journal.get("t-1").expect("get").is_none());
        journal
            .put(&JournalEntry::running("t-1", 3, "deploy"))
            .expect("put");
        let entry = journal.get("t-1").expect("get").expect("entry");
        assert_eq!(entry.state, EntryState::Running);
        assert_eq!(entry.status().state, v1::TaskState::Running as i32);

        let entry = journal
            .finish("t-1", 3, "deploy", finished(Outcome::Succeeded, 5))
            .expect("finish");
        assert_eq!(journal.get("t-1").expect("get"), Some(entry.clone()));
        let result = entry.task_result(4).expect("result");
        assert_eq!(result.epoch, 4);
        assert_eq!(result.state, v1::TaskState::Succeeded as i32);
        assert_eq!(journal.in_flight().expect("in flight").len(), 1);
        assert!(
            !journal.acknowledge("t-1", 2).expect("stale ack"),
            "older epoch"
        );
        assert!(!journal.acknowledge("nothing", 3).expect("ack of nothing"));
        assert!(journal.acknowledge("t-1", 4).expect("ack"), "newer epoch");
        assert!(journal.in_flight().expect("in flight").is_empty());
        assert!(!journal.acknowledge("t-1", 4).expect("again"), "already");
    }

    #[test]
    fn progress_lines_are_numbered_across_runs_and_dropped_on_acknowledgement() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = Journal::open(dir.path()).expect("open");
        let lines = journal.task_lines("t-1").expect("lines");
        assert_eq!(lines.append(10, "pulling"), 1);
        assert_eq!(lines.append(11, "starting"), 2);
        // A re-run after a crash numbers on; a torn last line is ignored.
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("journal/t-1.lines"))
            .expect("open lines");
        std::io::Write::write_all(&mut file, b"{\"line\":3,\"at_un").expect("torn");
        let again = journal.task_lines("t-1").expect("lines");
        let read = journal.read_lines("t-1").expect("read");
        assert_eq!(
            read.iter()
                .map(|l| (l.line, l.message.as_str()))
                .collect::<Vec<_>>(),
            vec![(1, "pulling"), (2, "starting")]
        );
        drop(file);
        assert_eq!(again.append(12, "healthy"), 3);
        assert_eq!(journal.read_lines("t-1").expect("read").len(), 3);
        journal
            .finish("t-1", 1, "deploy", finished(Outcome::Succeeded, 13))
            .expect("finish");
        assert!(journal.acknowledge("t-1", 1).expect("ack"));
        assert!(journal.read_lines("t-1").expect("read").is_empty());
        assert_eq!(
            journal.entries().expect("entries").len(),
            1,
            "lines files are not entries"
        );
    }

    #[test]
    fn prunes_old_finished_entries_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = Journal::open(dir.path()).expect("open");
        let day_ms = 24 * 60 * 60 * 1000;
        let now = 100 * day_ms;
        journal
            .finish(
                "old",
                1,
                "deploy",
                finished(Outcome::Failed, now - 8 * day_ms),
            )
            .expect("finish");
        journal
            .finish(
                "recent",
                1,
                "deploy",
                finished(Outcome::Succeeded, now - day_ms),
            )
            .expect("finish");
        let mut running = JournalEntry::running("running", 1, "deploy");
        running.started_at_unix_ms = now - 30 * day_ms;
        journal.put(&running).expect("put");
        assert_eq!(journal.prune(RETENTION, now).expect("prune"), 1);
        let ids: Vec<String> = journal
            .entries()
            .expect("entries")
            .into_iter()
            .map(|e| e.task_id)
            .collect();
        assert_eq!(ids, vec!["running".to_owned(), "recent".to_owned()]);
    }

    #[test]
    fn refuses_task_ids_that_are_not_file_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = Journal::open(dir.path()).expect("open");
        for bad in ["", "../etc/passwd", "a/b", ".hidden", "a b"] {
            assert!(!Journal::is_valid_task_id(bad), "{bad}");
            assert!(journal.get(bad).is_err());
        }
        assert!(Journal::is_valid_task_id(
            "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
        ));
    }

    #[test]
    fn skips_corrupt_entries_and_cleans_temporary_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = Journal::open(dir.path()).expect("open");
        std::fs::write(journal.dir().join("broken.json"), b"{not json").expect("write");
        std::fs::write(journal.dir().join(".x.json.tmp-00"), b"").expect("write");
        journal
            .put(&JournalEntry::running("fine", 1, "deploy"))
            .expect("put");
        let journal = Journal::open(dir.path()).expect("reopen");
        assert!(!journal.dir().join(".x.json.tmp-00").exists());
        assert_eq!(journal.entries().expect("entries").len(), 1);
    }
}

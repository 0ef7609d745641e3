//! What a promotion reads that changes only with configuration — the release, the
//! environment, its plan (targets, planned settings, agents) and the scan inputs — kept
//! in memory per (release, version, environment) and used again while the store's
//! configuration generation is unchanged.
//!
//! The generation is bumped in the writing transaction by every write to what these
//! reads depend on (SQLite migration 0016), and it is read *before* what it tags, so an
//! entry is never older than its generation: a write that commits between the two reads
//! only makes the entry newer than its tag, and the next lookup, seeing the new
//! generation, misses. A promotion therefore reads one row instead of about eight, and
//! the order gate's facts (deployments, which change all the time) are still read every
//! time. PostgreSQL has no generation (replicas would all bump one row): nothing is
//! cached there.

use std::collections::HashMap;
use std::sync::Arc;

use stella_decision::gates::Plan;

use super::PlannedTargetSettings;
use crate::app::scans::ScanInputs;
use crate::domain::{Environment, Release, Target};

/// Most entries kept; a full table is emptied.
const MAX_ENTRIES: usize = 256;

/// An environment with more targets than this is not kept: planning a fan-out that
/// large is rare, and its entry would be large.
const MAX_TARGETS: usize = 1_000;

/// What one promotion of a release to an environment reads from configuration.
pub(super) struct Configured {
    pub release: Release,
    pub env: Environment,
    /// The deployment part of the plan (no workflow).
    pub plan: Plan,
    pub targets: Vec<Target>,
    pub settings: PlannedTargetSettings,
    pub scans: ScanInputs,
}

/// The kept entries and the generation they are valid for.
#[derive(Default)]
pub(crate) struct ConfiguredCache {
    state: parking_lot::Mutex<State>,
}

impl std::fmt::Debug for ConfiguredCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.lock();
        f.debug_struct("ConfiguredCache")
            .field("generation", &state.generation)
            .field("entries", &state.entries.len())
            .finish()
    }
}

#[derive(Default)]
struct State {
    generation: i64,
    entries: HashMap<Key, Arc<Configured>>,
}

type Key = (String, String, String);

fn key(release: &str, version: &str, environment: &str) -> Key {
    (
        release.to_owned(),
        version.to_owned(),
        environment.to_owned(),
    )
}

impl ConfiguredCache {
    /// The entry for this promotion, if it was read at `generation`.
    pub(super) fn get(
        &self,
        generation: i64,
        release: &str,
        version: &str,
        environment: &str,
    ) -> Option<Arc<Configured>> {
        let state = self.state.lock();
        if state.generation != generation {
            return None;
        }
        state
            .entries
            .get(&key(release, version, environment))
            .cloned()
    }

    /// Keeps `configured`, read after the store was at `generation`.
    pub(super) fn put(&self, generation: i64, configured: Arc<Configured>) {
        if configured.targets.len() > MAX_TARGETS {
            return;
        }
        let mut state = self.state.lock();
        if generation < state.generation {
            // Read before a newer generation someone already keeps entries for.
            return;
        }
        if generation > state.generation || state.entries.len() >= MAX_ENTRIES {
            state.entries.clear();
            state.generation = generation;
        }
        let key = key(
            &configured.release.name,
            &configured.release.version,
            &configured.env.name,
        );
        state.entries.insert(key, configured);
    }
}

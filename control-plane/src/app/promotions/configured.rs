//! What a promotion reads that changes only with configuration — the release, the
//! environment, its plan (targets, planned settings, agents) and the scan inputs — kept
//! in memory per (release, version, environment) and used again while the store's
//! configuration generation is unchanged.
//!
//! The generation is bumped in the writing transaction by every write to what these
//! reads depend on (SQLite migration 0016), and it is read *before* what it tags, so an
//! entry is never older than its generation: a write that commits between the two reads
//! only makes the entry newer than its tag, and the next lookup, seeing the new
//! generation, misses. The order gate's fact (whether the release ran in the previous
//! environment) is kept the same way, tagged with both the configuration generation and
//! the one that moves when a deployment becomes (or stops being) succeeded. A promotion
//! therefore reads one row instead of about ten. PostgreSQL has no generation (replicas
//! would all bump one row): nothing is cached there.

use std::collections::HashMap;
use std::sync::Arc;

use stella_decision::gates::{OrderFact, Plan};

use super::PlannedTargetSettings;
use crate::app::scans::ScanInputs;
use crate::domain::{Environment, Release, Target};
use crate::store::ConfigGeneration;

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
            .field("orders", &state.orders.len())
            .finish()
    }
}

#[derive(Default)]
struct State {
    /// What `entries` were read at (its `configuration`) and `orders` at (both).
    generation: Option<ConfigGeneration>,
    entries: HashMap<Key, Arc<Configured>>,
    orders: HashMap<Key, Option<OrderFact>>,
}

impl State {
    /// Empties what `generation` makes stale; false if `generation` is older than what
    /// is kept (nothing is then kept from it).
    fn advance(&mut self, generation: ConfigGeneration) -> bool {
        let kept = self.generation.unwrap_or(generation);
        if generation.configuration < kept.configuration || generation.succeeded < kept.succeeded {
            return false;
        }
        if generation.configuration != kept.configuration {
            self.entries.clear();
        }
        if generation != kept {
            self.orders.clear();
        }
        if self.entries.len() >= MAX_ENTRIES {
            self.entries.clear();
        }
        if self.orders.len() >= MAX_ENTRIES {
            self.orders.clear();
        }
        self.generation = Some(generation);
        true
    }
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
        generation: ConfigGeneration,
        release: &str,
        version: &str,
        environment: &str,
    ) -> Option<Arc<Configured>> {
        let state = self.state.lock();
        if state.generation.map(|g| g.configuration) != Some(generation.configuration) {
            return None;
        }
        state
            .entries
            .get(&key(release, version, environment))
            .cloned()
    }

    /// Keeps `configured`, read after the store was at `generation`.
    pub(super) fn put(&self, generation: ConfigGeneration, configured: Arc<Configured>) {
        if configured.targets.len() > MAX_TARGETS {
            return;
        }
        let mut state = self.state.lock();
        if !state.advance(generation) {
            return;
        }
        let key = key(
            &configured.release.name,
            &configured.release.version,
            &configured.env.name,
        );
        state.entries.insert(key, configured);
    }

    /// The order fact of `release@version` in `after`, if it was read at `generation`.
    pub(super) fn order(
        &self,
        generation: ConfigGeneration,
        release: &str,
        version: &str,
        after: &str,
    ) -> Option<Option<OrderFact>> {
        let state = self.state.lock();
        if state.generation != Some(generation) {
            return None;
        }
        state.orders.get(&key(release, version, after)).cloned()
    }

    /// Keeps the order fact of `release@version` in `after`, read after the store was at
    /// `generation`.
    pub(super) fn put_order(
        &self,
        generation: ConfigGeneration,
        release: &str,
        version: &str,
        after: &str,
        fact: Option<OrderFact>,
    ) {
        let mut state = self.state.lock();
        if state.advance(generation) {
            state.orders.insert(key(release, version, after), fact);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    fn at(configuration: i64, succeeded: i64) -> ConfigGeneration {
        ConfigGeneration {
            configuration,
            succeeded,
        }
    }

    fn fact(deployed_as: &str) -> Option<OrderFact> {
        Some(OrderFact {
            environment: "stage".to_owned(),
            deployed_as: Some(deployed_as.to_owned()),
        })
    }

    #[test]
    fn an_order_fact_is_used_only_at_the_generation_it_was_read_at() {
        let cache = ConfiguredCache::default();
        cache.put_order(at(3, 7), "web", "1", "stage", fact("web@1"));
        assert_eq!(
            cache.order(at(3, 7), "web", "1", "stage"),
            Some(fact("web@1"))
        );
        assert_eq!(
            cache.order(at(3, 7), "web", "2", "stage"),
            None,
            "another version"
        );
        assert_eq!(
            cache.order(at(3, 8), "web", "1", "stage"),
            None,
            "a deployment succeeded since"
        );
        assert_eq!(
            cache.order(at(4, 7), "web", "1", "stage"),
            None,
            "configuration changed since"
        );

        // Read before what is kept: not kept, and what is kept stays.
        cache.put_order(at(3, 6), "web", "2", "stage", None);
        assert_eq!(cache.order(at(3, 6), "web", "2", "stage"), None);
        assert_eq!(
            cache.order(at(3, 7), "web", "1", "stage"),
            Some(fact("web@1"))
        );

        // A newer generation empties what the older one kept.
        cache.put_order(at(3, 8), "web", "2", "stage", None);
        assert_eq!(cache.order(at(3, 8), "web", "2", "stage"), Some(None));
        assert_eq!(cache.order(at(3, 8), "web", "1", "stage"), None);
        assert_eq!(cache.order(at(3, 7), "web", "1", "stage"), None);
    }

    #[test]
    fn the_table_is_bounded() {
        let cache = ConfiguredCache::default();
        for n in 0..=MAX_ENTRIES {
            cache.put_order(at(1, 1), "web", &n.to_string(), "stage", None);
        }
        let kept = cache.state.lock().orders.len();
        assert!(kept <= MAX_ENTRIES, "{kept} kept");
        assert_eq!(
            cache.order(at(1, 1), "web", &MAX_ENTRIES.to_string(), "stage"),
            Some(None),
            "the newest is kept"
        );
    }
}

//! The rollback of a rollout's steps: what it changed, undone in reverse.

use super::{Slot, Step};

/// The steps that undo `done` (the steps of a rollout that have run, in order):
///
/// 1. when any route ran, one route giving all the weight back to the slot that served
///    before (stable for canary and A/B, blue for blue-green), with any A/B match
///    dropped; if that slot was already retired (a finished blue-green), it is first
///    restored with the previous release on the targets the new slot was deployed to;
/// 2. the new slots retired, most recently deployed first, except slots already retired;
/// 3. the stable deployments redeployed with the previous release, last batch first.
///
/// A rolling rollout behind a router (its routes drain targets) is undone group by group
/// instead, last first: each group drained, restored and put back, so no request in
/// flight is cut; with no group done, one route puts every target back.
///
/// Pauses and analyses need no undoing. A retire of a new slot that ran stays done (its
/// containers are gone; the route back never points at it).
pub fn rollback_of(done: &[Step]) -> Vec<Step> {
    let drains = done
        .iter()
        .any(|s| matches!(s, Step::Route { drained, .. } if !drained.is_empty()));
    if drains {
        return rolling_behind_router(done);
    }
    let mut out = Vec::new();
    let new_deploys: Vec<(&Vec<String>, Slot)> = done
        .iter()
        .filter_map(|s| match s {
            Step::Deploy { targets, slot } if *slot != Slot::Stable => Some((targets, *slot)),
            _ => None,
        })
        .collect();
    let is_new = |slot: &Slot| new_deploys.iter().any(|(_, s)| s == slot);
    let retired: Vec<Slot> = done
        .iter()
        .filter_map(|s| match s {
            Step::Retire { slot } => Some(*slot),
            _ => None,
        })
        .collect();
    let first_route = done.iter().find_map(|s| match s {
        Step::Route { weights, .. } => Some(weights),
        _ => None,
    });
    if let Some(weights) = first_route {
        let old = weights
            .iter()
            .map(|(slot, _)| *slot)
            .find(|slot| !is_new(slot))
            .unwrap_or(Slot::Stable);
        if old != Slot::Stable && retired.contains(&old) {
            let mut targets: Vec<String> = new_deploys
                .iter()
                .flat_map(|(targets, _)| targets.iter().cloned())
                .collect();
            targets.sort();
            targets.dedup();
            out.push(Step::Restore { targets, slot: old });
        }
        out.push(Step::Route {
            weights: weights
                .iter()
                .map(|(slot, _)| (*slot, if *slot == old { 100 } else { 0 }))
                .collect(),
            matched: None,
            drained: Vec::new(),
        });
    }
    let mut to_retire: Vec<Slot> = Vec::new();
    for (_, slot) in new_deploys.iter().rev() {
        if !retired.contains(slot) && !to_retire.contains(slot) {
            to_retire.push(*slot);
        }
    }
    out.extend(to_retire.into_iter().map(|slot| Step::Retire { slot }));
    for step in done.iter().rev() {
        if let Step::Deploy {
            targets,
            slot: Slot::Stable,
        } = step
        {
            out.push(Step::Restore {
                targets: targets.clone(),
                slot: Slot::Stable,
            });
        }
    }
    out
}

fn rolling_behind_router(done: &[Step]) -> Vec<Step> {
    let route = |drained: Vec<String>| Step::Route {
        weights: vec![(Slot::Stable, 100)],
        matched: None,
        drained,
    };
    let mut out = Vec::new();
    for step in done.iter().rev() {
        if let Step::Deploy {
            targets,
            slot: Slot::Stable,
        } = step
        {
            out.push(route(targets.clone()));
            out.push(Step::Restore {
                targets: targets.clone(),
                slot: Slot::Stable,
            });
            out.push(route(Vec::new()));
        }
    }
    if out.is_empty() {
        out.push(route(Vec::new()));
    }
    out
}

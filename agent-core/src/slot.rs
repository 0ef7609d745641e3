//! Deployment slots (RFC 0005, "Slots"): a release deployed beside a target's own
//! ("stable") deployment, for a router to send part or all of the traffic to, and
//! retired afterwards. This module holds what every kind shares: the rule for slot names
//! and how a deploy payload's `slot` is read.

use serde::{Deserialize, Deserializer};

/// The name of a target's own deployment. A payload naming it as its slot is a stable
/// deploy; it cannot be retired.
pub const STABLE_SLOT: &str = "stable";

/// The longest slot name: short, so that `<container>-<slot>` and the like stay within
/// the name limits of the platforms slots run on.
const MAX_SLOT_LEN: usize = 16;

/// Checks a slot name: a lowercase letter, then at most 15 lowercase letters or digits
/// (`canary`, `green`, `b`), and not `stable`. The error says which rule failed, for the
/// operator.
pub fn check_slot_name(slot: &str) -> Result<(), String> {
    if slot == STABLE_SLOT {
        return Err(format!(
            "{STABLE_SLOT:?} names the target's own deployment, not a slot"
        ));
    }
    let mut chars = slot.chars();
    let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !starts_with_letter || !rest_ok || slot.len() > MAX_SLOT_LEN {
        return Err(format!(
            "slot {slot:?} is not a valid slot name: it must be a lowercase letter followed by at most {} lowercase letters or digits",
            MAX_SLOT_LEN - 1
        ));
    }
    Ok(())
}

/// Reads a deploy payload's `slot`: absent, `null` and `"stable"` are the stable
/// deployment (`None`); any other value must pass [`check_slot_name`].
pub(crate) fn deserialize_slot<'de, D>(deserializer: D) -> Result<Option<String>, D::Error>
where
    D: Deserializer<'de>,
{
    let slot = Option::<String>::deserialize(deserializer)?;
    match slot.as_deref() {
        None | Some(STABLE_SLOT) => Ok(None),
        Some(name) => {
            check_slot_name(name).map_err(serde::de::Error::custom)?;
            Ok(slot)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_are_short_lowercase_words_and_not_stable() {
        for good in ["canary", "green", "b", "blue2", "abcdefghijklmnop"] {
            assert_eq!(check_slot_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "Bad!",
            "Canary",
            "2nd",
            "can-ary",
            "can_ary",
            "abcdefghijklmnopq",
            "stable",
            "ünïcode",
        ] {
            let error = check_slot_name(bad).expect_err(bad);
            assert!(error.contains(&format!("{bad:?}")), "{error}");
        }
    }
}

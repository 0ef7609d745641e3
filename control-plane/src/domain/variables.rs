//! Per-environment variables and secrets, and the `${var.NAME}` / `${secret.NAME}`
//! references target settings make to them.
//!
//! Variables are substituted when a deployment is created: their values are part of the
//! plan the deployment records. Secrets are not: a setting keeps its `${secret.NAME}`
//! reference in everything stored, and the value travels only in the task as sent to
//! the agent, which substitutes it right before it applies the task.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::Invalid;

string_enum!(
    /// Whether a value is a plain variable or a sealed secret.
    VariableKind {
        /// Plain text, shown to operators and recorded in plans.
        Var = "var",
        /// Sealed at rest, never shown, logged or recorded; only sent to agents.
        Secret = "secret",
    }
);

/// A variable or secret of an environment.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variable {
    /// Its environment.
    pub environment: String,
    /// Variable or secret.
    pub kind: VariableKind,
    /// `[A-Za-z_][A-Za-z0-9_]{0,63}`.
    pub name: String,
    /// The value as stored: plain for variables, sealed for secrets.
    pub stored_value: String,
    /// Who set it last.
    pub updated_by: String,
    /// When it was set last.
    pub updated_at_ms: i64,
}

impl fmt::Debug for Variable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = match self.kind {
            VariableKind::Var => self.stored_value.as_str(),
            VariableKind::Secret => "<sealed>",
        };
        f.debug_struct("Variable")
            .field("environment", &self.environment)
            .field("kind", &self.kind)
            .field("name", &self.name)
            .field("value", &value)
            .field("updated_at_ms", &self.updated_at_ms)
            .finish()
    }
}

/// Checks a variable or secret name: a letter or `_`, then letters, digits and `_`, at
/// most 64 characters (so it reads as an identifier in `${var.NAME}`).
pub fn validate_variable_name(name: &str) -> Result<(), Invalid> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if first_ok && name.len() <= 64 && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(())
    } else {
        Err(Invalid(format!(
            "invalid variable name `{name}`: use letters, digits and '_', starting with a letter or '_', at most 64"
        )))
    }
}

/// One `${…}` reference found in a text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// `var` or `secret`.
    pub kind: VariableKind,
    /// The name referred to.
    pub name: String,
}

/// A piece of a setting value: literal text or a reference.
#[derive(Debug, PartialEq, Eq)]
enum Piece<'a> {
    Text(&'a str),
    Ref(Reference),
}

/// Splits a value into text and `${var.NAME}` / `${secret.NAME}` references. `$${` is a
/// literal `${`. Any other `${…}` is refused, so a typo does not reach a container as is.
fn pieces(value: &str) -> Result<Vec<Piece<'_>>, Invalid> {
    let mut out = Vec::new();
    let mut rest = value;
    while let Some(at) = rest.find("${") {
        if at > 0 && rest[..at].ends_with('$') {
            // `$${` → literal `${`: keep text up to and including one `$`, skip the other.
            out.push(Piece::Text(&rest[..at - 1]));
            out.push(Piece::Text("${"));
            rest = &rest[at + 2..];
            continue;
        }
        out.push(Piece::Text(&rest[..at]));
        let after = &rest[at + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| Invalid(format!("unclosed `${{` in `{value}`")))?;
        let inner = &after[..end];
        let (kind, name) = inner.split_once('.').ok_or_else(|| {
            Invalid(format!(
                "`${{{inner}}}`: use ${{var.NAME}} or ${{secret.NAME}} (write $${{ for a literal ${{)"
            ))
        })?;
        let kind: VariableKind = kind.parse().map_err(|_| {
            Invalid(format!(
                "`${{{inner}}}`: use ${{var.NAME}} or ${{secret.NAME}} (write $${{ for a literal ${{)"
            ))
        })?;
        validate_variable_name(name)?;
        out.push(Piece::Ref(Reference {
            kind,
            name: name.to_owned(),
        }));
        rest = &after[end + 1..];
    }
    out.push(Piece::Text(rest));
    Ok(out)
}

/// The references a value makes (checked for syntax).
pub fn references(value: &str) -> Result<Vec<Reference>, Invalid> {
    Ok(pieces(value)?
        .into_iter()
        .filter_map(|piece| match piece {
            Piece::Ref(reference) => Some(reference),
            Piece::Text(_) => None,
        })
        .collect())
}

/// Settings with `${var.NAME}` replaced by the variable's value; `${secret.NAME}`
/// references stay as they are (see the module docs) and `$${` stays escaped. Returns
/// the settings and the names of the secrets they reference. Refuses a reference to a
/// variable or secret the environment does not have, naming the setting.
pub fn substitute_variables(
    settings: &BTreeMap<String, String>,
    variables: &BTreeMap<String, String>,
    secrets: &BTreeSet<String>,
) -> Result<(BTreeMap<String, String>, BTreeSet<String>), Invalid> {
    let mut out = BTreeMap::new();
    let mut used_secrets = BTreeSet::new();
    // Every unresolvable reference at once, so one error tells the operator all to set.
    let mut missing = Vec::new();
    for (key, value) in settings {
        let mut text = String::with_capacity(value.len());
        for piece in pieces(value).map_err(|Invalid(e)| Invalid(format!("setting {key}: {e}")))? {
            match piece {
                Piece::Text("${") => text.push_str("$${"),
                Piece::Text(t) => text.push_str(t),
                Piece::Ref(Reference {
                    kind: VariableKind::Var,
                    name,
                }) => match variables.get(&name) {
                    // A variable's value is literal text: escape what would read as a
                    // reference.
                    Some(value) => text.push_str(&value.replace("${", "$${")),
                    None => missing.push(format!(
                        "setting {key} references the variable `{name}`, which the environment does not have (stella env var set)"
                    )),
                },
                Piece::Ref(Reference {
                    kind: VariableKind::Secret,
                    name,
                }) => {
                    if !secrets.contains(&name) {
                        missing.push(format!(
                            "setting {key} references the secret `{name}`, which the environment does not have (stella env secret set)"
                        ));
                    }
                    text.push_str("${secret.");
                    text.push_str(&name);
                    text.push('}');
                    used_secrets.insert(name);
                }
            }
        }
        out.insert(key.clone(), text);
    }
    if !missing.is_empty() {
        return Err(Invalid(missing.join("; ")));
    }
    Ok((out, used_secrets))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn variables_are_substituted_and_secrets_kept_as_references() {
        let settings = map(&[
            ("env.DB_URL", "${var.db_url}/app"),
            ("env.DB_PASSWORD", "${secret.db_password}"),
            ("env.LITERAL", "cost: $${HOME}"),
            ("ports", "8080:80"),
        ]);
        let variables = map(&[("db_url", "postgres://db")]);
        let secrets = BTreeSet::from(["db_password".to_owned()]);
        let (out, used) = substitute_variables(&settings, &variables, &secrets).expect("valid");
        assert_eq!(out["env.DB_URL"], "postgres://db/app");
        assert_eq!(out["env.DB_PASSWORD"], "${secret.db_password}");
        assert_eq!(out["env.LITERAL"], "cost: $${HOME}");
        assert_eq!(out["ports"], "8080:80");
        assert_eq!(used, BTreeSet::from(["db_password".to_owned()]));
    }

    #[test]
    fn a_variable_value_is_literal_text() {
        let settings = map(&[("env.X", "${var.x}")]);
        let variables = map(&[("x", "${secret.stolen}")]);
        let (out, used) =
            substitute_variables(&settings, &variables, &BTreeSet::new()).expect("valid");
        assert_eq!(out["env.X"], "$${secret.stolen}");
        assert!(used.is_empty());
    }

    #[test]
    fn unknown_and_malformed_references_are_refused_with_the_setting_named() {
        let none = BTreeMap::new();
        let error =
            substitute_variables(&map(&[("env.A", "${var.nope}")]), &none, &BTreeSet::new())
                .expect_err("unknown variable");
        assert!(
            error.0.contains("env.A") && error.0.contains("nope"),
            "{error}"
        );
        let error = substitute_variables(
            &map(&[("env.A", "${secret.nope}")]),
            &none,
            &BTreeSet::new(),
        )
        .expect_err("unknown secret");
        assert!(error.0.contains("secret `nope`"), "{error}");
        for bad in ["${HOME}", "${var.}", "${env.X}", "${var.x", "${var.a-b}"] {
            assert!(references(bad).is_err(), "{bad} should be refused");
        }
        assert_eq!(references("plain $HOME text").expect("valid"), vec![]);
    }

    #[test]
    fn variable_names_are_identifiers() {
        for good in ["db_url", "_x", "A1"] {
            assert!(validate_variable_name(good).is_ok(), "{good}");
        }
        for bad in ["", "1a", "a-b", "a.b", &"x".repeat(65)] {
            assert!(validate_variable_name(bad).is_err(), "{bad}");
        }
    }
}

//! `stella router …`: routers (RFC 0005) and the routes applied through them.

use std::collections::BTreeMap;

use clap::Subcommand;
use serde_json::{json, Value};

use super::{parse_pair, path, print, rows, Context};
use crate::output;

/// `stella router …`
#[derive(Debug, Subcommand)]
pub enum RouterCommand {
    /// Create a router, driven by an agent that advertises `router:KIND`.
    #[command(after_help = kinds_help())]
    Create {
        /// Name, unique in the tenant.
        name: String,
        /// What it is; see the kinds and their settings below.
        #[arg(long, value_parser = super::kind_parser(KINDS))]
        kind: String,
        /// The agent that drives it (name or id).
        #[arg(long)]
        agent: String,
        /// A setting, `KEY=VALUE`, repeatable; the keys of each kind are listed below,
        /// others are refused.
        #[arg(long = "set", value_parser = parse_pair, value_name = "KEY=VALUE")]
        settings: Vec<(String, String)>,
    },
    /// List routers.
    List,
    /// Show one router.
    Show {
        /// Name.
        name: String,
    },
    /// Delete a router: its routes stay on the router itself; Stella stops driving it.
    #[command(visible_alias = "rm")]
    Delete {
        /// Name.
        name: String,
    },
    /// Apply a route's backends (with `--backend`), or show the route as the router has
    /// it now (without).
    Route {
        /// Router name.
        name: String,
        /// Route name: lowercase letters and digits joined by single hyphens.
        route: String,
        /// A backend, `ADDRESS=WEIGHT[@SLOT]` (e.g. `127.0.0.1:8081=90@stable`),
        /// repeatable; weights 0–256. All of the route's backends at once.
        #[arg(long = "backend", value_parser = parse_backend, value_name = "ADDR=WEIGHT[@SLOT]")]
        backends: Vec<Value>,
    },
}

/// `stella router …`.
pub async fn router(context: &Context, command: RouterCommand) -> anyhow::Result<()> {
    let (client, format) = (&context.client, context.format);
    let value = match command {
        RouterCommand::Create {
            name,
            kind,
            agent,
            settings,
        } => {
            let settings: BTreeMap<String, String> = settings.into_iter().collect();
            client
                .post(
                    "/routers",
                    json!({"name": name, "kind": kind, "agent": agent, "settings": settings}),
                )
                .await?
        }
        RouterCommand::List => {
            let list = client.get("/routers").await?;
            print(format, &list, |v| {
                rows(
                    v,
                    &["name", "kind", "agent", "settings"],
                    &["/name", "/kind", "/agent", "/settings"],
                );
            });
            return Ok(());
        }
        RouterCommand::Show { name } => client.get(&format!("/routers/{}", path(&name))).await?,
        RouterCommand::Delete { name } => {
            client.delete(&format!("/routers/{}", path(&name))).await?;
            context.deleted("router", &name);
            return Ok(());
        }
        RouterCommand::Route {
            name,
            route,
            backends,
        } => {
            let url = format!("/routers/{}/routes/{}", path(&name), path(&route));
            let route = if backends.is_empty() {
                client.get(&url).await?
            } else {
                client.put(&url, json!({ "backends": backends })).await?
            };
            print(format, &route, print_route);
            return Ok(());
        }
    };
    print(format, &value, |v| {
        output::details(
            v,
            &[
                ("name", "/name"),
                ("kind", "/kind"),
                ("agent", "/agent"),
                ("agent id", "/agent_id"),
                ("settings", "/settings"),
                ("created", "/created_at"),
                ("updated", "/updated_at"),
            ],
        );
    });
    Ok(())
}

/// A route as a table of its backends, with how an apply reached the router.
fn print_route(route: &Value) {
    if let Some(method) = route["method"].as_str() {
        println!(
            "applied to route {} of router {} ({method}, {} ms)",
            output::cell(route, "/route"),
            output::cell(route, "/router"),
            output::cell(route, "/duration_ms")
        );
    }
    let backends = route["backends"].as_array().cloned().unwrap_or_default();
    if backends.is_empty() {
        println!(
            "route {} has no backends on this router",
            output::cell(route, "/route")
        );
        return;
    }
    output::table(
        &["address", "weight", "slot", "match"],
        backends
            .iter()
            .map(|b| {
                ["/address", "/weight", "/slot", "/match"]
                    .iter()
                    .map(|p| output::cell(b, p))
                    .collect()
            })
            .collect(),
    );
}

/// `ADDRESS=WEIGHT[@SLOT]` as a backend of the API's body.
fn parse_backend(s: &str) -> Result<Value, String> {
    let (address, rest) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("`{s}` is not ADDRESS=WEIGHT[@SLOT]"))?;
    let (weight, slot) = match rest.split_once('@') {
        Some((weight, slot)) if !slot.is_empty() => (weight, Some(slot)),
        Some(_) => return Err(format!("`{s}`: name the slot after @")),
        None => (rest, None),
    };
    if address.is_empty() {
        return Err(format!("`{s}`: the address is missing"));
    }
    let weight: u16 = weight
        .parse()
        .map_err(|_| format!("`{s}`: the weight `{weight}` is not a number 0–256"))?;
    let mut backend = json!({"address": address, "weight": weight});
    if let Some(slot) = slot {
        backend["slot"] = json!(slot);
    }
    Ok(backend)
}

/// The kinds the control plane knows. Agents drive nginx and HAProxy where installed;
/// Traefik and ALB routers can be created only on an agent that advertises them.
const KINDS: &[super::Kind] = &[
    super::Kind {
        name: "nginx",
        about: "one route file per route, checked with nginx -t, reloaded gracefully",
        settings: &[
            (
                "routes_dir",
                "absolute path of the directory of route files that nginx.conf includes (required)",
            ),
            ("nginx_bin", "the nginx binary [default: /usr/sbin/nginx]"),
            (
                "conf_path",
                "the main configuration (nginx -c) [default: /etc/nginx/nginx.conf]",
            ),
            (
                "prefix",
                "nginx -p, for an instance with a directory of its own",
            ),
            (
                "error_log",
                "nginx -e, for an instance that cannot write /var/log/nginx",
            ),
            (
                "pid_file",
                "the pid file the configuration names [default: /run/nginx.pid]",
            ),
            (
                "timeout_seconds",
                "how long nginx -t and the reload may take [default: 30]",
            ),
        ],
    },
    super::Kind {
        name: "haproxy",
        about: "server-template slots set through the Runtime API, no reload",
        settings: &[
            (
                "admin_socket",
                "absolute path of the admin socket (stats socket … level admin) (required)",
            ),
            (
                "command_timeout_ms",
                "how long one runtime command may take [default: 5000]",
            ),
        ],
    },
    super::Kind {
        name: "traefik",
        about: "the file provider's dynamic configuration (generator; no agent drives it yet)",
        settings: &[
            (
                "dynamic_file",
                "absolute path of the dynamic configuration file (required)",
            ),
            (
                "rule",
                "the route's router rule, e.g. Host(`shop.example.com`) (required)",
            ),
            ("entry_points", "entry points, comma-separated (required)"),
            ("version", "v2 or v3 (required)"),
            ("scheme", "http or https [default: http]"),
        ],
    },
    super::Kind {
        name: "alb",
        about: "AWS ALB weighted forward actions (generator; no agent drives it yet)",
        settings: &[
            (
                "listener_arn",
                "the listener whose default action forwards (required)",
            ),
            ("region", "the AWS region (required)"),
            (
                "target_group.SLOT",
                "the target group ARN of slot SLOT (at least one)",
            ),
            ("stickiness_seconds", "target group stickiness, 1–604800"),
            (
                "ab_header_rule_arn",
                "the rule carrying the A/B header test",
            ),
            (
                "ab_cookie_rule_arn",
                "the rule carrying the A/B cookie test",
            ),
        ],
    },
];

/// The `--help` text listing each kind's settings.
fn kinds_help() -> String {
    super::kinds_help(
        &String::from("Router kinds and their settings (--set KEY=VALUE):"),
        KINDS,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_read_as_address_weight_and_slot() {
        assert_eq!(
            parse_backend("127.0.0.1:8081=90@stable"),
            Ok(json!({"address": "127.0.0.1:8081", "weight": 90, "slot": "stable"}))
        );
        assert_eq!(
            parse_backend("[::1]:80=10"),
            Ok(json!({"address": "[::1]:80", "weight": 10}))
        );
        assert!(parse_backend("127.0.0.1:8081").is_err());
        assert!(parse_backend("127.0.0.1:8081=x").is_err());
        assert!(parse_backend("127.0.0.1:8081=5@").is_err());
        assert!(parse_backend("=5").is_err());
    }
}

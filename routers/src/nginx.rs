//! The `nginx` router: one file per route in a directory the main configuration
//! includes inside its `http` block (`include /etc/nginx/stella/*.conf;`).
//!
//! A route `web` is written to `web.conf` as:
//!
//! ```text
//! # stella-routers route web: written by the router, replaced whole at each change
//! # stella-routers-spec: [{"address":"10.0.0.5:8080","weight":90}, …]
//! upstream stella_web {
//!     server 10.0.0.5:8080 weight=90;
//!     server 10.0.0.6:8080 down;
//! }
//! map $host $stella_route_web {
//!     default stella_web;
//! }
//! ```
//!
//! and the operator's `server` block proxies to the variable, whatever the route's A/B
//! rule: `proxy_pass http://$stella_route_web;` (nginx matches the variable's value
//! against the `upstream` names before any DNS lookup). With an A/B rule the map looks
//! at the header (`$http_x_canary`) or the cookie (`$cookie_canary`), or both chained,
//! and names `stella_web__ab`, the upstream of the A/B set, for exact matches.
//!
//! Weight 0 is written `down`: nginx has no `weight=0`, and a server marked `down` stays
//! in the group, so moving its weight back up later changes one word.
//!
//! Applying: the new file is renamed over the old one, `nginx -t` checks the whole
//! configuration, a refusal puts the old file back (nginx never reads the directory
//! between the two, since only a reload does), and success sends `nginx -s reload`
//! (SIGHUP to the master: old workers finish their requests, new ones take new
//! connections, the listening sockets stay open). The reload counts as done when the
//! master has a worker it did not have before the signal (nginx starts new workers only
//! once it has read the new configuration) and every old worker has exited or calls
//! itself `worker process is shutting down` (it no longer takes connections).
//!
//! `current` reads the route file: open-source nginx has no API that lists an upstream's
//! servers, and after a confirmed reload the file is what the workers run. The spec line
//! makes reading exact: a file whose body is not what its spec line renders to was edited
//! by hand, and `current` says so (`apply` replaces it: the router owns the file).
//!
//! `remove` deletes the file the same way (checked, restored on a refusal): while a
//! `server` block still proxies to `$stella_route_NAME`, `nginx -t` refuses, and the route
//! stays.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::process::Command;

use crate::error::RouterError;
use crate::model::{AbMatch, Backend, RouteName, Split};
use crate::{describe, files, Applied, ApplyMethod, RouteSpec, Router};

/// The kind name.
pub const KIND: &str = "nginx";

const SPEC_PREFIX: &str = "# stella-routers-spec: ";

/// Where nginx and the route files are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NginxSettings {
    /// The nginx binary.
    #[serde(default = "default_nginx_bin")]
    pub nginx_bin: PathBuf,
    /// The main configuration file (`nginx -c`).
    #[serde(default = "default_conf_path")]
    pub conf_path: PathBuf,
    /// The prefix (`nginx -p`), for an instance with a directory of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<PathBuf>,
    /// The error log nginx opens before reading its configuration (`nginx -e`, nginx ≥
    /// 1.19.5): set it for an instance that cannot write the compiled-in
    /// `/var/log/nginx/error.log`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_log: Option<PathBuf>,
    /// The pid file the configuration's `pid` directive names: the master whose workers
    /// confirm a reload.
    #[serde(default = "default_pid_file")]
    pub pid_file: PathBuf,
    /// The directory of route files, included by the main configuration.
    pub routes_dir: PathBuf,
    /// How long `nginx -t` and `nginx -s reload` may take, and how long to wait for the
    /// new workers.
    #[serde(default = "default_timeout_seconds")]
    pub timeout_seconds: u64,
}

fn default_nginx_bin() -> PathBuf {
    PathBuf::from("/usr/sbin/nginx")
}
fn default_conf_path() -> PathBuf {
    PathBuf::from("/etc/nginx/nginx.conf")
}
fn default_pid_file() -> PathBuf {
    PathBuf::from("/run/nginx.pid")
}
fn default_timeout_seconds() -> u64 {
    30
}

impl NginxSettings {
    /// Settings for Debian's nginx with route files in `routes_dir`.
    pub fn new(routes_dir: impl Into<PathBuf>) -> Self {
        Self {
            nginx_bin: default_nginx_bin(),
            conf_path: default_conf_path(),
            prefix: None,
            error_log: None,
            pid_file: default_pid_file(),
            routes_dir: routes_dir.into(),
            timeout_seconds: default_timeout_seconds(),
        }
    }
}

/// Routes as nginx route files (see the module documentation).
#[derive(Debug)]
pub struct NginxRouter {
    settings: NginxSettings,
    /// One change at a time: `nginx -t` checks every route file, so two applies must not
    /// interleave their swap, test and restore.
    changing: tokio::sync::Mutex<()>,
}

impl NginxRouter {
    /// A router over `settings`.
    pub fn new(settings: NginxSettings) -> Self {
        Self {
            settings,
            changing: tokio::sync::Mutex::new(()),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &NginxSettings {
        &self.settings
    }

    /// The file of `route`.
    pub fn route_file(&self, route: &RouteName) -> PathBuf {
        self.settings.routes_dir.join(format!("{route}.conf"))
    }

    /// Swaps `contents` (or no file) in for `route`, checks, restores on a refusal, and
    /// reloads.
    async fn swap_check_reload(
        &self,
        path: &Path,
        contents: Option<&str>,
    ) -> Result<ApplyMethod, RouterError> {
        let _changing = self.changing.lock().await;
        let previous = files::read_if_exists(path).await?;
        match contents {
            Some(text) => files::replace(path, text.as_bytes()).await?,
            None => files::remove_if_exists(path).await?,
        }
        if let Err(check) = self.run(&["-t", "-q"]).await {
            let restored = match &previous {
                Some(text) => files::replace(path, text.as_bytes()).await,
                None => files::remove_if_exists(path).await,
            };
            if let Err(restore) = restored {
                tracing::error!(path = %path.display(), error = %crate::error::error_chain(&restore), "could not put the previous route file back after nginx -t refused the new one");
                return Err(restore);
            }
            let error = match check {
                RouterError::Command { output, .. } => RouterError::NginxRejected {
                    path: path.to_owned(),
                    message: nginx_message(&output),
                },
                other => other,
            };
            tracing::warn!(path = %path.display(), error = %crate::error::error_chain(&error), "route file refused; the previous one is back");
            return Err(error);
        }
        self.reload().await
    }

    /// `nginx -s reload`, confirmed by a new worker; [`ApplyMethod::NotRunning`] when the
    /// pid file names no live master.
    async fn reload(&self) -> Result<ApplyMethod, RouterError> {
        let Some(master) = self.master_pid().await? else {
            tracing::warn!(pid_file = %self.settings.pid_file.display(), "nginx is not running: the route file is in place and is read when it starts");
            return Ok(ApplyMethod::NotRunning);
        };
        let before = children_of(master).await;
        let started = Instant::now();
        self.run(&["-s", "reload"]).await?;
        let deadline = Duration::from_secs(self.settings.timeout_seconds);
        loop {
            let now = children_of(master).await;
            if now.iter().any(|pid| !before.contains(pid)) && old_workers_left(&before).await {
                tracing::info!(
                    master,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "nginx reloaded"
                );
                return Ok(ApplyMethod::Reload);
            }
            if started.elapsed() > deadline {
                return Err(RouterError::ReloadUnconfirmed {
                    pid: master,
                    seconds: self.settings.timeout_seconds,
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The master's pid, when the pid file names a live process.
    async fn master_pid(&self) -> Result<Option<u32>, RouterError> {
        let path = &self.settings.pid_file;
        let Some(text) = files::read_if_exists(path).await? else {
            return Ok(None);
        };
        // `nginx -t` leaves an empty pid file behind when no master runs.
        if text.trim().is_empty() {
            return Ok(None);
        }
        let pid: u32 = text.trim().parse().map_err(|_| RouterError::Foreign {
            path: path.clone(),
            reason: format!("not a pid: {:?}", text.trim()),
        })?;
        let alive = tokio::fs::metadata(format!("/proc/{pid}")).await.is_ok();
        Ok(alive.then_some(pid))
    }

    /// Runs nginx with the instance's `-p`, `-e` and `-c` and `args`.
    async fn run(&self, args: &[&str]) -> Result<(), RouterError> {
        let settings = &self.settings;
        let mut command = Command::new(&settings.nginx_bin);
        if let Some(prefix) = &settings.prefix {
            command.arg("-p").arg(prefix);
        }
        if let Some(error_log) = &settings.error_log {
            command.arg("-e").arg(error_log);
        }
        command.arg("-c").arg(&settings.conf_path).args(args);
        command
            .kill_on_drop(true)
            .stdin(std::process::Stdio::null());
        let line = format!("{} {}", settings.nginx_bin.display(), args.join(" "));
        let output = tokio::time::timeout(
            Duration::from_secs(settings.timeout_seconds),
            command.output(),
        )
        .await
        .map_err(|_| RouterError::CommandTimeout {
            command: line.clone(),
            seconds: settings.timeout_seconds,
        })?
        .map_err(|source| RouterError::Spawn {
            command: line.clone(),
            source,
        })?;
        if output.status.success() {
            return Ok(());
        }
        let mut text = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !stdout.trim().is_empty() {
            text.push('\n');
            text.push_str(stdout.trim());
        }
        Err(RouterError::Command {
            command: line,
            status: output.status.to_string(),
            output: text,
        })
    }
}

#[async_trait::async_trait]
impl Router for NginxRouter {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn apply(&self, route: &RouteSpec, backends: &[Backend]) -> Result<Applied, RouterError> {
        let text = render(&route.name, backends)?;
        let path = self.route_file(&route.name);
        let method = self.swap_check_reload(&path, Some(&text)).await?;
        let live = self.current(route).await?;
        if live != backends {
            return Err(RouterError::Mismatch {
                route: route.name.to_string(),
                wanted: describe(backends),
                live: describe(&live),
            });
        }
        tracing::info!(kind = KIND, route = %route.name, backends = %describe(&live), method = ?method, "route applied");
        Ok(Applied { live, method })
    }

    async fn current(&self, route: &RouteSpec) -> Result<Vec<Backend>, RouterError> {
        let path = self.route_file(&route.name);
        match files::read_if_exists(&path).await? {
            None => Ok(Vec::new()),
            Some(text) => parse(&route.name, &path, &text),
        }
    }

    async fn remove(&self, route: &RouteSpec) -> Result<(), RouterError> {
        let path = self.route_file(&route.name);
        if files::read_if_exists(&path).await?.is_none() {
            return Ok(());
        }
        self.swap_check_reload(&path, None).await.map(|_| ())
    }
}

/// The route file of `route` with `backends` (see the module documentation).
pub fn render(route: &RouteName, backends: &[Backend]) -> Result<String, RouterError> {
    let split = Split::new(backends)?;
    let spec = serde_json::to_string(backends).map_err(|e| {
        RouterError::Invalid(format!("route {route}: backends do not serialize: {e}"))
    })?;
    let id = route.identifier();
    let default_upstream = format!("stella_{route}");
    let ab_upstream = format!("stella_{route}__ab");
    let variable = format!("$stella_route_{id}");

    let mut out = String::new();
    let _ = writeln!(
        out,
        "# stella-routers route {route}: written by the router, replaced whole at each change"
    );
    let _ = writeln!(out, "{SPEC_PREFIX}{spec}");
    upstream(&mut out, &default_upstream, &split.default);
    match &split.ab {
        None => {
            let _ = writeln!(out, "map $host {variable} {{");
            let _ = writeln!(out, "    default {default_upstream};");
            let _ = writeln!(out, "}}");
        }
        Some((rule, set)) => {
            upstream(&mut out, &ab_upstream, set);
            ab_maps(
                &mut out,
                rule,
                &variable,
                &id,
                &default_upstream,
                &ab_upstream,
            );
        }
    }
    Ok(out)
}

fn upstream(out: &mut String, name: &str, set: &[&Backend]) {
    let _ = writeln!(out, "upstream {name} {{");
    for backend in set {
        match backend.weight.get() {
            0 => {
                let _ = writeln!(out, "    server {} down;", backend.address);
            }
            weight => {
                let _ = writeln!(out, "    server {} weight={weight};", backend.address);
            }
        }
    }
    let _ = writeln!(out, "}}");
}

/// The A/B choice: a map on the header, else on the cookie; with both, the header's map
/// falls through to the cookie's. Values are matched by an anchored, case-sensitive
/// regular expression: nginx compares a map's plain strings case-insensitively.
fn ab_maps(
    out: &mut String,
    rule: &AbMatch,
    variable: &str,
    id: &str,
    default_upstream: &str,
    ab_upstream: &str,
) {
    let cookie_variable = format!("$stella_route_{id}__cookie");
    if let Some(header) = &rule.header {
        let source = format!(
            "$http_{}",
            header.name.to_ascii_lowercase().replace('-', "_")
        );
        let fallback = if rule.cookie.is_some() {
            cookie_variable.as_str()
        } else {
            default_upstream
        };
        let _ = writeln!(out, "map {source} {variable} {{");
        let _ = writeln!(out, "    default {fallback};");
        let _ = writeln!(
            out,
            "    \"~^{}$\" {ab_upstream};",
            regex_escape(&header.value)
        );
        let _ = writeln!(out, "}}");
    }
    if let Some(cookie) = &rule.cookie {
        let target = if rule.header.is_some() {
            cookie_variable.as_str()
        } else {
            variable
        };
        let _ = writeln!(out, "map $cookie_{} {target} {{", cookie.name);
        let _ = writeln!(out, "    default {default_upstream};");
        let _ = writeln!(
            out,
            "    \"~^{}$\" {ab_upstream};",
            regex_escape(&cookie.value)
        );
        let _ = writeln!(out, "}}");
    }
}

/// Values are `[A-Za-z0-9._~-]` (checked by the model); of those only `.` means
/// something in a PCRE outside a class.
fn regex_escape(value: &str) -> String {
    value.replace('.', "\\.")
}

/// The backends of a route file, which must be exactly what [`render`] writes for them.
pub fn parse(route: &RouteName, path: &Path, text: &str) -> Result<Vec<Backend>, RouterError> {
    let foreign = |reason: String| RouterError::Foreign {
        path: path.to_owned(),
        reason,
    };
    let spec = text
        .lines()
        .find_map(|line| line.strip_prefix(SPEC_PREFIX))
        .ok_or_else(|| foreign(format!("no `{}` line", SPEC_PREFIX.trim())))?;
    let backends: Vec<Backend> = serde_json::from_str(spec)
        .map_err(|e| foreign(format!("the spec line does not parse: {e}")))?;
    let expected = render(route, &backends)
        .map_err(|e| foreign(format!("the spec line is not a valid route: {e}")))?;
    if expected != text {
        return Err(foreign(
            "the file's body is not what its spec line renders to".to_owned(),
        ));
    }
    Ok(backends)
}

/// nginx's own lines from `nginx -t`'s output: the `[emerg]` (and other level) lines,
/// without the `nginx: ` prefix, or the whole output when there are none.
fn nginx_message(output: &str) -> String {
    let lines: Vec<&str> = output
        .lines()
        .filter(|line| {
            line.contains("[emerg]") || line.contains("[alert]") || line.contains("[crit]")
        })
        .map(|line| line.trim_start_matches("nginx: ").trim())
        .collect();
    if lines.is_empty() {
        output.trim().to_owned()
    } else {
        lines.join("; ")
    }
}

/// Whether every worker in `old` has exited or stopped taking connections: nginx
/// starts the new workers first and tells the old ones to finish about 100 ms later;
/// until then they still accept on the shared sockets with the old configuration. A
/// worker told to finish renames itself `nginx: worker process is shutting down`.
async fn old_workers_left(old: &BTreeSet<u32>) -> bool {
    for pid in old {
        match tokio::fs::read(format!("/proc/{pid}/cmdline")).await {
            Ok(cmdline) => {
                if !String::from_utf8_lossy(&cmdline).contains("shutting down") {
                    return false;
                }
            }
            Err(_) => continue,
        }
    }
    true
}

/// The pids whose parent is `parent`, from `/proc/*/stat` (an empty set when `/proc`
/// cannot be read: the reload then waits for its deadline and says so).
async fn children_of(parent: u32) -> BTreeSet<u32> {
    let mut children = BTreeSet::new();
    let Ok(mut entries) = tokio::fs::read_dir("/proc").await else {
        return children;
    };
    while let Ok(Some(entry)) = entries.next_entry().await {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = tokio::fs::read_to_string(entry.path().join("stat")).await else {
            continue;
        };
        // `pid (comm) state ppid …`: comm may hold spaces and parentheses, so read after
        // the last `)`.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|field| field.parse::<u32>().ok());
        if ppid == Some(parent) {
            children.insert(pid);
        }
    }
    children
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str) -> RouteName {
        RouteName::new(name).expect("valid route name")
    }

    #[test]
    fn weights_render_as_servers_and_zero_as_down() {
        let backends = vec![
            Backend::new("127.0.0.1:8081", 90)
                .expect("backend")
                .in_slot("stable"),
            Backend::new("127.0.0.1:8082", 10)
                .expect("backend")
                .in_slot("canary"),
            Backend::new("[::1]:8083", 0).expect("backend"),
        ];
        let text = render(&route("web-app"), &backends).expect("render");
        let body: Vec<&str> = text.lines().skip(2).collect();
        assert_eq!(
            body,
            [
                "upstream stella_web-app {",
                "    server 127.0.0.1:8081 weight=90;",
                "    server 127.0.0.1:8082 weight=10;",
                "    server [::1]:8083 down;",
                "}",
                "map $host $stella_route_web_app {",
                "    default stella_web-app;",
                "}",
            ]
        );
        let parsed = parse(&route("web-app"), Path::new("web-app.conf"), &text).expect("parse");
        assert_eq!(parsed, backends);
    }

    #[test]
    fn a_header_and_cookie_rule_chains_two_maps() {
        let rule = AbMatch::header("X-Canary", "v2.1").or_cookie("canary", "yes");
        let backends = vec![
            Backend::new("127.0.0.1:8081", 1).expect("backend"),
            Backend::new("127.0.0.1:8082", 1)
                .expect("backend")
                .matching(rule),
        ];
        let text = render(&route("web"), &backends).expect("render");
        let body: Vec<&str> = text.lines().skip(2).collect();
        assert_eq!(
            body,
            [
                "upstream stella_web {",
                "    server 127.0.0.1:8081 weight=1;",
                "}",
                "upstream stella_web__ab {",
                "    server 127.0.0.1:8082 weight=1;",
                "}",
                "map $http_x_canary $stella_route_web {",
                "    default $stella_route_web__cookie;",
                "    \"~^v2\\.1$\" stella_web__ab;",
                "}",
                "map $cookie_canary $stella_route_web__cookie {",
                "    default stella_web;",
                "    \"~^yes$\" stella_web__ab;",
                "}",
            ]
        );
    }

    #[test]
    fn a_hand_edited_file_is_reported() {
        let backends = vec![Backend::new("127.0.0.1:8081", 5).expect("backend")];
        let text = render(&route("web"), &backends).expect("render");
        let edited = text.replace("weight=5", "weight=6");
        let error = parse(&route("web"), Path::new("web.conf"), &edited).expect_err("edited");
        assert!(error.to_string().contains("edited by hand"), "{error}");
        let error =
            parse(&route("web"), Path::new("web.conf"), "upstream x {}\n").expect_err("foreign");
        assert!(
            error
                .to_string()
                .contains("no `# stella-routers-spec:` line"),
            "{error}"
        );
    }

    #[test]
    fn nginx_messages_keep_the_emerg_lines() {
        let output = "nginx: [emerg] host not found in upstream \"nope.invalid:80\" in /x/web.conf:4\nnginx: configuration file /x/nginx.conf test failed";
        assert_eq!(
            nginx_message(output),
            "[emerg] host not found in upstream \"nope.invalid:80\" in /x/web.conf:4"
        );
    }
}

//! The `haproxy` router: server slots declared once in HAProxy's configuration, filled,
//! weighted and emptied at run time through the Runtime API on the admin socket. No
//! change reloads HAProxy.
//!
//! # What the configuration declares
//!
//! For a route `web`:
//!
//! ```text
//! global
//!     stats socket /run/haproxy/admin.sock mode 600 level admin
//! backend web
//!     balance roundrobin
//!     server-template s 1-8 127.0.0.1:9 disabled
//! # only for A/B:
//! backend web__ab
//!     balance roundrobin
//!     server-template s 1-4 127.0.0.1:9 disabled
//! frontend www
//!     bind :80
//!     acl stella_web_ab req.hdr(X-Canary),map_str(/etc/haproxy/stella/web__ab.header.X-Canary.map) -m found
//!     acl stella_web_ab req.cook(canary),map_str(/etc/haproxy/stella/web__ab.cookie.canary.map) -m found
//!     use_backend web__ab if stella_web_ab
//!     default_backend web
//! ```
//!
//! - Backend `ROUTE` holds the default set, backend `ROUTE__ab` the A/B set; each server
//!   of either is a slot (`server-template` or plain `server` lines; `disabled` so that
//!   a slot starts in maintenance). `balance roundrobin` (or `leastconn`) is what lets
//!   weights change at run time.
//! - The A/B rule's header or cookie **name** is fixed by the configuration and read
//!   from the map file's name, `ROUTE__ab.header.NAME.map` or `ROUTE__ab.cookie.NAME.map`
//!   (found with `show map`); the **value** is the map's one key, replaced atomically
//!   (`prepare map`, `add map @VER`, `commit map @VER`). A route whose rule names a header
//!   or cookie that has no such map is refused before anything changes.
//!
//! # Applying
//!
//! Slots are planned first (a backend already in a slot keeps it; new ones take slots in
//! maintenance), and a route that needs more slots than there are is refused before any
//! command. Then, per set: new slots get `set server B/S addr A port P`, `set server B/S
//! weight W` and `set server B/S state ready`; kept slots get their new weight (servers
//! that gain traffic first, those that lose some after, so that a switch never leaves
//! the backend without a server); slots no longer wanted go to `set server B/S state
//! maint` (their requests in flight finish).
//! An A/B set is filled before its map points at it, and its map is emptied before it is
//! drained. Finally `show servers state` is read back and compared.
//!
//! Weight 0 is a ready server with weight 0: it takes no new requests and stays in the
//! backend. HAProxy's `set server … addr` takes IP addresses only, so backends must be
//! IPv4 or IPv6 addresses here.

mod runtime;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use self::runtime::RuntimeApi;
use crate::error::RouterError;
use crate::model::{AbMatch, Address, Backend, MatchValue, RouteName, Split, Weight};
use crate::{describe, Applied, ApplyMethod, RouteSpec, Router};

/// The kind name.
pub const KIND: &str = "haproxy";

/// The suffix of the A/B set's backend.
pub const AB_SUFFIX: &str = "__ab";

/// `srv_admin_state` flags that mean maintenance: forced (`FMAINT`), inherited
/// (`IMAINT`) and resolution (`RMAINT`). `CMAINT` (0x04) only records that the
/// configuration said `disabled`: a slot made ready keeps it and serves.
const ADMIN_MAINT_FLAGS: u32 = 0x01 | 0x02 | 0x20;

/// Where HAProxy's admin socket is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaproxySettings {
    /// The admin socket (`stats socket … level admin`).
    pub admin_socket: PathBuf,
    /// How long one runtime command may take.
    #[serde(default = "default_timeout_ms")]
    pub command_timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    5_000
}

impl HaproxySettings {
    /// Settings for the admin socket at `admin_socket`.
    pub fn new(admin_socket: impl Into<PathBuf>) -> Self {
        Self {
            admin_socket: admin_socket.into(),
            command_timeout_ms: default_timeout_ms(),
        }
    }
}

/// Routes as HAProxy backends driven through the Runtime API (see the module
/// documentation).
#[derive(Debug)]
pub struct HaproxyRouter {
    api: RuntimeApi,
    /// One change at a time: a plan is made from a read of the slots.
    changing: tokio::sync::Mutex<()>,
}

impl HaproxyRouter {
    /// A router over `settings`.
    pub fn new(settings: &HaproxySettings) -> Self {
        Self {
            api: RuntimeApi::new(
                &settings.admin_socket,
                Duration::from_millis(settings.command_timeout_ms),
            ),
            changing: tokio::sync::Mutex::new(()),
        }
    }

    /// The Runtime API client.
    pub fn api(&self) -> &RuntimeApi {
        &self.api
    }

    /// The slots of `backend`, or `None` when HAProxy has no such backend.
    pub async fn slots(&self, backend: &str) -> Result<Option<Vec<Slot>>, RouterError> {
        let command = format!("show servers state {backend}");
        let reply = self.api.command(&command).await?;
        if reply.starts_with("Can't find backend") {
            return Ok(None);
        }
        parse_servers_state(&command, &reply).map(Some)
    }

    /// The A/B maps HAProxy has loaded for `route`.
    async fn ab_maps(&self, route: &RouteName) -> Result<AbMaps, RouterError> {
        let reply = self.api.command("show map").await?;
        Ok(AbMaps::find(route, &reply))
    }

    /// The one key of map `path`, if it has one.
    async fn map_key(&self, path: &Path) -> Result<Option<String>, RouterError> {
        let command = format!("show map {}", path.display());
        let reply = self.api.command(&command).await?;
        let keys: Vec<&str> = reply
            .lines()
            .filter_map(|line| line.split_whitespace().nth(1))
            .collect();
        match keys.as_slice() {
            [] => Ok(None),
            [key] => Ok(Some((*key).to_owned())),
            _ => Err(RouterError::HaproxyReply {
                command,
                detail: format!("{} keys; the router writes one", keys.len()),
            }),
        }
    }

    /// Replaces map `path`'s contents with `key` (or nothing) in one commit.
    async fn set_map(&self, path: &Path, key: Option<&str>) -> Result<(), RouterError> {
        let path = path.display();
        let command = format!("prepare map {path}");
        let reply = self.api.command(&command).await?;
        let version = reply
            .trim()
            .strip_prefix("New version created: ")
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| RouterError::HaproxyRefused {
                command: command.clone(),
                reply: reply.trim().to_owned(),
            })?;
        if let Some(key) = key {
            self.api
                .command_quiet(&format!("add map @{version} {path} {key} 1"))
                .await?;
        }
        self.api
            .command_quiet(&format!("commit map @{version} {path}"))
            .await
    }

    /// Makes `set` the live servers of `backend` along `plan`.
    async fn fill(&self, backend: &str, plan: &SlotPlan) -> Result<(), RouterError> {
        for (slot, wanted) in &plan.assigned {
            let address = &wanted.address;
            if slot.address.as_ref() != Some(address) {
                let command = format!(
                    "set server {backend}/{} addr {} port {}",
                    slot.name,
                    address.host(),
                    address.port()
                );
                let reply = self.api.command(&command).await?;
                if !(reply.contains("changed from") || reply.contains("no need to change")) {
                    return Err(RouterError::HaproxyRefused {
                        command,
                        reply: reply.trim().to_owned(),
                    });
                }
            }
            if slot.weight != wanted.weight.get() || slot.maint {
                self.api
                    .command_quiet(&format!(
                        "set server {backend}/{} weight {}",
                        slot.name,
                        wanted.weight.get()
                    ))
                    .await?;
            }
            if slot.maint {
                self.api
                    .command_quiet(&format!("set server {backend}/{} state ready", slot.name))
                    .await?;
            }
        }
        self.drain(backend, &plan.released).await
    }

    /// Puts `slots` of `backend` in maintenance.
    async fn drain(&self, backend: &str, slots: &[Slot]) -> Result<(), RouterError> {
        for slot in slots.iter().filter(|s| !s.maint) {
            self.api
                .command_quiet(&format!("set server {backend}/{} state maint", slot.name))
                .await?;
        }
        Ok(())
    }

    async fn require_slots(&self, backend: &str) -> Result<Vec<Slot>, RouterError> {
        self.slots(backend).await?.ok_or_else(|| {
            RouterError::HaproxyConfig(format!(
                "no backend `{backend}`: declare it with server slots (see the router's documentation)"
            ))
        })
    }
}

#[async_trait::async_trait]
impl Router for HaproxyRouter {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn apply(&self, route: &RouteSpec, backends: &[Backend]) -> Result<Applied, RouterError> {
        let split = Split::new(backends)?;
        for backend in backends {
            if backend.address.host().parse::<IpAddr>().is_err() {
                return Err(RouterError::Invalid(format!(
                    "upstream {}: HAProxy's runtime API takes IP addresses; resolve the name first",
                    backend.address
                )));
            }
        }
        let name = &route.name;
        let ab_backend = format!("{name}{AB_SUFFIX}");
        let _changing = self.changing.lock().await;

        // Everything is read and planned before the first change.
        let default_slots = self.require_slots(name.as_str()).await?;
        let default_plan = SlotPlan::new(name.as_str(), &default_slots, &split.default)?;
        let maps = self.ab_maps(name).await?;
        let ab_plan = match &split.ab {
            None => None,
            Some((rule, set)) => {
                let keys = maps.keys_for(rule)?;
                let slots = self.require_slots(&ab_backend).await?;
                Some((keys, SlotPlan::new(&ab_backend, &slots, set)?))
            }
        };

        let changes = async {
            self.fill(name.as_str(), &default_plan).await?;
            match ab_plan {
                Some((keys, plan)) => {
                    self.fill(&ab_backend, &plan).await?;
                    for (path, key) in keys {
                        self.set_map(&path, key.as_deref()).await?;
                    }
                }
                None => {
                    for path in maps.all() {
                        self.set_map(path, None).await?;
                    }
                    if let Some(slots) = self.slots(&ab_backend).await? {
                        self.drain(&ab_backend, &slots).await?;
                    }
                }
            }
            Ok::<(), RouterError>(())
        };
        if let Err(error) = Box::pin(changes).await {
            tracing::warn!(kind = KIND, route = %name, error = %crate::error::error_chain(&error), "route partly changed");
            return Err(RouterError::PartlyApplied {
                route: name.to_string(),
                source: Box::new(error),
            });
        }

        let live = self.current(route).await?;
        let comparable = |list: &[Backend]| {
            let mut list: Vec<Backend> = list
                .iter()
                .cloned()
                .map(|mut b| {
                    // HAProxy keeps no slot names, and header names are
                    // case-insensitive (the map file's spelling is what is read back).
                    b.slot = None;
                    if let Some(header) = b.r#match.as_mut().and_then(|m| m.header.as_mut()) {
                        header.name.make_ascii_lowercase();
                    }
                    b
                })
                .collect();
            list.sort_by(|a, b| {
                (a.r#match.is_some(), &a.address).cmp(&(b.r#match.is_some(), &b.address))
            });
            list
        };
        if comparable(&live) != comparable(backends) {
            return Err(RouterError::Mismatch {
                route: name.to_string(),
                wanted: describe(backends),
                live: describe(&live),
            });
        }
        tracing::info!(kind = KIND, route = %name, backends = %describe(&live), "route applied");
        Ok(Applied {
            live,
            method: ApplyMethod::Runtime,
        })
    }

    async fn current(&self, route: &RouteSpec) -> Result<Vec<Backend>, RouterError> {
        let name = &route.name;
        let mut live: Vec<Backend> = self
            .require_slots(name.as_str())
            .await?
            .iter()
            .filter_map(Slot::live_backend)
            .collect();
        let maps = self.ab_maps(name).await?;
        let mut rule = AbMatch {
            header: None,
            cookie: None,
        };
        if let Some((header, path)) = &maps.header {
            if let Some(value) = self.map_key(path).await? {
                rule.header = Some(MatchValue {
                    name: header.clone(),
                    value,
                });
            }
        }
        if let Some((cookie, path)) = &maps.cookie {
            if let Some(value) = self.map_key(path).await? {
                rule.cookie = Some(MatchValue {
                    name: cookie.clone(),
                    value,
                });
            }
        }
        // Without a key in a map, the A/B backend gets no request: its servers are not
        // part of the route.
        if rule.header.is_some() || rule.cookie.is_some() {
            if let Some(slots) = self.slots(&format!("{name}{AB_SUFFIX}")).await? {
                live.extend(
                    slots
                        .iter()
                        .filter_map(Slot::live_backend)
                        .map(|b| b.matching(rule.clone())),
                );
            }
        }
        Ok(live)
    }

    async fn remove(&self, route: &RouteSpec) -> Result<(), RouterError> {
        let name = &route.name;
        let _changing = self.changing.lock().await;
        for path in self.ab_maps(name).await?.all() {
            self.set_map(path, None).await?;
        }
        for backend in [name.to_string(), format!("{name}{AB_SUFFIX}")] {
            if let Some(slots) = self.slots(&backend).await? {
                self.drain(&backend, &slots).await?;
            }
        }
        Ok(())
    }
}

/// One server of a backend, as `show servers state` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// The server's name (`s1`, …).
    pub name: String,
    /// Its address, when HAProxy has a valid one.
    pub address: Option<Address>,
    /// Its user weight (`srv_uweight`).
    pub weight: u16,
    /// Whether it is in maintenance (forced, inherited or resolution).
    pub maint: bool,
}

impl Slot {
    fn live_backend(&self) -> Option<Backend> {
        if self.maint {
            return None;
        }
        Some(Backend {
            address: self.address.clone()?,
            weight: Weight::new(self.weight).ok()?,
            slot: None,
            r#match: None,
        })
    }
}

/// Parses `show servers state` (format version 1: a version line, a `#` line naming the
/// columns, one line per server). Columns are found by name, so later versions that add
/// columns still parse.
pub fn parse_servers_state(command: &str, reply: &str) -> Result<Vec<Slot>, RouterError> {
    let bad = |detail: String| RouterError::HaproxyReply {
        command: command.to_owned(),
        detail,
    };
    let mut lines = reply.lines();
    match lines.next().map(str::trim) {
        Some("1") => {}
        other => return Err(bad(format!("format version {other:?}, expected 1"))),
    }
    let header: Vec<&str> = lines
        .next()
        .and_then(|l| l.strip_prefix('#'))
        .ok_or_else(|| bad("no column line".to_owned()))?
        .split_whitespace()
        .collect();
    let column = |name: &str| {
        header
            .iter()
            .position(|c| *c == name)
            .ok_or_else(|| bad(format!("no column {name}")))
    };
    let (name_at, addr_at, port_at, admin_at, weight_at) = (
        column("srv_name")?,
        column("srv_addr")?,
        column("srv_port")?,
        column("srv_admin_state")?,
        column("srv_uweight")?,
    );
    let mut slots = Vec::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let field = |at: usize| {
            fields
                .get(at)
                .copied()
                .ok_or_else(|| bad(format!("short line {line:?}")))
        };
        let number = |at: usize| {
            field(at).and_then(|v| {
                v.parse::<u32>()
                    .map_err(|_| bad(format!("not a number {v:?} in {line:?}")))
            })
        };
        let admin = number(admin_at)?;
        let weight = u16::try_from(number(weight_at)?)
            .map_err(|_| bad(format!("weight out of range in {line:?}")))?;
        let port = u16::try_from(number(port_at)?).unwrap_or(0);
        let address = Address::new(field(addr_at)?, port).ok();
        slots.push(Slot {
            name: field(name_at)?.to_owned(),
            address,
            weight,
            maint: admin & ADMIN_MAINT_FLAGS != 0,
        });
    }
    Ok(slots)
}

/// Which slot each wanted backend goes to, and which live slots are let go.
#[derive(Debug)]
struct SlotPlan {
    assigned: Vec<(Slot, Backend)>,
    released: Vec<Slot>,
}

impl SlotPlan {
    /// A backend already in a slot (live or not) keeps it; the others take slots in
    /// maintenance, then, when there are none left, slots being let go.
    fn new(backend: &str, slots: &[Slot], wanted: &[&Backend]) -> Result<Self, RouterError> {
        let mut free: Vec<Option<&Slot>> = slots.iter().map(Some).collect();
        let mut assigned: Vec<(Slot, Backend)> = Vec::new();
        let mut unplaced: Vec<&Backend> = Vec::new();
        for want in wanted {
            let at = free
                .iter()
                .position(|s| s.is_some_and(|s| s.address.as_ref() == Some(&want.address)));
            match at.and_then(|i| free[i].take()) {
                Some(slot) => assigned.push((slot.clone(), (*want).clone())),
                None => unplaced.push(want),
            }
        }
        for want in unplaced {
            let at = free
                .iter()
                .position(|s| s.is_some_and(|s| s.maint))
                .or_else(|| free.iter().position(Option::is_some));
            match at.and_then(|i| free[i].take()) {
                Some(slot) => assigned.push((slot.clone(), want.clone())),
                None => {
                    return Err(RouterError::HaproxyConfig(format!(
                        "backend `{backend}` has {} server slots and the route needs {}: declare more (server-template)",
                        slots.len(),
                        wanted.len()
                    )))
                }
            }
        }
        // Servers that gain traffic (new, out of maintenance, or a higher weight) are
        // changed before those that lose some: taking weight away first would leave a
        // moment with no server to take a request (blue-green's switch sets stable to 0
        // before green is ready), and HAProxy answers 503 in it.
        assigned.sort_by_key(|(slot, wanted)| {
            !slot.maint
                && slot.address.as_ref() == Some(&wanted.address)
                && wanted.weight.get() < slot.weight
        });
        // A slot taken over from a live backend is not released: its address changes.
        let released = free.into_iter().flatten().cloned().collect();
        Ok(Self { assigned, released })
    }
}

/// The A/B maps of one route, found by file name in `show map`.
#[derive(Debug, Default)]
struct AbMaps {
    /// Header name and map path.
    header: Option<(String, PathBuf)>,
    /// Cookie name and map path.
    cookie: Option<(String, PathBuf)>,
}

impl AbMaps {
    /// Reads `show map`'s `ID (PATH) description` lines for
    /// `ROUTE__ab.header.NAME.map` and `ROUTE__ab.cookie.NAME.map`.
    fn find(route: &RouteName, show_map: &str) -> Self {
        let mut maps = Self::default();
        let prefix = format!("{route}{AB_SUFFIX}.");
        for line in show_map.lines() {
            let Some(path) = line
                .split_once('(')
                .and_then(|(_, rest)| rest.split_once(')'))
                .map(|(path, _)| PathBuf::from(path))
            else {
                continue;
            };
            let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
                continue;
            };
            let Some(rest) = file
                .strip_prefix(&prefix)
                .and_then(|r| r.strip_suffix(".map"))
            else {
                continue;
            };
            if let Some(header) = rest.strip_prefix("header.") {
                maps.header = Some((header.to_owned(), path.clone()));
            } else if let Some(cookie) = rest.strip_prefix("cookie.") {
                maps.cookie = Some((cookie.to_owned(), path.clone()));
            }
        }
        maps
    }

    fn all(&self) -> impl Iterator<Item = &PathBuf> {
        self.header.iter().chain(self.cookie.iter()).map(|(_, p)| p)
    }

    /// The map contents that give `rule`: each loaded map gets the rule's value for it,
    /// or nothing. A header or cookie the rule names without a map is refused.
    fn keys_for(&self, rule: &AbMatch) -> Result<Vec<(PathBuf, Option<String>)>, RouterError> {
        let mut keys = Vec::new();
        for (kind, wanted, loaded) in [
            ("header", &rule.header, &self.header),
            ("cookie", &rule.cookie, &self.cookie),
        ] {
            match (wanted, loaded) {
                (Some(want), Some((name, path))) => {
                    let same = if kind == "header" {
                        name.eq_ignore_ascii_case(&want.name)
                    } else {
                        *name == want.name
                    };
                    if !same {
                        return Err(RouterError::HaproxyConfig(format!(
                            "the A/B rule matches {kind} {} but the configuration's map {} is for {kind} {name}",
                            want.name,
                            path.display()
                        )));
                    }
                    keys.push((path.clone(), Some(want.value.clone())));
                }
                (Some(want), None) => {
                    return Err(RouterError::HaproxyConfig(format!(
                        "the A/B rule matches {kind} {} and no map `…{AB_SUFFIX}.{kind}.{}.map` is loaded for this route",
                        want.name, want.name
                    )))
                }
                (None, Some((_, path))) => keys.push((path.clone(), None)),
                (None, None) => {}
            }
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATE: &str = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n3 web 1 s1 127.0.0.1 2 4 90 1 0 1 0 0 8 0 0 0 - 8081 - 0 0 - - 0\n3 web 2 s2 127.0.0.1 0 5 1 1 1 1 0 0 8 0 0 0 - 9 - 0 0 - - 0\n";

    #[test]
    fn servers_state_parses_by_column_name() {
        let slots = parse_servers_state("show servers state web", STATE).expect("parse");
        assert_eq!(slots.len(), 2);
        assert_eq!(slots[0].name, "s1");
        assert_eq!(
            slots[0]
                .address
                .as_ref()
                .map(ToString::to_string)
                .as_deref(),
            Some("127.0.0.1:8081")
        );
        assert_eq!(slots[0].weight, 90);
        assert!(!slots[0].maint, "CMAINT alone is not maintenance");
        assert!(slots[1].maint);
        assert!(parse_servers_state("x", "2\n# a b\n").is_err());
    }

    #[test]
    fn slot_plan_keeps_addresses_and_refuses_too_many() {
        let slots = parse_servers_state("show servers state web", STATE).expect("parse");
        let a = Backend::new("127.0.0.1:8082", 10).expect("backend");
        let b = Backend::new("127.0.0.1:8081", 90).expect("backend");
        let plan = SlotPlan::new("web", &slots, &[&a, &b]).expect("plan");
        let names: Vec<(&str, String)> = plan
            .assigned
            .iter()
            .map(|(s, b)| (s.name.as_str(), b.address.to_string()))
            .collect();
        assert_eq!(
            names,
            [
                ("s1", "127.0.0.1:8081".to_owned()),
                ("s2", "127.0.0.1:8082".to_owned())
            ]
        );
        assert!(plan.released.is_empty());
        let c = Backend::new("127.0.0.1:8083", 1).expect("backend");
        let error = SlotPlan::new("web", &slots, &[&a, &b, &c]).expect_err("too many");
        assert!(
            error
                .to_string()
                .contains("has 2 server slots and the route needs 3"),
            "{error}"
        );
    }

    #[test]
    fn slot_plan_adds_servers_before_it_takes_weight_away() {
        // s1 serves 127.0.0.1:8081 at 90; s2 is in maintenance. Everything moves to a
        // new server: it must be ready before s1 goes to 0.
        let slots = parse_servers_state("show servers state web", STATE).expect("parse");
        let old = Backend::new("127.0.0.1:8081", 0).expect("backend");
        let new = Backend::new("127.0.0.1:8082", 256).expect("backend");
        let plan = SlotPlan::new("web", &slots, &[&old, &new]).expect("plan");
        let order: Vec<(&str, u16)> = plan
            .assigned
            .iter()
            .map(|(s, b)| (s.name.as_str(), b.weight.get()))
            .collect();
        assert_eq!(order, [("s2", 256), ("s1", 0)]);
    }

    #[test]
    fn ab_maps_are_found_by_file_name() {
        let show = "# id (file) description\n0 (/etc/haproxy/web__ab.header.X-Canary.map) pattern loaded from file '/etc/haproxy/web__ab.header.X-Canary.map' used by map at file 'h.cfg' line 11. curr_ver=0 next_ver=0 entry_cnt=0\n1 (/etc/haproxy/web-2__ab.cookie.canary.map) pattern loaded …\n";
        let maps = AbMaps::find(&RouteName::new("web").expect("name"), show);
        assert_eq!(
            maps.header.as_ref().map(|(n, _)| n.as_str()),
            Some("X-Canary")
        );
        assert!(maps.cookie.is_none());
        let keys = maps
            .keys_for(&AbMatch::header("x-canary", "v2"))
            .expect("keys");
        assert_eq!(
            keys,
            [(
                PathBuf::from("/etc/haproxy/web__ab.header.X-Canary.map"),
                Some("v2".to_owned())
            )]
        );
        assert!(maps.keys_for(&AbMatch::cookie("canary", "v2")).is_err());
    }
}

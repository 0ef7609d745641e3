//! A real browser for the console suites: Debian's `chromium`, headless, driven
//! through `chromedriver` (started here on a free port) with the WebDriver client
//! `fantoccini`. Fails loudly when either binary is missing (`cargo xtask test`
//! installs them).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use tokio::process::{Child, Command};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A running chromedriver; sessions are opened on it with [`Driver::browser`].
#[derive(Debug)]
pub struct Driver {
    url: String,
    child: Child,
}

impl Driver {
    /// Starts chromedriver on a free loopback port.
    pub async fn start() -> anyhow::Result<Driver> {
        for binary in [CHROMIUM, CHROMEDRIVER] {
            if !Path::new(binary).exists() {
                bail!("{binary} is missing: `apt-get install chromium chromium-driver` (`cargo xtask test` installs them)");
            }
        }
        let port = crate::free_port().await?;
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting chromedriver")?;
        let url = format!("http://127.0.0.1:{port}");
        let status = format!("{url}/status");
        crate::wait_until("chromedriver answers", Duration::from_secs(20), || async {
            reqwest::get(&status)
                .await
                .ok()
                .filter(|r| r.status().is_success())
        })
        .await?;
        Ok(Driver { url, child })
    }

    /// A new headless browser session (its own profile, so its own cookies).
    pub async fn browser(&self) -> anyhow::Result<Browser> {
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900"],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .map_err(|e| anyhow!("opening a chromium session: {e}"))?;
        Ok(Browser { client })
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// One browser session.
#[derive(Debug, Clone)]
pub struct Browser {
    /// The WebDriver client.
    pub client: Client,
}

impl Browser {
    /// Navigates to `url`.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.client
            .goto(url)
            .await
            .map_err(|e| anyhow!("opening {url}: {e}"))
    }

    /// The text of the first element matching the CSS selector.
    pub async fn text(&self, css: &str) -> anyhow::Result<String> {
        let element = self
            .client
            .find(Locator::Css(css))
            .await
            .map_err(|e| anyhow!("no `{css}`: {e}"))?;
        element
            .text()
            .await
            .map_err(|e| anyhow!("text of `{css}`: {e}"))
    }

    /// Types into the field matching `css` (after clearing it).
    pub async fn fill(&self, css: &str, text: &str) -> anyhow::Result<()> {
        let element = self
            .client
            .find(Locator::Css(css))
            .await
            .map_err(|e| anyhow!("no `{css}`: {e}"))?;
        element
            .clear()
            .await
            .map_err(|e| anyhow!("clearing `{css}`: {e}"))?;
        element
            .send_keys(text)
            .await
            .map_err(|e| anyhow!("typing into `{css}`: {e}"))
    }

    /// Clicks the element matching `css`.
    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        self.client
            .find(Locator::Css(css))
            .await
            .map_err(|e| anyhow!("no `{css}`: {e}"))?
            .click()
            .await
            .map_err(|e| anyhow!("clicking `{css}`: {e}"))
    }

    /// Runs `script` in the page (its `return` value back).
    pub async fn run(&self, script: &str) -> anyhow::Result<Value> {
        self.client
            .execute(script, Vec::new())
            .await
            .map_err(|e| anyhow!("running a script: {e}"))
    }

    /// Waits until the text of `css` contains `expected`; the text.
    pub async fn wait_text(
        &self,
        css: &str,
        expected: &str,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        crate::wait_until(&format!("`{css}` says {expected:?}"), timeout, || async {
            self.text(css)
                .await
                .ok()
                .filter(|text| text.contains(expected))
        })
        .await
    }

    /// Waits until `script` returns `true` in the page.
    pub async fn wait_for(&self, script: &str, timeout: Duration) -> anyhow::Result<()> {
        crate::wait_until(&format!("`{script}`"), timeout, || async {
            self.run(script)
                .await
                .ok()
                .filter(|v| *v == Value::Bool(true))
        })
        .await
        .map(|_| ())
    }

    /// Saves a screenshot as `path` (PNG).
    pub async fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let png = self
            .client
            .screenshot()
            .await
            .map_err(|e| anyhow!("taking a screenshot: {e}"))?;
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }

    /// Ends the session.
    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}

/// The accessibility checks run on every page of the console (in place of axe-core,
/// which cannot be shipped without npm): the document's language, one `h1`, a label
/// for every form field, text for every button and link, a caption and scoped headers
/// in every table, `alt` on images, unique ids, and a contrast of at least 4.5:1
/// between every text's colour and the background it is drawn on (WCAG 2.1 AA).
/// Returns what is wrong, one line each.
pub const ACCESSIBILITY_CHECKS: &str = r#"
const problems = [];
if (!document.documentElement.lang) problems.push("html has no lang");
if (document.querySelectorAll("h1").length !== 1) problems.push("not exactly one h1");
for (const field of document.querySelectorAll("input:not([type=hidden]), select, textarea")) {
  const labelled = (field.id && document.querySelector('label[for="' + field.id + '"]'))
    || field.getAttribute("aria-label") || field.getAttribute("aria-labelledby");
  if (!labelled) problems.push("field without a label: " + (field.name || field.outerHTML.slice(0, 60)));
}
for (const el of document.querySelectorAll("button, a")) {
  if (!(el.textContent || "").trim() && !el.getAttribute("aria-label")) problems.push("no text: " + el.outerHTML.slice(0, 60));
}
for (const table of document.querySelectorAll("table")) {
  if (!table.querySelector("caption")) problems.push("table without caption");
  for (const th of table.querySelectorAll("thead th")) if (th.getAttribute("scope") !== "col") problems.push("th without scope=col");
}
for (const img of document.querySelectorAll("img")) if (!img.hasAttribute("alt")) problems.push("img without alt");
const ids = {};
for (const el of document.querySelectorAll("[id]")) { if (ids[el.id]) problems.push("duplicate id " + el.id); ids[el.id] = true; }
function rgb(text) { const m = text.match(/[\d.]+/g); return m ? m.map(Number) : [0, 0, 0, 1]; }
function lum(c) { const [r, g, b] = c.slice(0, 3).map(v => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); }); return 0.2126 * r + 0.7152 * g + 0.0722 * b; }
function background(el) {
  for (let e = el; e; e = e.parentElement) {
    const c = rgb(getComputedStyle(e).backgroundColor);
    if (c.length < 4 || c[3] > 0) return c;
  }
  return [255, 255, 255, 1];
}
for (const el of document.querySelectorAll("body *")) {
  const own = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
  if (!own || el.offsetParent === null) continue;
  const fg = rgb(getComputedStyle(el).color), bg = background(el);
  const [a, b] = [lum(fg), lum(bg)].sort((x, y) => y - x);
  const ratio = (a + 0.05) / (b + 0.05);
  if (ratio < 4.5) problems.push("contrast " + ratio.toFixed(2) + " of " + el.tagName + ": " + el.textContent.trim().slice(0, 40));
}
return problems;
"#;

/// Where a failing browser test leaves its screenshots.
pub fn screenshot_dir() -> PathBuf {
    std::env::temp_dir().join("stella-console-screenshots")
}

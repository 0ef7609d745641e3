// Stella console: live updates of the page's main part over server-sent events, and
// confirmation of destructive forms. No inline script anywhere (the CSP forbids it).
"use strict";
(function () {
  const main = document.getElementById("main");
  const live = main && main.dataset.live;
  if (live && window.EventSource) {
    const source = new EventSource("/console/live?view=" + encodeURIComponent(live) +
      "&version=" + encodeURIComponent(main.dataset.version || ""));
    source.addEventListener("main", function (event) {
      // Keep what the user is typing: skip an update while a field of main has focus.
      const active = document.activeElement;
      if (active && main.contains(active) && /^(INPUT|TEXTAREA|SELECT)$/.test(active.tagName)) {
        return;
      }
      main.innerHTML = event.data;
      main.dataset.version = event.lastEventId;
      main.dataset.updated = String(Date.now());
      follow();
    });
  }
  // A log the page shows (pre.log[data-follow]) grows line by line from its own stream;
  // an update of main keeps the followed log element instead of the one it brings.
  let following = null;
  function follow() {
    const log = main && main.querySelector("pre.log[data-follow]");
    if (!log || !window.EventSource) {
      return;
    }
    if (following && following.url === log.dataset.follow) {
      if (following.log !== log) {
        log.replaceWith(following.log);
      }
      return;
    }
    if (following) {
      following.source.close();
    }
    const source = new EventSource(log.dataset.follow + "&after=" +
      encodeURIComponent(log.dataset.after || "-1"));
    following = { url: log.dataset.follow, log: log, source: source };
    source.addEventListener("line", function (event) {
      const at = following.log;
      const bottom = at.scrollTop + at.clientHeight >= at.scrollHeight - 4;
      at.appendChild(document.createTextNode(event.data + "\n"));
      at.dataset.after = event.lastEventId;
      at.dataset.lines = String(Number(at.dataset.lines || "0") + 1);
      if (bottom) {
        at.scrollTop = at.scrollHeight;
      }
    });
    source.addEventListener("end", function () {
      source.close();
      following.log.dataset.ended = "true";
    });
  }
  follow();
  document.addEventListener("submit", function (event) {
    const form = event.target;
    const question = form.dataset && form.dataset.confirm;
    if (question && !window.confirm(question)) {
      event.preventDefault();
    }
  });
})();

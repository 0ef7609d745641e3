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
    });
  }
  document.addEventListener("submit", function (event) {
    const form = event.target;
    const question = form.dataset && form.dataset.confirm;
    if (question && !window.confirm(question)) {
      event.preventDefault();
    }
  });
})();

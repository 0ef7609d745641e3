// Stella console: live updates of the page's main part over server-sent events, the
// log a page shows growing line by line on the same stream, and confirmation of
// destructive forms. No inline script anywhere (the CSP forbids it).
"use strict";
(function () {
  const main = document.getElementById("main");
  const live = main && main.dataset.live;
  // The log element the page keeps (pre.log[data-follow]): live renders of main leave
  // its lines out, so a swap puts the kept element back in place of the new, empty one.
  let kept = null;
  function keep() {
    const log = main && main.querySelector("pre.log[data-follow]");
    if (!log) {
      return;
    }
    if (kept && kept.dataset.follow === log.dataset.follow) {
      if (kept !== log) {
        log.replaceWith(kept);
      }
    } else {
      kept = log;
    }
  }
  keep();
  if (live && window.EventSource) {
    const source = new EventSource("/console/live?view=" + encodeURIComponent(live) +
      "&version=" + encodeURIComponent(main.dataset.version || "") +
      "&after=" + encodeURIComponent(kept ? kept.dataset.after || "-1" : "-1"));
    source.addEventListener("main", function (event) {
      // Keep what the user is typing: skip an update while a field of main has focus.
      const active = document.activeElement;
      if (active && main.contains(active) && /^(INPUT|TEXTAREA|SELECT)$/.test(active.tagName)) {
        return;
      }
      main.innerHTML = event.data;
      main.dataset.version = event.lastEventId;
      main.dataset.updated = String(Date.now());
      keep();
    });
    // `SEQ<tab>TEXT`; a line already shown (after a reconnect) is skipped.
    source.addEventListener("line", function (event) {
      keep();
      const tab = event.data.indexOf("\t");
      const seq = Number(event.data.slice(0, tab));
      if (!kept || tab < 0 || seq <= Number(kept.dataset.after || "-1")) {
        return;
      }
      const bottom = kept.scrollTop + kept.clientHeight >= kept.scrollHeight - 4;
      kept.appendChild(document.createTextNode(event.data.slice(tab + 1) + "\n"));
      kept.dataset.after = String(seq);
      kept.dataset.lines = String(Number(kept.dataset.lines || "0") + 1);
      if (bottom) {
        kept.scrollTop = kept.scrollHeight;
      }
    });
    source.addEventListener("end", function () {
      keep();
      if (kept) {
        kept.dataset.ended = "true";
      }
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

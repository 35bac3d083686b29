// reasonq viewer: live refresh of batch counts and the confirmations of actions. Served as
// /static/view.js; the Content-Security-Policy runs no other script. Text from the server
// is only ever set with textContent, never parsed as HTML.
"use strict";

(function () {
  // Says the page's own script ran (the browser test checks it beside a prompt's script,
  // which must not).
  document.documentElement.dataset.viewer = "ready";
  const live = document.body.dataset.live;
  if (live) {
    let delay = 2000;
    const tick = async () => {
      try {
        const answer = await fetch(live, { credentials: "same-origin" });
        if (answer.ok) {
          const rows = await answer.json();
          refresh(rows);
          if (!rows.some((row) => row.running)) {
            return; // every batch has ended: stop polling
          }
        }
      } catch (e) {
        delay = Math.min(delay * 2, 30000);
      }
      setTimeout(tick, delay);
    };
    setTimeout(tick, delay);
  }

  // Rewrites the cells of each batch shown (`data-batch`) from its row of the JSON.
  function refresh(rows) {
    for (const holder of document.querySelectorAll("[data-batch]")) {
      const row = rows.find((r) => r.batch === holder.dataset.batch);
      if (!row) continue;
      for (const cell of holder.querySelectorAll("[data-field]")) {
        const name = cell.dataset.field;
        if (name === "bar") {
          cell.max = row.progress.max;
          cell.value = row.progress.value;
        } else if (name in row.fields) {
          cell.textContent = row.fields[name];
        }
      }
    }
  }

  // Actions (retry, cancel): a confirmation, the service key when one is set, then a POST
  // that says what it did. The custom header keeps other sites' forms from posting here.
  for (const button of document.querySelectorAll("button[data-action]")) {
    button.addEventListener("click", async () => {
      if (!window.confirm(button.dataset.confirm)) return;
      const headers = { "X-Reasonq-Action": "1" };
      if (document.body.dataset.key === "required") {
        const key = window.prompt("The service key (REASONQ_SERVE_KEY):");
        if (!key) return;
        headers.Authorization = "Bearer " + key;
      }
      const shown = button.parentElement.querySelector("output");
      button.disabled = true;
      try {
        const answer = await fetch(button.dataset.action, { method: "POST", headers });
        const body = await answer.json().catch(() => ({}));
        const message = body.message || (body.error && body.error.message) || answer.statusText;
        if (shown) shown.textContent = message;
        if (answer.ok) setTimeout(() => window.location.reload(), 1200);
      } catch (e) {
        if (shown) shown.textContent = "The request failed: " + e;
      } finally {
        button.disabled = false;
      }
    });
  }
})();

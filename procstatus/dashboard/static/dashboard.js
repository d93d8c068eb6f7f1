// procstatus dashboard: live regions, filters, actions. No framework, no build step.
//
// Every element with data-live="URL" is fetched again every data-every ms (default: the
// body's data-refresh-ms) and its HTML replaced when it changed; data-follow="FORM-ID"
// adds that form's fields to the URL. Action forms POST with the token in a header.
"use strict";

(function () {
  const body = document.body;
  const refreshMs = parseInt(body.dataset.refreshMs || "2000", 10);
  const liveBadge = document.getElementById("live");
  const TOKEN_KEY = "procstatus-dashboard-token";

  function formQuery(form) {
    const params = new URLSearchParams();
    for (const [name, value] of new FormData(form)) {
      if (value !== "" && name !== "token") params.append(name, value);
    }
    return params;
  }

  function regionUrl(region) {
    const url = new URL(region.dataset.live, window.location.origin);
    const follow = region.dataset.follow && document.getElementById(region.dataset.follow);
    if (follow) {
      for (const [name, value] of formQuery(follow)) url.searchParams.append(name, value);
    }
    return url;
  }

  function setLive(ok, text) {
    if (!liveBadge) return;
    liveBadge.classList.toggle("offline", !ok);
    liveBadge.textContent = text;
  }

  const listeners = [];

  async function refresh(region) {
    if (region.dataset.busy === "1") return;
    region.dataset.busy = "1";
    try {
      const response = await fetch(regionUrl(region), {
        headers: { Accept: "text/html" }, cache: "no-store", credentials: "same-origin",
      });
      const text = await response.text();
      if (!response.ok) {
        let message = response.status + "";
        try { message = JSON.parse(text).error || message; } catch (e) { /* not JSON */ }
        setLive(false, "error: " + message);
        return;
      }
      if (region.dataset.html !== text) {
        region.innerHTML = text;
        region.dataset.html = text;
        for (const listener of listeners) listener(region);
      }
      region.dataset.updated = String(Date.now());
      setLive(true, "live · " + new Date().toLocaleTimeString());
    } catch (error) {
      setLive(false, "offline, retrying");
    } finally {
      region.dataset.busy = "0";
    }
  }

  function startLive(region) {
    region.dataset.html = region.innerHTML;
    const every = parseInt(region.dataset.every || String(refreshMs), 10);
    window.setInterval(function () {
      if (!document.hidden) refresh(region);
    }, every);
  }

  const regions = Array.from(document.querySelectorAll("[data-live]"));
  regions.forEach(startLive);

  // Filters: applied at once, kept in the address so a reload or a link shows the same.
  function wireFilter(form, keepInAddress) {
    const followers = regions.filter(function (r) { return r.dataset.follow === form.id; });
    function apply(event) {
      if (event) event.preventDefault();
      if (keepInAddress) {
        const query = formQuery(form).toString();
        const hash = window.location.hash || "";
        history.replaceState(null, "", window.location.pathname + (query ? "?" + query : "") + hash);
      }
      followers.forEach(refresh);
    }
    form.addEventListener("submit", apply);
    form.addEventListener("change", apply);
  }
  document.querySelectorAll("form.filters[id]").forEach(function (form) {
    wireFilter(form, true);
  });

  // The document page: the status changes seen while it is open.
  const observed = document.getElementById("observed");
  let lastSeen = null;
  function readDoc(root) {
    const doc = root.querySelector(".doc[data-status]");
    return doc && { status: doc.dataset.status, step: doc.dataset.step };
  }
  function noteChange(region) {
    if (!observed || region.id !== "document") return;
    const now = readDoc(region);
    if (!now || !lastSeen) { lastSeen = now; return; }
    if (now.status !== lastSeen.status) {
      const empty = observed.querySelector(".muted");
      if (empty) empty.remove();
      const item = document.createElement("li");
      const time = document.createElement("time");
      time.textContent = new Date().toLocaleTimeString();
      const pill = document.createElement("span");
      pill.className = "pill s-" + now.status;
      pill.textContent = now.status === "WAITING_FOR_RESULT" ? "WAITING" : now.status;
      item.append(time, " ", pill, " was " + lastSeen.status + (now.step ? " · " + now.step : ""));
      observed.prepend(item);
    }
    lastSeen = now;
  }
  const documentRegion = document.getElementById("document");
  if (documentRegion) lastSeen = readDoc(documentRegion);
  listeners.push(noteChange);

  // Offer only the actions the status allows (the server checks again).
  const UNDER_WAY = ["PENDING", "RUNNING", "WAITING_FOR_RESULT"];
  function enableActions() {
    const doc = documentRegion && readDoc(documentRegion);
    if (!doc) return;
    const allowed = {
      cancel: UNDER_WAY.includes(doc.status),
      retry: doc.status === "FAILURE",
      reset: doc.status !== "READY" && !UNDER_WAY.includes(doc.status),
    };
    document.querySelectorAll("form.action-form button[data-action]").forEach(function (b) {
      b.disabled = !allowed[b.dataset.action];
    });
  }
  enableActions();
  listeners.push(enableActions);

  // Actions: a POST carrying the token. The token comes from the address's #token=...
  // (kept in this tab's sessionStorage, then removed from the address) or the field.
  const hashToken = /(?:^#|&)token=([^&]+)/.exec(window.location.hash);
  if (hashToken) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(hashToken[1]));
    history.replaceState(null, "", window.location.pathname + window.location.search);
  }
  document.querySelectorAll("form.action-form").forEach(function (form) {
    const tokenField = form.querySelector("input[name=token]");
    const result = document.getElementById("action-result");
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved && tokenField) tokenField.value = saved;
    form.addEventListener("submit", async function (event) {
      event.preventDefault();
      const button = event.submitter;
      if (!button) return;
      const token = tokenField ? tokenField.value : "";
      const terminate = form.querySelector("input[name=terminate]");
      const payload = new URLSearchParams();
      if (terminate && terminate.checked) payload.set("terminate", "1");
      result.className = "action-result";
      result.textContent = button.dataset.action + "…";
      try {
        const response = await fetch(button.getAttribute("formaction"), {
          method: "POST",
          headers: { "X-Procstatus-Token": token, Accept: "application/json",
                     "Content-Type": "application/x-www-form-urlencoded" },
          body: payload.toString(),
          credentials: "same-origin",
        });
        const answer = await response.json().catch(function () { return {}; });
        result.textContent = answer.message || answer.error || String(response.status);
        result.classList.add(response.ok ? "ok" : "refused");
        if (response.ok || response.status === 409) sessionStorage.setItem(TOKEN_KEY, token);
      } catch (error) {
        result.textContent = "the request failed: " + error;
        result.classList.add("refused");
      }
      regions.forEach(refresh);
    });
  });
})();

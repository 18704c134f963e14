// imalinkd web UI: the import dialog, the storage check as the path is typed, live
// progress from the API's /events stream, and the image viewer. Plain JavaScript, no
// library; every request goes to this daemon.
"use strict";

(function () {
  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));

  function humanBytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return i === 0 ? n.toFixed(0) + " B" : n.toFixed(1) + " " + units[i];
  }
  function duration(s) {
    if (s === null || s === undefined) return "–";
    s = Math.round(s);
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + String(s % 60).padStart(2, "0") + " s";
    return Math.floor(s / 3600) + " h " + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + " min";
  }

  // -- the import dialog --
  function setupDialog() {
    const open = $("#open-import"), dialog = $("#import-dialog");
    if (open && dialog && typeof dialog.showModal === "function") {
      open.addEventListener("click", (e) => { e.preventDefault(); dialog.showModal(); checkStorage(); });
    }
  }

  let checkTimer = null, checkSeq = 0;
  function checkStorage() {
    const input = $("#import-storage"), out = $("#storage-state");
    if (!input || !out) return;
    const seq = ++checkSeq;
    fetch("/ui/storage-check?path=" + encodeURIComponent(input.value), { credentials: "same-origin" })
      .then((r) => r.json())
      .then((d) => {
        if (seq !== checkSeq) return;  // an older answer than the path typed now
        input.classList.toggle("error", !d.accessible);
        out.className = "storage-state " + (d.accessible ? "ok" : "error");
        out.textContent = d.accessible
          ? "✓ Storage accessible" + (d.label ? ": " + d.label : "") + (d.free_bytes !== undefined ? ", " + humanBytes(d.free_bytes) + " free" : "")
          : "⚠ Storage path not accessible" + (d.reason ? ": " + d.reason : "");
        out.dataset.accessible = d.accessible ? "yes" : "no";
      })
      .catch(() => {});
  }
  function setupStorageCheck() {
    const input = $("#import-storage");
    if (!input) return;
    input.addEventListener("input", () => { clearTimeout(checkTimer); checkTimer = setTimeout(checkStorage, 200); });
    checkStorage();
  }

  // -- live progress --
  const DB_PHASES = ["scanning", "database_import"];
  function cardFor(container, msg) {
    const key = msg.session_uuid || ("source:" + (msg.source || ""));
    let card = $$(".import-progress", container).find((c) => c.dataset.key === key);
    if (!card && msg.session_uuid) {  // the engine named the session: the card keyed by source becomes it
      card = $$(".import-progress", container).find((c) => !c.dataset.session && c.dataset.source === (msg.source || ""));
    }
    if (!card) {
      const tpl = $("#progress-template");
      if (!tpl) return null;
      card = tpl.content.firstElementChild.cloneNode(true);
      container.appendChild(card);
    }
    card.dataset.key = key;
    if (msg.session_uuid) card.dataset.session = msg.session_uuid;
    if (msg.source) card.dataset.source = msg.source;
    const none = $("#no-imports");
    if (none) none.hidden = true;
    return card;
  }
  function wanted(container, msg) {
    const only = container.dataset.only;
    if (!only) return true;
    if (msg.session_uuid === only || msg.source === only) return true;
    const c = $$(".import-progress", container).find((x) => x.dataset.session && x.dataset.session === msg.session_uuid);
    return Boolean(c && (c.dataset.source === only));
  }
  function showProgress(container, msg) {
    if (!wanted(container, msg)) return;
    const card = cardFor(container, msg);
    if (!card) return;
    const inDb = DB_PHASES.includes(msg.engine_phase);
    const dbBar = $(".bar-database", card), copyBar = $(".bar-copy", card), postBar = $(".bar-post", card);
    dbBar.value = inDb ? (msg.total_files ? 100 * msg.copied_files / msg.total_files : 0) : 100;
    copyBar.value = inDb ? 0 : msg.percent;
    if (msg.engine_phase === "post_processing") postBar.removeAttribute("value");  // indeterminate
    else if (msg.engine_phase === "done") postBar.value = 100;
    $(".source", card).textContent = msg.source || "import";
    $(".engine-phase", card).textContent = msg.engine_phase === "post_processing" ? "Post-processing" : msg.phase;
    $(".current-file", card).textContent = msg.current_file || "";
    $(".copied-files", card).textContent = msg.copied_files;
    $(".total-files", card).textContent = msg.total_files;
    $(".copied-bytes", card).textContent = humanBytes(msg.copied_bytes);
    $(".total-bytes", card).textContent = humanBytes(msg.total_bytes);
    $(".speed", card).textContent = (msg.mb_per_s || 0).toFixed(1);
    $(".eta", card).textContent = duration(msg.eta_seconds);
    card.dataset.percent = msg.percent;
  }
  function showEnd(container, msg) {
    if (!msg.session_uuid) {
      if (msg.type === "failed" && msg.source && wanted(container, msg)) {
        const card = $$(".import-progress", container).find((c) => c.dataset.source === msg.source);
        if (card) { $(".outcome", card).textContent = "Not started: " + msg.message; card.classList.add("failed"); }
      }
      return;
    }
    const card = $$(".import-progress", container).find((c) => c.dataset.session === msg.session_uuid);
    if (!card) return;
    const out = $(".outcome", card);
    const link = document.createElement("a");
    link.href = "/sessions/" + msg.session_uuid;
    link.textContent = "Open the session";
    if (msg.type === "completed" || (msg.type === "result" && msg.status === "completed")) {
      card.classList.add("done");
      $(".bar-copy", card).value = 100; $(".bar-post", card).value = 100; $(".bar-database", card).value = 100;
      out.textContent = "✅ Files have been copied to storage. The source directory is no longer needed. ";
    } else {
      card.classList.add("failed");
      out.textContent = "The import stopped; the session is resumable. " + (msg.message || "") + " ";
    }
    out.appendChild(link);
  }

  // Follow a background job (import, resume) until it ends, then show its page, which
  // says how it ended. Polling /imports/{id} covers an end before the stream was open.
  function followJob(jobId, reload) {
    let asking = false;
    const ask = () => {
      if (asking) return;
      asking = true;
      fetch("/imports/" + encodeURIComponent(jobId), { credentials: "same-origin" })
        .then((r) => r.json())
        .then((d) => {
          if (!d.status || d.status === "running") return;
          if (reload) window.location.reload(); else window.location.assign("/jobs/" + jobId);
        })
        .catch(() => {})
        .finally(() => { asking = false; });
    };
    document.addEventListener("imalinkd:ended", ask);
    setInterval(ask, 1500);
    ask();
  }

  // The dialog starts the import without leaving the dashboard, whose stream is already
  // open: the progress view shows the import from its first event.
  function setupImportDialog() {
    const dialog = $("#import-dialog"), form = $("#import-form", dialog || undefined);
    if (!dialog || !form) return;
    form.addEventListener("submit", (e) => {
      const mode = $("input[name=mode]:checked", form);
      if (mode && mode.value !== "copy") return;  // cataloguing in place: its own page says what happened
      e.preventDefault();
      const button = $("#import-start", form);
      if (button) button.disabled = true;
      fetch(form.action, { method: "POST", body: new URLSearchParams(new FormData(form)), credentials: "same-origin" })
        .then((r) => {
          const m = /^\/jobs\/([0-9a-f]+)$/.exec(new URL(r.url).pathname);
          if (r.redirected && m) {
            dialog.close();
            const container = $("#imports");
            if (container) container.dataset.job = m[1];
            followJob(m[1], false);
            return null;
          }
          return r.text().then((html) => { document.open(); document.write(html); document.close(); });
        })
        .catch(() => { if (button) button.disabled = false; });
    });
  }

  function setupEvents() {
    const container = $("[data-live=events]");
    if (!container || typeof EventSource === "undefined") return;
    const source = new EventSource("/events");
    source.addEventListener("hello", (e) => { JSON.parse(e.data).active.forEach((m) => showProgress(container, m)); });
    source.addEventListener("progress", (e) => showProgress(container, JSON.parse(e.data)));
    ["completed", "failed", "result"].forEach((type) => source.addEventListener(type, (e) => {
      const msg = JSON.parse(e.data);
      showEnd(container, msg);
      document.dispatchEvent(new CustomEvent("imalinkd:ended", { detail: msg }));
      if (container.dataset.only && msg.session_uuid === container.dataset.only && !$("#job")) window.location.reload();
    }));
    window.addEventListener("beforeunload", () => source.close());
  }

  // -- the image viewer --
  const SHOWN = /^image\/(jpeg|png|gif|webp|avif|bmp)$/;
  function setupViewer() {
    const viewer = $("#viewer");
    if (!viewer || typeof viewer.showModal !== "function") return;
    $$(".open-full").forEach((a) => a.addEventListener("click", (e) => {
      if (!SHOWN.test(a.dataset.type || "")) return;  // RAW files and videos open (or download) as they are
      e.preventDefault();
      $("#viewer-img").src = a.dataset.full;
      $("#viewer-name").textContent = a.title;
      viewer.showModal();
    }));
    viewer.addEventListener("click", (e) => { if (e.target === viewer) viewer.close(); });
  }

  document.addEventListener("DOMContentLoaded", () => {
    setupDialog();
    setupStorageCheck();
    setupEvents();
    setupImportDialog();
    const job = $("#job");
    if (job && job.dataset.status === "running") followJob(job.dataset.job, true);
    setupViewer();
  });
})();

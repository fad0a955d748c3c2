// The dashboard's own behaviour: live job output, the utilisation chart, selections.
// Served as a file (the Content-Security-Policy allows no inline script). Text from the
// server is only ever inserted as text, never as HTML.
"use strict";

(function () {
  const FINAL = new Set(["done", "failed", "cancelled"]);

  // ---- selections in the jobs table ----------------------------------------------------
  document.addEventListener("change", function (event) {
    const box = event.target;
    if (box instanceof HTMLInputElement && box.classList.contains("select-all")) {
      const table = box.closest("table");
      if (table) {
        table.querySelectorAll('input[name="ids"]').forEach(function (each) {
          each.checked = box.checked;
        });
      }
    }
  });

  // A live refresh of a list would drop what the user has ticked: wait until they act.
  document.addEventListener("htmx:beforeRequest", function (event) {
    const element = event.detail.elt;
    if (element instanceof HTMLElement && element.hasAttribute("data-keep-when-selected")
        && element.querySelector('input[name="ids"]:checked')) {
      event.preventDefault();
    }
  });

  // After an action, show the list as it is now.
  document.addEventListener("htmx:afterRequest", function (event) {
    const element = event.detail.elt;
    if (!(element instanceof HTMLElement)) return;
    const path = event.detail.pathInfo && event.detail.pathInfo.requestPath || "";
    if (path.indexOf("/ui/actions/") === 0 && event.detail.successful) {
      document.querySelectorAll('input[name="ids"]:checked').forEach(function (box) {
        if (box.type === "checkbox") box.checked = false;
      });
      ["#jobs", "#job"].forEach(function (selector) {
        const target = document.querySelector(selector);
        if (target && window.htmx) window.htmx.trigger(target, "refresh");
      });
      const list = document.querySelector("#jobs");
      if (list && window.htmx) {
        window.htmx.ajax("GET", list.getAttribute("hx-get"), {target: list, swap: "innerHTML"});
      }
    }
  });

  // ---- the live marker -----------------------------------------------------------------
  function live(on) {
    const marker = document.getElementById("live");
    if (marker) {
      marker.classList.toggle("on", on);
      marker.title = on ? "live: updates as jobs change" : "not connected: retrying";
    }
  }
  document.addEventListener("htmx:sseOpen", function () { live(true); });
  document.addEventListener("htmx:sseError", function () { live(false); });

  // ---- a job's output, live ------------------------------------------------------------
  function jobState() {
    const facts = document.querySelector("#job [data-job-state]");
    return facts ? facts.getAttribute("data-job-state") : null;
  }

  function follow(section) {
    const jobId = section.getAttribute("data-job");
    const outputs = Array.from(section.querySelectorAll("pre[data-stream]"));
    const offsets = new Map(outputs.map(function (pre) { return [pre, 0]; }));
    let stopped = false;

    async function poll(pre) {
      const stream = pre.getAttribute("data-stream");
      const url = "/ui/jobs/" + encodeURIComponent(jobId) + "/output?stream=" + stream
        + "&offset=" + offsets.get(pre);
      const response = await fetch(url, {credentials: "same-origin", cache: "no-store"});
      if (!response.ok) return null;
      const answer = await response.json();
      if (answer.live && answer.data) {
        pre.append(document.createTextNode(answer.data));
        pre.scrollTop = pre.scrollHeight;
      }
      if (answer.live) offsets.set(pre, answer.next_offset);
      return answer;
    }

    async function tick() {
      if (stopped) return;
      let ended = FINAL.has(jobState() || "");
      if (!ended) {
        try {
          const answers = await Promise.all(outputs.map(poll));
          ended = answers.some(function (a) { return a && !a.live && FINAL.has(a.state); });
        } catch (error) {
          // the server is restarting, or the network blinked: try again
        }
      }
      if (ended) {
        stopped = true;
        section.hidden = true;  // the kept output is on the page now
        const job = document.querySelector("#job");
        if (job && window.htmx) window.htmx.trigger(job, "refresh");
        return;
      }
      window.setTimeout(tick, 1000);
    }
    tick();
  }

  // ---- utilisation over time -----------------------------------------------------------
  function chart(holder) {
    if (!window.uPlot) return;
    let plot = null;

    function draw(series) {
      const data = [series.at, series.cores_used, series.cores_offered,
                    series.memory_used.map(function (b) { return b / 1073741824; }),
                    series.memory_offered.map(function (b) { return b / 1073741824; }),
                    series.gpus_used, series.gpus_offered];
      if (plot) {
        plot.setData(data);
        return;
      }
      // Resources change only when something happens: a step, not a slope, between samples.
      const step = window.uPlot.paths.stepped({align: 1});
      plot = new window.uPlot({
        width: Math.max(320, holder.clientWidth || 800), height: 220,
        series: [{},
          {label: "cores used", stroke: "#1f77b4", width: 2, paths: step},
          {label: "cores offered", stroke: "#1f77b4", dash: [5, 5], paths: step},
          {label: "memory used (GiB)", stroke: "#2ca02c", width: 2, scale: "GiB", paths: step},
          {label: "memory offered (GiB)", stroke: "#2ca02c", dash: [5, 5], scale: "GiB",
           paths: step},
          {label: "GPUs used", stroke: "#d62728", width: 2, paths: step},
          {label: "GPUs offered", stroke: "#d62728", dash: [5, 5], paths: step}],
        axes: [{}, {label: "cores, GPUs"}, {side: 1, scale: "GiB", label: "GiB",
                                             grid: {show: false}}],
      }, data, holder);
    }

    fetch(holder.getAttribute("data-series"), {credentials: "same-origin"})
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (series) { if (series) draw(series); });
    holder.addEventListener("htmx:afterRequest", function (event) {
      if (event.detail.successful) draw(JSON.parse(event.detail.xhr.responseText));
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    const section = document.getElementById("live-output");
    if (section && !section.hidden) follow(section);
    const holder = document.getElementById("utilisation");
    if (holder) chart(holder);
  });
})();

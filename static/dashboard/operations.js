/* Operations: process health, buffer and data lag, gaps and backfill jobs, Celery queues.
 * Refetched every 5 s and on alerts (a failed backfill or an imputation is an alert). */
(function () {
  "use strict";
  function render(ops) {
    var reach = ops.processes.reachable;
    Oasis.fillTable("processes", Object.keys(reach).map(function (name) {
      return { cells: [name, [reach[name], reach[name] === "ok" ? "side-buy" : "status-rejected"]] };
    }));
    var reconnects = ops.processes.ws_reconnects;
    var total = Object.keys(reconnects).reduce(function (sum, key) { return sum + reconnects[key]; }, 0);
    document.getElementById("ws-reconnects").textContent = String(total);
    document.getElementById("frames-rejected").textContent = String(ops.processes.frames_rejected);
    Oasis.fillTable("buffer-lag", ops.processes.buffer_lag.map(function (row) {
      return { cells: [row.symbol, row.timeframe, [row.seconds.toFixed(1), row.seconds > 120 ? "status-rejected" : ""]] };
    }));
    Oasis.fillTable("data-lag", ops.data_lag.map(function (row) {
      return { cells: [row.symbol, row.timeframe, Oasis.time(row.newest_close), row.lag_s.toFixed(1),
        [row.overdue_s.toFixed(1), row.overdue_s > 60 ? "status-rejected" : ""], row.source] };
    }));
    Oasis.fillTable("gaps", ops.gaps.map(function (g) {
      return { cells: [g.id, g.symbol, g.timeframe, Oasis.time(g.start), Oasis.time(g.end), [g.status, "status-" + g.status],
        g.attempts, Oasis.time(g.next_attempt_at), g.backfilled, g.imputed, g.reason] };
    }));
    Oasis.fillTable("backfills", ops.backfill_jobs.map(function (b) {
      return { cells: [Oasis.time(b.at), b.actor, b.symbol, b.timeframe, Oasis.time(b.since) + " → " + Oasis.time(b.until),
        b.missing, b.backfilled, b.imputed, [b.status + (b.reason ? ": " + b.reason : ""), b.status === "failed" ? "status-rejected" : ""]] };
    }));
    document.getElementById("celery-note").textContent = ops.celery.note || "broker: " + ops.celery.broker;
    Oasis.fillTable("celery", Object.keys(ops.celery.queues).map(function (name) {
      return { cells: [name, ops.celery.queues[name]] };
    }));
  }
  function refresh() {
    Oasis.fetchJSON("/operations.json").then(render).catch(function (e) { console.warn(e); });
  }
  render(Oasis.data("operations-data"));
  setInterval(refresh, 5000);
  Oasis.live(["alerts"], refresh, refresh);
})();

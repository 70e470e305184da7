/* Overview: service-level tiles, the symbols × timeframes heatmap, the alerts feed.
 * Alerts, signals and the kill switch arrive live; the heatmap and tiles are refetched after a
 * signal and every 10 s (candles of every series close all the time: one fetch, not N topics). */
(function () {
  "use strict";
  var data = Oasis.data("overview-data");

  function tile(id, value, unit, bad) {
    var element = document.getElementById(id);
    element.querySelector(".figure").textContent = value === null || value === undefined ? "–" : value + unit;
    element.classList.toggle("bad", !!bad);
    element.classList.toggle("ok", value !== null && value !== undefined && !bad);
  }

  function renderTiles(levels) {
    tile("tile-ingest", levels.ingest_p95_ms === null ? null : levels.ingest_p95_ms.toFixed(1), " ms",
      levels.ingest_p95_ms > levels.ingest_target_ms);
    tile("tile-post-close", levels.post_close_p95_ms === null ? null : levels.post_close_p95_ms.toFixed(1), " ms",
      levels.post_close_p95_ms > levels.post_close_target_ms);
    tile("tile-rejections", levels.rejection_pct === null ? "0 of 0" : levels.rejection_pct.toFixed(2),
      levels.rejection_pct === null ? "" : " % of " + levels.orders_today, levels.rejection_pct > levels.rejection_target_pct);
    tile("tile-gaps", levels.open_gaps, "", levels.open_gaps > 0);
  }

  function renderHeatmap(heat) {
    var element = document.getElementById("heatmap");
    document.getElementById("heatmap-empty").hidden = heat.symbols.length > 0;
    var text = heat.cells.map(function (row, i) {
      return row.map(function (cell, j) {
        if (!cell) return "";
        var change = heat.returns_pct[i][j];
        return (change >= 0 ? "+" : "") + change.toFixed(2) + "%" + (cell.signal ? " " + (cell.signal === "enter" ? "▲" : "▼") : "") +
          (cell.imputed ? " *" : "");
      });
    });
    var hover = heat.cells.map(function (row, i) {
      return row.map(function (cell, j) {
        if (!cell) return heat.symbols[i] + " " + heat.timeframes[j] + ": no candle";
        return heat.symbols[i] + " " + heat.timeframes[j] + "<br>close " + cell.close + " at " + Oasis.time(cell.open_time) +
          (cell.imputed ? " (imputed)" : "") + "<br>signal: " + (cell.signal ? cell.signal + " at " + Oasis.time(cell.signal_at) : "none");
      });
    });
    var limit = 0.5;
    heat.returns_pct.forEach(function (row) { row.forEach(function (v) { if (v !== null) limit = Math.max(limit, Math.abs(v)); }); });
    var trace = {
      type: "heatmap", z: heat.returns_pct, x: heat.timeframes, y: heat.symbols, text: text, texttemplate: "%{text}",
      hovertext: hover, hoverinfo: "text", zmin: -limit, zmax: limit, zmid: 0,
      colorscale: [[0, "#ef5350"], [0.5, "#1b242e"], [1, "#26a69a"]], xgap: 2, ygap: 2,
      colorbar: { title: { text: "%" }, tickfont: { color: "#d8dee6" } },
    };
    var layout = {
      paper_bgcolor: "#161d25", plot_bgcolor: "#161d25", font: { color: "#d8dee6" },
      margin: { l: 90, r: 10, t: 40, b: 10 }, height: Math.max(240, 34 * heat.symbols.length + 60),
      yaxis: { autorange: "reversed", type: "category" }, xaxis: { type: "category", side: "top" },
    };
    Plotly.react(element, [trace], layout, { displayModeBar: false, responsive: true });
    if (!element.dataset.clickBound) {
      element.dataset.clickBound = "1";
      element.on("plotly_click", function (event) {
        var point = event.points[0];
        location.href = "/symbols/" + encodeURIComponent(point.y) + "/?tf=" + encodeURIComponent(point.x);
      });
    }
    element.dataset.cells = String(heat.symbols.length * heat.timeframes.length);
  }

  function alertItem(alert, fresh) {
    var item = document.createElement("li");
    item.className = alert.severity + " " + alert.state + (fresh ? " fresh" : "");
    item.dataset.id = alert.id;
    var when = document.createElement("div");
    when.className = "when";
    when.textContent = Oasis.time(alert.last_seen) + " · " + alert.severity + " · " + alert.state +
      (alert.count > 1 ? " · ×" + alert.count : "") + (alert.incident ? " · incident " + alert.incident : "");
    var what = document.createElement("div");
    what.textContent = alert.title;
    item.title = alert.detail || "";
    item.appendChild(when);
    item.appendChild(what);
    return item;
  }

  function renderAlerts(alerts) {
    var list = document.getElementById("alerts");
    list.innerHTML = "";
    alerts.forEach(function (alert) { list.appendChild(alertItem(alert, false)); });
    document.getElementById("alerts-empty").hidden = alerts.length > 0;
  }

  function renderIncidents(incidents) {
    var section = document.getElementById("incidents");
    section.hidden = incidents.open.length === 0 && incidents.overdue_actions.length === 0;
    Oasis.fillTable("incidents-open", incidents.open.map(function (i) {
      return { cells: [i.id, [i.severity, "status-" + i.severity], i.title, Oasis.time(i.opened_at), i.alerts, i.actions] };
    }));
    Oasis.fillTable("actions-overdue", incidents.overdue_actions.map(function (a) {
      return { cells: [a.incident, a.description, a.owner, [a.due_date, "status-rejected"]] };
    }));
  }

  function render(overview) {
    renderTiles(overview.service_levels);
    renderHeatmap(overview.heatmap);
    renderAlerts(overview.alerts);
    renderIncidents(overview.incidents);
    Oasis.killswitch(overview.killswitch);
  }

  var pending = null;
  function refresh() {
    if (pending) return;
    pending = setTimeout(function () {
      pending = null;
      Oasis.fetchJSON("/overview.json").then(render).catch(function (error) { console.warn(error); });
    }, 250);
  }

  render(data);
  setInterval(refresh, 10000);
  Oasis.live(["alerts", "signals"], function (event) {
    if (event.type === "alert.update") {
      var list = document.getElementById("alerts");
      var old = list.querySelector('[data-id="' + event.alert.id + '"]');
      if (old) old.remove();
      list.insertBefore(alertItem(event.alert, true), list.firstChild);
      document.getElementById("alerts-empty").hidden = true;
      refresh();
    } else if (event.type === "signals.new") {
      refresh();
    }
  }, refresh);
})();

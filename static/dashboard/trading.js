/* Trading: orders (live), positions, equity/PnL and drawdown. An order update refetches the book. */
(function () {
  "use strict";
  var data = Oasis.data("trading-data");
  var mode = data.mode;

  function render(book) {
    Oasis.fillTable("orders", book.orders.map(function (o) {
      return { cells: [Oasis.time(o.created_at), o.symbol, [o.side, "side-" + o.side], o.type, [o.status, "status-" + o.status],
        o.quantity, o.filled_quantity, o.price || "", o.average_price || "", o.reject_reason || ""] };
    }));
    Oasis.fillTable("positions", book.positions.map(function (p) {
      return { cells: [p.symbol, p.quantity, p.average_price, p.mark_price || "", p.unrealized_pnl, p.realized_pnl, p.fees] };
    }));
    var latest = book.latest;
    document.getElementById("equity-now").textContent = latest ? latest.equity + " " + latest.quote_asset : "–";
    document.getElementById("realized-now").textContent = latest ? latest.realized_pnl : "–";
    document.getElementById("unrealized-now").textContent = latest ? latest.unrealized_pnl : "–";
    document.getElementById("drawdown-now").textContent = latest ? latest.drawdown_pct + " %" : "–";
    var eq = book.equity;
    var x = eq.t.map(function (t) { return Oasis.time(t).replace("Z", ""); });
    document.getElementById("equity-empty").hidden = x.length > 0;
    Plotly.react("equity-chart", [
      { type: "scatter", mode: "lines", name: "equity", x: x, y: eq.equity, line: { color: "#4ea1ff" } },
      { type: "scatter", mode: "lines", name: "PnL", x: x, y: eq.pnl, yaxis: "y2", line: { color: "#26a69a" } },
      { type: "scatter", mode: "lines", name: "drawdown %", x: x, y: eq.drawdown_pct.map(function (v) { return -v; }), yaxis: "y3",
        fill: "tozeroy", line: { color: "#ef5350" } },
    ], {
      paper_bgcolor: "#161d25", plot_bgcolor: "#161d25", font: { color: "#d8dee6" }, height: 420, uirevision: "keep",
      margin: { l: 70, r: 20, t: 10, b: 30 }, legend: { orientation: "h" },
      yaxis: { domain: [0.55, 1], title: { text: "equity" }, gridcolor: "#26313d" },
      yaxis2: { domain: [0.55, 1], overlaying: "y", side: "right", title: { text: "PnL" }, showgrid: false },
      yaxis3: { domain: [0, 0.45], title: { text: "drawdown %" }, gridcolor: "#26313d" },
      xaxis: { type: "date", gridcolor: "#26313d" },
    }, { displaylogo: false, responsive: true });
    document.getElementById("orders").dataset.rows = String(book.orders.length);
  }

  var pending = null;
  function refresh() {
    if (pending) return;
    pending = setTimeout(function () {
      pending = null;
      Oasis.fetchJSON("/trading.json?mode=" + encodeURIComponent(mode)).then(render).catch(function (e) { console.warn(e); });
    }, 250);
  }

  render(data);
  setInterval(refresh, 15000);
  Oasis.live(["orders"], function (event) {
    if (event.type === "order.update" && event.order.mode === mode) refresh();
  }, refresh);
})();

/* Symbol page: candlesticks with volume, the active rules' indicators, signals and orders as
 * markers, imputed candles marked. A closed candle arrives on candles.<symbol>.<tf> and is drawn
 * at once; the indicators, signals and orders it leads to are refetched right after. */
(function () {
  "use strict";
  var MAX_CANDLES = 300;
  var element = document.getElementById("chart");
  var state = Oasis.data("chart-data");
  var tfMs = state.timeframe_ms;
  window.oasisChart = { updates: [] };  // what the browser test and the latency benchmark read

  function stamp(ms) { return new Date(ms).toISOString().replace("T", " ").replace("Z", ""); }

  function candleAt(openMs) {
    for (var i = state.candles.length - 1; i >= 0; i--) if (state.candles[i].t === openMs) return state.candles[i];
    return null;
  }

  function traces() {
    var c = state.candles;
    var x = c.map(function (k) { return stamp(k.t); });
    var hasOscillator = state.overlays.some(function (o) { return o.panel === "oscillator"; });
    var list = [
      { type: "candlestick", name: state.symbol, x: x, open: c.map(function (k) { return k.o; }),
        high: c.map(function (k) { return k.h; }), low: c.map(function (k) { return k.l; }), close: c.map(function (k) { return k.c; }),
        increasing: { line: { color: "#26a69a" } }, decreasing: { line: { color: "#ef5350" } }, xaxis: "x", yaxis: "y" },
      { type: "bar", name: "volume", x: x, y: c.map(function (k) { return k.v; }), yaxis: "y2", xaxis: "x",
        marker: { color: c.map(function (k) { return k.imputed ? "#ffb300" : (k.c >= k.o ? "rgba(38,166,154,.5)" : "rgba(239,83,80,.5)"); }) } },
    ];
    var imputed = c.filter(function (k) { return k.imputed; });
    list.push({ type: "scatter", mode: "markers", name: "imputed", x: imputed.map(function (k) { return stamp(k.t); }),
      y: imputed.map(function (k) { return k.h; }), marker: { symbol: "x", size: 9, color: "#ffb300" },
      hovertemplate: "imputed candle<br>%{x}<extra></extra>", yaxis: "y" });
    var palette = ["#f5c542", "#4ea1ff", "#c77dff", "#ff8a65", "#80deea", "#aed581", "#f48fb1"];
    state.overlays.forEach(function (overlay, index) {
      list.push({ type: "scatter", mode: "lines", name: overlay.name + " (" + overlay.rule + ")", x: x,
        y: overlay.values.slice(-c.length), line: { width: 1.3, color: palette[index % palette.length] },
        yaxis: overlay.panel === "price" ? "y" : "y3",
        connectgaps: false });
    });
    ["enter", "exit"].forEach(function (action) {
      var points = state.signals.filter(function (s) { return s.action === action; }).map(function (s) {
        var candle = candleAt(s.t - tfMs);
        return candle ? { x: stamp(candle.t), y: action === "enter" ? candle.l : candle.h, rule: s.rule } : null;
      }).filter(Boolean);
      list.push({ type: "scatter", mode: "markers", name: action + " signals", x: points.map(function (p) { return p.x; }),
        y: points.map(function (p) { return p.y; }), text: points.map(function (p) { return p.rule; }),
        marker: { symbol: action === "enter" ? "triangle-up" : "triangle-down", size: 12,
          color: action === "enter" ? "#26a69a" : "#ef5350", line: { color: "#fff", width: 1 } },
        hovertemplate: action + " %{text}<br>%{x}<extra></extra>", yaxis: "y" });
    });
    var orders = state.orders;
    list.push({ type: "scatter", mode: "markers", name: "orders", x: orders.map(function (o) { return stamp(o.t); }),
      y: orders.map(function (o) { return o.price; }),
      text: orders.map(function (o) { return o.side + " " + o.quantity + " · " + o.status + " · " + o.mode; }),
      marker: { symbol: "circle", size: 9, color: orders.map(function (o) { return o.side === "buy" ? "#4ea1ff" : "#ff8a65"; }),
        line: { color: "#fff", width: 1 } }, hovertemplate: "%{text}<br>%{y}<extra></extra>", yaxis: "y" });
    return { list: list, hasOscillator: hasOscillator };
  }

  function layout(hasOscillator) {
    return {
      paper_bgcolor: "#161d25", plot_bgcolor: "#161d25", font: { color: "#d8dee6" }, showlegend: true,
      legend: { orientation: "h", y: 1.02, x: 0 }, margin: { l: 60, r: 20, t: 30, b: 30 }, uirevision: "keep",
      xaxis: { type: "date", rangeslider: { visible: false }, gridcolor: "#26313d", anchor: hasOscillator ? "y3" : "y2" },
      yaxis: { domain: hasOscillator ? [0.42, 1] : [0.25, 1], gridcolor: "#26313d", title: { text: state.symbol } },
      yaxis2: { domain: hasOscillator ? [0.24, 0.4] : [0, 0.22], gridcolor: "#26313d", title: { text: "volume" } },
      yaxis3: { domain: [0, 0.22], gridcolor: "#26313d", visible: hasOscillator, title: { text: "oscillators" } },
    };
  }

  function draw() {
    var built = traces();
    document.getElementById("chart-empty").hidden = state.candles.length > 0;
    var last = state.candles[state.candles.length - 1];
    document.getElementById("last-close").textContent = last ? "last close " + last.c + " · " + stamp(last.t + tfMs) + " UTC" : "";
    return Plotly.react(element, built.list, layout(built.hasOscillator), { responsive: true, displaylogo: false }).then(function () {
      element.dataset.candles = String(state.candles.length);
      element.dataset.lastCandle = last ? String(last.t) : "";
      element.dataset.imputed = String(state.candles.filter(function (k) { return k.imputed; }).length);
      element.dataset.overlays = String(state.overlays.length);
    });
  }

  function addCandle(event) {
    var candle = { t: event.t, o: event.o, h: event.h, l: event.l, c: event.c, v: event.v, imputed: event.imputed };
    var candles = state.candles;
    var last = candles[candles.length - 1];
    if (!last || candle.t > last.t) {
      candles.push(candle);
      state.overlays.forEach(function (overlay) { overlay.values.push(null); });
      if (candles.length > MAX_CANDLES) {
        candles.shift();
        state.overlays.forEach(function (overlay) { overlay.values.shift(); });
      }
    } else {
      for (var i = candles.length - 1; i >= 0; i--) {
        if (candles[i].t === candle.t) { candles[i] = candle; break; }
      }
    }
    var received = Date.now();
    return draw().then(function () {
      window.oasisChart.updates.push({ t: candle.t, committed_at_ms: event.committed_at_ms, received_ms: received, drawn_ms: Date.now() });
    });
  }

  var pending = null;
  function refetch() {
    if (pending) clearTimeout(pending);
    pending = setTimeout(function () {
      pending = null;
      Oasis.fetchJSON("chart.json?tf=" + encodeURIComponent(state.timeframe)).then(function (fresh) {
        // Keep candles that arrived after the fetch was answered.
        var newest = fresh.candles.length ? fresh.candles[fresh.candles.length - 1].t : 0;
        var later = state.candles.filter(function (k) { return k.t > newest; });
        state = fresh;
        later.forEach(function (k) { state.candles.push(k); state.overlays.forEach(function (o) { o.values.push(null); }); });
        return draw();
      }).catch(function (error) { console.warn(error); });
    }, 400);
  }

  draw();
  var topic = "candles." + state.symbol + "." + state.timeframe;
  Oasis.live([topic, "signals", "orders"], function (event) {
    if (event.topic === topic && event.type === "candle.update") {
      addCandle(event).then(refetch);
    } else if (event.type === "signals.new") {
      if (event.signals.some(function (s) { return s.symbol_id === state.symbol_id && s.timeframe === state.timeframe; })) refetch();
    } else if (event.type === "order.update") {
      if (event.order.symbol === state.symbol) refetch();
    }
  }, refetch);
})();

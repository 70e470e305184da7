/* Symbol page: candlesticks with volume, the active rules' indicators, signals and orders as
 * markers, imputed candles marked. A closed candle arrives on candles.<symbol>.<tf> and is drawn
 * at once; the indicators, signals and orders it leads to are refetched right after. */
(function () {
  "use strict";
  var MAX_CANDLES = 300;
  var element = document.getElementById("chart");
  var lowerElement = document.getElementById("chart-lower");
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
    var price = [
      { type: "candlestick", name: state.symbol, x: x, open: c.map(function (k) { return k.o; }),
        high: c.map(function (k) { return k.h; }), low: c.map(function (k) { return k.l; }), close: c.map(function (k) { return k.c; }),
        increasing: { line: { color: "#26a69a" } }, decreasing: { line: { color: "#ef5350" } } },
    ];
    var lower = [
      { type: "bar", name: "volume", x: x, y: c.map(function (k) { return k.v; }), yaxis: "y",
        marker: { color: c.map(function (k) { return k.imputed ? "#ffb300" : (k.c >= k.o ? "rgba(38,166,154,.5)" : "rgba(239,83,80,.5)"); }) } },
    ];
    var imputed = c.filter(function (k) { return k.imputed; });
    price.push({ type: "scatter", mode: "markers", name: "imputed", x: imputed.map(function (k) { return stamp(k.t); }),
      y: imputed.map(function (k) { return k.h; }), marker: { symbol: "x", size: 9, color: "#ffb300" },
      hovertemplate: "imputed candle<br>%{x}<extra></extra>" });
    var palette = ["#f5c542", "#4ea1ff", "#c77dff", "#ff8a65", "#80deea", "#aed581", "#f48fb1"];
    state.overlays.forEach(function (overlay, index) {
      var line = { type: "scatter", mode: "lines", name: overlay.name + " (" + overlay.rule + ")", x: x,
        y: overlay.values.slice(-c.length), line: { width: 1.3, color: palette[index % palette.length] }, connectgaps: false };
      if (overlay.panel === "price") { price.push(line); } else { line.yaxis = "y2"; lower.push(line); }
    });
    ["enter", "exit"].forEach(function (action) {
      var points = state.signals.filter(function (s) { return s.action === action; }).map(function (s) {
        var candle = candleAt(s.t - tfMs);
        return candle ? { x: stamp(candle.t), y: action === "enter" ? candle.l : candle.h, rule: s.rule } : null;
      }).filter(Boolean);
      price.push({ type: "scatter", mode: "markers", name: action + " signals", x: points.map(function (p) { return p.x; }),
        y: points.map(function (p) { return p.y; }), text: points.map(function (p) { return p.rule; }),
        marker: { symbol: action === "enter" ? "triangle-up" : "triangle-down", size: 12,
          color: action === "enter" ? "#26a69a" : "#ef5350", line: { color: "#fff", width: 1 } },
        hovertemplate: action + " %{text}<br>%{x}<extra></extra>" });
    });
    var orders = state.orders;
    price.push({ type: "scatter", mode: "markers", name: "orders", x: orders.map(function (o) { return stamp(o.t); }),
      y: orders.map(function (o) { return o.price; }),
      text: orders.map(function (o) { return o.side + " " + o.quantity + " · " + o.status + " · " + o.mode; }),
      marker: { symbol: "circle", size: 9, color: orders.map(function (o) { return o.side === "buy" ? "#4ea1ff" : "#ff8a65"; }),
        line: { color: "#fff", width: 1 } }, hovertemplate: "%{text}<br>%{y}<extra></extra>" });
    return { price: price, lower: lower, hasOscillator: lower.length > 1 };
  }

  var BASE = { paper_bgcolor: "#161d25", plot_bgcolor: "#161d25", font: { color: "#d8dee6" }, uirevision: "keep" };

  /* The price chart is its own plot (one axis: the cheapest redraw, so a closed candle shows
   * fastest); volume and oscillators are a second plot below it, drawn right after, their
   * time axes kept together. */
  function priceLayout() {
    return Object.assign({}, BASE, {
      showlegend: true, legend: { orientation: "h", y: 1.06, x: 0 }, margin: { l: 60, r: 20, t: 30, b: 20 },
      xaxis: { type: "date", rangeslider: { visible: false }, gridcolor: "#26313d" },
      yaxis: { gridcolor: "#26313d", title: { text: state.symbol } },
    });
  }

  function lowerLayout(hasOscillator) {
    return Object.assign({}, BASE, {
      showlegend: hasOscillator, legend: { orientation: "h", y: 1.1, x: 0 }, margin: { l: 60, r: 20, t: 10, b: 30 },
      xaxis: { type: "date", gridcolor: "#26313d", anchor: hasOscillator ? "y2" : "y" },
      yaxis: { domain: hasOscillator ? [0.55, 1] : [0, 1], gridcolor: "#26313d", title: { text: "volume" } },
      yaxis2: { domain: [0, 0.45], gridcolor: "#26313d", visible: hasOscillator, title: { text: "oscillators" } },
    });
  }

  function draw() {
    var built = traces();
    document.getElementById("chart-empty").hidden = state.candles.length > 0;
    var last = state.candles[state.candles.length - 1];
    document.getElementById("last-close").textContent = last ? "last close " + last.c + " · " + stamp(last.t + tfMs) + " UTC" : "";
    var drawn = Plotly.react(element, built.price, priceLayout(), { responsive: true, displaylogo: false }).then(function () {
      element.dataset.candles = String(state.candles.length);
      element.dataset.lastCandle = last ? String(last.t) : "";
      element.dataset.imputed = String(state.candles.filter(function (k) { return k.imputed; }).length);
      element.dataset.overlays = String(state.overlays.length);
    });
    drawn.then(function () {
      return Plotly.react(lowerElement, built.lower, lowerLayout(built.hasOscillator), { responsive: true, displaylogo: false });
    }).then(bindAxes);
    return drawn;
  }

  var axesBound = false;
  function bindAxes() {
    if (axesBound) return;
    axesBound = true;
    var syncing = false;
    function follow(source, target) {
      source.on("plotly_relayout", function (change) {
        if (syncing) return;
        var update = {};
        if (change["xaxis.range[0]"] !== undefined) {
          update["xaxis.range"] = [change["xaxis.range[0]"], change["xaxis.range[1]"]];
        } else if (change["xaxis.autorange"]) {
          update["xaxis.autorange"] = true;
        } else {
          return;
        }
        syncing = true;
        Plotly.relayout(target, update).then(function () { syncing = false; });
      });
    }
    follow(element, lowerElement);
    follow(lowerElement, element);
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

/* Oasis live feed: one WebSocket to /ws/live/, topics subscribed, events dispatched, and
 * reconnection with backoff after a drop (each page refetches what it may have missed). */
(function () {
  "use strict";

  function Live(topics, onEvent, onReconnect) {
    this.topics = topics.slice();
    this.onEvent = onEvent;
    this.onReconnect = onReconnect || function () {};
    this.delay = 500;
    this.opened = 0;
    this.connect();
  }

  Live.prototype.status = function (state, text) {
    document.body.dataset.live = state;
    var label = document.getElementById("live-status");
    if (label) label.textContent = text;
  };

  Live.prototype.connect = function () {
    var self = this;
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    var socket = new WebSocket(scheme + location.host + "/ws/live/");
    this.socket = socket;
    socket.onopen = function () {
      self.delay = 500;
      self.status("connected", "live");
      socket.send(JSON.stringify({ type: "subscribe", topics: self.topics }));
      self.opened += 1;
      if (self.opened > 1) self.onReconnect();
    };
    socket.onmessage = function (message) {
      var event;
      try { event = JSON.parse(message.data); } catch (error) { return; }
      if (event.type === "error") { console.warn("live feed:", event.error); return; }
      if (event.type === "closing") { console.warn("live feed closed:", event.reason); return; }
      if (event.type === "killswitch.update") Oasis.killswitch(event);
      if (event.topic) self.onEvent(event);
    };
    socket.onclose = function (close) {
      var wait = self.delay;
      if (close.code === 4401) {
        self.status("reconnecting", "live feed: login required");
        wait = 30000;
      } else if (close.code === 4503) {
        // The server is draining for a restart: come back soon, spread over a second so a
        // whole desk does not reconnect in the same instant.
        self.status("reconnecting", "server restarting: reconnecting…");
        wait = 250 + Math.floor(Math.random() * 1000);
      } else {
        self.status("reconnecting", "reconnecting…" + (close.reason ? " (" + close.reason + ")" : ""));
      }
      self.delay = Math.min(self.delay * 2, 8000);
      setTimeout(function () { self.connect(); }, wait);
    };
  };

  function text(value) { return value === null || value === undefined ? "" : String(value); }

  window.Oasis = {
    live: function (topics, onEvent, onReconnect) {
      return new Live(["killswitch"].concat(topics), onEvent, onReconnect);
    },
    data: function (id) { return JSON.parse(document.getElementById(id).textContent); },
    fetchJSON: function (url) {
      return fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" }).then(function (r) {
        if (!r.ok) throw new Error(url + " answered " + r.status);
        return r.json();
      });
    },
    text: text,
    time: function (iso) { return iso ? iso.replace("T", " ").replace(/\.\d+/, "").replace("+00:00", "Z") : ""; },
    /* Rebuild a table body from rows: each row is a list of [text, className]. */
    fillTable: function (tableId, rows) {
      var body = document.querySelector("#" + tableId + " tbody");
      if (!rows.length) {
        var columns = document.querySelectorAll("#" + tableId + " thead th").length;
        body.innerHTML = '<tr class="empty"><td class="muted" colspan="' + columns + '">none</td></tr>';
        return;
      }
      var html = rows.map(function (row) {
        return "<tr" + (row.className ? ' class="' + row.className + '"' : "") + ">" + row.cells.map(function (cell) {
          var value = Array.isArray(cell) ? cell : [cell, ""];
          var span = document.createElement("span");
          span.textContent = text(value[0]);
          return "<td" + (value[1] ? ' class="' + value[1] + '"' : "") + ">" + span.innerHTML + "</td>";
        }).join("") + "</tr>";
      }).join("");
      body.innerHTML = html;
    },
    killswitch: function (state) {
      var banner = document.getElementById("killswitch-banner");
      if (!banner || !state) return;
      if (state.state === "active") { banner.hidden = true; banner.dataset.state = "active"; return; }
      banner.hidden = false;
      banner.dataset.state = state.state;
      banner.className = "banner " + state.state;
      banner.textContent = "Kill switch " + state.state.toUpperCase().replace("_", " ") +
        (state.reason ? ": " + state.reason : "") + (state.tripwire ? " (tripwire " + state.tripwire + ")" : "") +
        (state.by ? " · by " + state.by : "") + (state.since ? " · since " + Oasis.time(state.since) : "");
    },
  };

  document.addEventListener("DOMContentLoaded", function () {
    var initial = document.getElementById("killswitch-data");
    if (initial) Oasis.killswitch(JSON.parse(initial.textContent));
  });
})();

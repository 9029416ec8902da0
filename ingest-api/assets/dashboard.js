// Keel's live page: polls /dashboard/data, charts it with uPlot, lists the latest sagas.
// The page writes what it draws into data-* attributes (data-points, data-nonzero on each chart;
// totals on #summary; data-rows on #sagas) so a headless browser can check the charts have data.
(function () {
  "use strict";
  var POLL_MS = 2000;
  var charts = {};
  var polls = 0;

  function el(id) { return document.getElementById(id); }

  // Per-interval increase of a cumulative counter: null for the first sample.
  function deltas(samples, pick) {
    return samples.map(function (s, i) {
      if (i === 0) return null;
      return Math.max(0, pick(s) - pick(samples[i - 1]));
    });
  }

  function sumGroups(sample, connect) {
    var total = 0;
    Object.keys(sample.groupLag || {}).forEach(function (g) {
      if ((g.indexOf("connect-") === 0) === connect) total += sample.groupLag[g];
    });
    return total;
  }

  function width(node) {
    return Math.max(320, (node.parentNode.clientWidth || 600) - 28);
  }

  // Creates the chart on first use, then only swaps its data; records what it shows.
  function draw(id, series, data, scales, axes) {
    var node = el(id);
    if (!charts[id]) {
      var opts = {
        width: width(node),
        height: 220,
        scales: Object.assign({ x: { time: true } }, scales || {}),
        series: [{}].concat(series),
        axes: axes || [{}, {}],
        legend: { live: false },
      };
      charts[id] = new uPlot(opts, data, node);
    } else {
      charts[id].setData(data);
    }
    var points = data[0].length;
    var nonzero = 0;
    for (var i = 0; i < points; i++) {
      for (var s = 1; s < data.length; s++) {
        if (data[s][i] != null && data[s][i] > 0) { nonzero++; break; }
      }
    }
    node.setAttribute("data-points", String(points));
    node.setAttribute("data-nonzero", String(nonzero));
  }

  function sum(values) {
    return values.reduce(function (a, v) { return a + (v || 0); }, 0);
  }

  function fmt(n, digits) {
    return n == null || isNaN(n) ? "–" : n.toFixed(digits || 0);
  }

  function render(d) {
    var samples = d.samples || [];
    if (samples.length === 0) return;
    var x = samples.map(function (s) { return s.at / 1000; });
    var placed = deltas(samples, function (s) { return s.ordersPlaced; });
    var confirmed = deltas(samples, function (s) { return s.ordersConfirmed; });
    var cancelled = deltas(samples, function (s) {
      return s.ordersCancelled + s.ordersRejected;
    });
    draw("chart-flow", [
      { label: "placed", stroke: "#3366cc", width: 2 },
      { label: "confirmed", stroke: "#2e9e4f", width: 2 },
      { label: "cancelled / rejected", stroke: "#d2372c", width: 2 },
    ], [x, placed, confirmed, cancelled]);

    var count = deltas(samples, function (s) { return s.authorizeCount; });
    var secs = deltas(samples, function (s) { return s.authorizeSeconds; });
    var latency = count.map(function (c, i) {
      return c ? (secs[i] / c) * 1000 : null;
    });
    var failure = samples.map(function (s) { return s.paymentFailureRate * 100; });
    draw("chart-payment", [
      { label: "mean authorize latency (ms)", stroke: "#7a3fc6", width: 2, scale: "ms", spanGaps: true },
      { label: "failure rate (%)", stroke: "#d2372c", width: 1, scale: "%" },
    ], [x, latency, failure], { "%": { range: [0, 100] } },
    [{}, { scale: "ms" }, { scale: "%", side: 1, grid: { show: false } }]);

    draw("chart-holds", [
      { label: "holds active", stroke: "#c77c02", width: 2, fill: "rgba(199,124,2,.12)" },
    ], [x, samples.map(function (s) { return s.holdsActive; })]);

    draw("chart-lag", [
      { label: "Keel groups", stroke: "#3366cc", width: 2 },
      { label: "Connect groups", stroke: "#8a91a3", width: 2 },
      { label: "stream apps (runtime view)", stroke: "#2e9e4f", width: 1 },
    ], [
      x,
      samples.map(function (s) { return sumGroups(s, false); }),
      samples.map(function (s) { return sumGroups(s, true); }),
      samples.map(function (s) { return s.streamLag; }),
    ]);

    var last = samples[samples.length - 1];
    var totalPlaced = sum(placed), totalConfirmed = sum(confirmed), totalCancelled = sum(cancelled);
    var allCount = last.authorizeCount, allSecs = last.authorizeSeconds;
    el("fig-placed").textContent = fmt(last.ordersPlaced);
    el("fig-confirmed").textContent = fmt(last.ordersConfirmed);
    el("fig-cancelled").textContent = fmt(last.ordersCancelled + last.ordersRejected);
    el("fig-latency").textContent = allCount ? fmt(allSecs / allCount * 1000, 1) : "–";
    el("fig-failure").textContent = fmt(last.paymentFailureRate * 100, 1) + " %";
    el("fig-holds").textContent = fmt(last.holdsActive);
    el("fig-lag").textContent = fmt(sumGroups(last, false) + sumGroups(last, true));
    var summary = el("summary");
    summary.setAttribute("data-samples", String(samples.length));
    summary.setAttribute("data-placed", String(totalPlaced));
    summary.setAttribute("data-confirmed", String(totalConfirmed));
    summary.setAttribute("data-cancelled", String(totalCancelled));
    summary.setAttribute("data-polls", String(polls));

    var lagBody = el("lag-groups").tBodies[0];
    lagBody.textContent = "";
    Object.keys(last.groupLag || {}).sort().forEach(function (g) {
      var tr = document.createElement("tr");
      [g, fmt(last.groupLag[g])].forEach(function (text) {
        var td = document.createElement("td");
        td.textContent = text;
        tr.appendChild(td);
      });
      lagBody.appendChild(tr);
    });
    renderSagas(d.sagas || [], d.sagasError);
  }

  function renderSagas(sagas, error) {
    var table = el("sagas");
    var body = table.tBodies[0];
    body.textContent = "";
    if (sagas.length === 0) {
      var tr = document.createElement("tr");
      var td = document.createElement("td");
      td.colSpan = 5;
      td.className = "empty";
      td.textContent = error ? "order store: " + error : "no orders yet";
      tr.appendChild(td);
      body.appendChild(tr);
    }
    sagas.forEach(function (o) {
      var tr = document.createElement("tr");
      tr.setAttribute("data-order", o.orderId);
      tr.setAttribute("data-status", o.status);
      var id = document.createElement("td");
      id.textContent = o.orderId;
      var st = document.createElement("td");
      var badge = document.createElement("span");
      badge.className = "st st-" + o.status;
      badge.textContent = o.status;
      st.appendChild(badge);
      var reason = document.createElement("td");
      reason.textContent = o.reason || "";
      var updated = document.createElement("td");
      updated.textContent = o.updatedAt;
      var tl = document.createElement("td");
      tl.className = "tl";
      tl.textContent = (o.timeline || []).map(function (t) {
        return t.time.substring(11, 23) + " " + t.status + (t.reason ? " (" + t.reason + ")" : "");
      }).join(" → ");
      [id, st, reason, updated, tl].forEach(function (td) { tr.appendChild(td); });
      body.appendChild(tr);
    });
    table.setAttribute("data-rows", String(sagas.length));
  }

  function poll() {
    fetch("/dashboard/data", { cache: "no-store" })
      .then(function (r) {
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.json();
      })
      .then(function (d) {
        polls++;
        render(d);
        el("status").textContent = "updated " + new Date().toISOString().substring(11, 19) +
          " UTC, every " + POLL_MS / 1000 + " s";
      })
      .catch(function (e) {
        el("status").textContent = "cannot read /dashboard/data: " + e.message;
      })
      .then(function () { setTimeout(poll, POLL_MS); });
  }

  poll();
})();

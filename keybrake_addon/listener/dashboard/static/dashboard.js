// Keybrake dashboard: charts, local times on hover, and live refresh of each page's live part.
// No framework and no build step; uPlot (uPlot.iife.min.js, MIT) draws the charts.
(function () {
  "use strict";

  var REFRESH_MS = Number(document.body.dataset.refreshMs) || 10000;
  var COLORS = ["#0f172a", "#4f46e5", "#e11d48", "#0891b2", "#65a30d", "#9333ea"];

  function dollars(value) {
    if (value == null) return "—";
    var digits = Math.abs(value) < 0.01 && value !== 0 ? 4 : 2;
    return "$" + value.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
  }

  function offsetText() {
    var minutes = -new Date().getTimezoneOffset();
    var sign = minutes >= 0 ? "+" : "-";
    var abs = Math.abs(minutes);
    var hh = String(Math.floor(abs / 60)).padStart(2, "0");
    var mm = String(abs % 60).padStart(2, "0");
    return "UTC" + sign + hh + ":" + mm;
  }

  // Times are shown in UTC; the footer says the viewer's offset and each time shows local on hover.
  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      var at = new Date(el.getAttribute("datetime"));
      if (!isNaN(at)) el.title = at.toLocaleString() + " your time (" + offsetText() + ")";
    });
  }

  var VENDOR_COLORS = { stripe: "#4f46e5", twilio: "#e11d48", resend: "#0f172a" };
  var MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

  function vendorColor(name, i) { return VENDOR_COLORS[name] || COLORS[(i + 3) % COLORS.length]; }

  function two(n) { return String(n).padStart(2, "0"); }

  // Axis labels in UTC, 24-hour: a date at midnight, the time otherwise, with seconds when the
  // ticks are less than a minute apart (a run a few seconds old).
  function utcTick(ts, step) {
    var d = new Date(ts * 1000);
    if (d.getUTCHours() === 0 && d.getUTCMinutes() === 0 && d.getUTCSeconds() === 0) {
      return MONTHS[d.getUTCMonth()] + " " + d.getUTCDate();
    }
    var text = two(d.getUTCHours()) + ":" + two(d.getUTCMinutes());
    return step < 60 ? text + ":" + two(d.getUTCSeconds()) : text;
  }

  // Hourly spend: each vendor's bars stacked on the ones before it. uPlot draws series in order,
  // so the tallest stack (every vendor) goes first and each shorter one paints over it.
  function hourlyChart(data, width) {
    var stacks = [], running = data.x.map(function () { return 0; });
    data.series.forEach(function (s) {
      running = running.map(function (v, j) { return v + s.values[j]; });
      stacks.push(running.slice());
    });
    var order = data.series.map(function (s, i) { return i; }).reverse();
    // Away from the chart the legend says each vendor's week; over an hour, that hour's spend.
    var series = [{ label: "Hour", value: function (u, ts) { return ts == null ? "last 7 days" : utcLabel(ts, true); } }];
    order.forEach(function (i) {
      var color = vendorColor(data.series[i].label, i);
      var week = data.series[i].values.reduce(function (sum, v) { return sum + v; }, 0);
      series.push({
        label: data.series[i].label, stroke: color, fill: color, width: 0,
        // Each bar fills its hour, from the hour's start: the current hour's bar ends at the right edge.
        paths: uPlot.paths.bars({ size: [0.86, 40], align: 1 }), points: { show: false },
        value: function (u, v, si, idx) { return dollars(idx == null ? week : data.series[i].values[idx]); }
      });
    });
    var columns = [data.x].concat(order.map(function (i) { return stacks[i]; }));
    var top = Math.max.apply(null, stacks.length ? stacks[stacks.length - 1] : [0]);
    var options = baseOptions(width, 260, series, top, null);
    options.scales.x.range = function (u, min, max) { return [min, max + 3600]; };
    return { options: options, columns: columns };
  }

  // Cumulative spend of a key or a run, as steps, with its cap as a dashed line.
  function cumulativeChart(data, width) {
    var values = data.series[0].values;
    var last = values.length ? values[values.length - 1] : 0;
    // Away from the chart the legend says the spend so far; over it, the spend at that moment.
    var series = [{ label: "Time", value: function (u, ts) { return ts == null ? "now" : utcLabel(ts, false); } },
      { label: "spent", stroke: "#e4572e", width: 2, fill: "rgba(228,87,46,0.10)",
        paths: uPlot.paths.stepped({ align: 1 }), points: { show: false },
        value: function (u, v) { return dollars(v == null ? last : v); } }];
    var top = Math.max(values.length ? values[values.length - 1] : 0, data.cap || 0);
    var options = baseOptions(width, 240, series, top, data.cap);
    // At least a minute wide: a run a few seconds old would get ticks a fraction of a second apart.
    options.scales.x.range = function (u, min, max) { return [min, Math.max(max, min + 60)]; };
    return { options: options, columns: [data.x, values] };
  }

  function baseOptions(width, height, series, top, cap) {
    var opts = {
      width: width, height: height, series: series, legend: { show: true },
      // Ticks fall on UTC hours and days, whatever the viewer's own time zone.
      tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"); },
      cursor: { points: { size: 6 }, drag: { x: false, y: false } },
      scales: { x: { time: true }, y: { range: function () { return [0, niceMax(top)]; } } },
      axes: [
        { stroke: "#6b7280", grid: { stroke: "#f0f1f4" }, ticks: { stroke: "#e5e7eb" }, space: 60,
          values: function (u, splits) {
            var step = splits.length > 1 ? splits[1] - splits[0] : 3600;
            return splits.map(function (ts) { return utcTick(ts, step); });
          } },
        { stroke: "#6b7280", grid: { stroke: "#f0f1f4" }, ticks: { stroke: "#e5e7eb" }, size: 70,
          values: function (u, vals) { return vals.map(function (v) { return dollars(v); }); } }
      ]
    };
    if (cap != null) opts.hooks = { draw: [function (u) { capLine(u, cap); }] };
    return opts;
  }

  function niceMax(value) {
    if (!value || value <= 0) return 1;
    var power = Math.pow(10, Math.floor(Math.log10(value)));
    var steps = [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10];
    for (var i = 0; i < steps.length; i++) if (steps[i] * power >= value * 1.08) return steps[i] * power;
    return 10 * power;
  }

  function capLine(u, cap) {
    var ctx = u.ctx, y = Math.round(u.valToPos(cap, "y", true));
    ctx.save();
    ctx.strokeStyle = "#dc2626";
    ctx.setLineDash([6, 4]);
    ctx.lineWidth = 1.5 * devicePixelRatio;
    ctx.beginPath();
    ctx.moveTo(u.bbox.left, y);
    ctx.lineTo(u.bbox.left + u.bbox.width, y);
    ctx.stroke();
    ctx.setLineDash([]);
    ctx.fillStyle = "#dc2626";
    ctx.font = (11 * devicePixelRatio) + "px system-ui, sans-serif";
    ctx.textAlign = "right";
    ctx.fillText("cap " + dollars(cap), u.bbox.left + u.bbox.width - 4 * devicePixelRatio, y - 5 * devicePixelRatio);
    ctx.restore();
  }

  function utcLabel(ts, hourly) {
    var iso = new Date(ts * 1000).toISOString();
    return iso.slice(0, 10) + " " + iso.slice(11, hourly ? 13 : 16) + (hourly ? ":00" : "") + " UTC";
  }

  function drawCharts(root) {
    if (typeof uPlot === "undefined") return;
    root.querySelectorAll("[data-chart]").forEach(function (box) {
      var source = box.querySelector('script[type="application/json"]');
      if (!source) return;
      var data = JSON.parse(source.textContent);
      var width = Math.max(box.clientWidth, 280);
      var chart = data.kind === "hourly" ? hourlyChart(data, width) : cumulativeChart(data, width);
      var plot = new uPlot(chart.options, chart.columns, box);
      box._plot = plot;
      if (window.ResizeObserver) {
        new ResizeObserver(function () {
          var w = Math.max(box.clientWidth, 280);
          if (Math.abs(w - plot.width) > 2) plot.setSize({ width: w, height: plot.height });
        }).observe(box);
      }
    });
  }

  function destroyCharts(root) {
    root.querySelectorAll("[data-chart]").forEach(function (box) { if (box._plot) box._plot.destroy(); });
  }

  // Live: the server renders the same live part for ?fragment=live; swap it in place.
  function liveUrl() {
    var url = new URL(window.location.href);
    url.searchParams.set("fragment", "live");
    url.searchParams.delete("done");
    url.searchParams.delete("count");
    return url.toString();
  }

  function refresh(part) {
    if (document.hidden) return;
    if (part.contains(document.activeElement) && document.activeElement !== document.body) return;
    if (part.querySelector("details[open]")) return;  // a confirmation is open: leave it alone
    var status = document.getElementById("live-status");
    fetch(liveUrl(), { credentials: "same-origin", headers: { "X-Requested-With": "keybrake-dashboard" } })
      .then(function (response) {
        if (response.status === 401) {
          window.location.href = window.location.pathname.replace(/\/ui\/.*$/, "/ui/login") + "?notice=expired";
          return null;
        }
        if (!response.ok) throw new Error("status " + response.status);
        return response.text();
      })
      .then(function (html) {
        if (html == null) return;
        destroyCharts(part);
        part.innerHTML = html;
        localTimes(part);
        drawCharts(part);
        if (status) { status.classList.remove("stale"); status.textContent = "Live"; }
      })
      .catch(function () {
        if (status) { status.classList.add("stale"); status.textContent = "Reconnecting"; }
      });
  }

  function start() {
    var note = document.querySelector("[data-tz-note]");
    if (note) note.textContent = " (you are at " + offsetText() + ")";
    localTimes(document);
    drawCharts(document);
    document.querySelectorAll("[data-live]").forEach(function (part) {
      setInterval(function () { refresh(part); }, REFRESH_MS);
    });
    // Close any other open confirmation when one opens.
    document.querySelectorAll("details.danger-zone").forEach(function (d) {
      d.addEventListener("toggle", function () {
        if (!d.open) return;
        document.querySelectorAll("details.danger-zone[open]").forEach(function (other) { if (other !== d) other.open = false; });
      });
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();

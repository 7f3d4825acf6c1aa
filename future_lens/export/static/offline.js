/* Future Lens offline file: what it needs beyond the page's own script (static/lens.js, inlined before this, which
 * draws the popovers). The file's columns may be a selection, so the popover names a column's token position; and
 * the page's Track (which asks the server) becomes a trajectory read from the stored top-k, drawn in the popover.
 * Nothing is fetched. Token text is only written with textContent. */
(function () {
  "use strict";

  var island = document.getElementById("grid-data");
  var data = JSON.parse((island.content || island).textContent);
  var lens = window.FutureLens;  /* lens.js's helpers: el, marked, percent */
  var SVG = "http://www.w3.org/2000/svg";
  /* The chart's y axis ends at the first of these at or above the highest value drawn (as future_lens/export/trajectory.py). */
  var AXIS_TOPS = [0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0];

  function el(tag, className, text) { return lens.el(tag, className, text); }

  function tokenSpan(text) {
    var span = el("span", "tk-inline");
    span.appendChild(lens.marked(text, data.marks));
    return span;
  }

  function svg(tag, attrs, parent) {
    var node = document.createElementNS(SVG, tag);
    Object.keys(attrs).forEach(function (name) { node.setAttribute(name, String(attrs[name])); });
    if (parent) parent.appendChild(node);
    return node;
  }

  function svgTitle(node, text) { svg("title", {}, node).textContent = text; }

  /* ---------- the token's position in the popover title ---------- */

  function namePosition(popover, c) {
    var title = popover.querySelector("h3");
    var text = title && title.firstChild;
    if (text && text.nodeType === 3) text.textContent = text.textContent.replace(/after token \d+ $/, "after token " + data.positions[c] + " ");
  }

  /* ---------- the trajectory, from the stored top-k ---------- */

  function trajectory(r, c, k) {
    /* Per row of the file: the candidate's stored probability there, or null with the cell's smallest listed one. */
    var id = String(data.cells[r][c].ki[k]), listed = {};
    (data.track[c][id] || []).forEach(function (point) { listed[point[0]] = point[1]; });
    return data.layers.map(function (layer, row) {
      var top = data.cells[row][c].k, floor = top.length ? top[top.length - 1][1] : null;
      return { layer: layer, row: row, prob: Object.prototype.hasOwnProperty.call(listed, row) ? listed[row] : null, floor: floor };
    });
  }

  function axisTop(points) {
    var highest = 0;
    points.forEach(function (p) { highest = Math.max(highest, p.prob === null ? (p.floor || 0) : p.prob); });
    for (var i = 0; i < AXIS_TOPS.length; i++) if (AXIS_TOPS[i] >= highest) return AXIS_TOPS[i];
    return 1;
  }

  function below(floor) { var text = lens.percent(floor); return text.charAt(0) === "<" ? text : "< " + text; }

  function shown(p) { return p.prob === null ? (p.floor === null ? "not listed" : below(p.floor)) : lens.percent(p.prob); }

  function chart(points, here, text) {
    var W = 320, H = 132, left = 34, right = 8, top = 8, plotH = 96;
    var step = (W - left - right) / Math.max(1, points.length);
    var yTop = axisTop(points);
    function x(i) { return left + step * (i + 0.5); }
    function y(p) { return top + plotH * (1 - Math.min(p, yTop) / yTop); }
    var root = svg("svg", { "class": "track-chart", viewBox: "0 0 " + W + " " + H, role: "img" });
    svgTitle(root, "Probability of " + text + " as the first predicted token at every layer of this position, " +
      "read from the stored top-k");
    [0, 0.5, 1].forEach(function (level) {
      svg("line", { "class": "rule", x1: left, x2: W - right, y1: y(level * yTop), y2: y(level * yTop) }, root);
      svg("text", { "class": "axis", x: left - 4, y: y(level * yTop) + 3, "text-anchor": "end" }, root).textContent =
        (level ? +(level * yTop * 100).toPrecision(2) : 0) + "%";
    });
    var every = Math.ceil(points.length / 15);
    points.forEach(function (p, i) {
      if (i % every === 0 || i === here) {
        svg("text", { "class": "axis", x: x(i), y: top + plotH + 12, "text-anchor": "middle" }, root).textContent = String(p.layer);
      }
    });
    svg("text", { "class": "axis", x: left - 4, y: top + plotH + 12, "text-anchor": "end" }, root).textContent = "layer";
    var run = [];
    function flush() {
      if (run.length > 1) svg("polyline", { "class": "line", points: run.join(" ") }, root);
      run = [];
    }
    points.forEach(function (p, i) {
      if (p.prob === null) { flush(); return; }
      run.push(x(i).toFixed(1) + "," + y(p.prob).toFixed(1));
    });
    flush();
    points.forEach(function (p, i) {
      var mark;
      if (p.prob !== null) {
        mark = svg("circle", { "class": i === here ? "listed here" : "listed", cx: x(i), cy: y(p.prob), r: i === here ? 3.6 : 2.6 }, root);
      } else if (p.floor !== null) {
        var cx = x(i), cy = y(p.floor);  /* an open triangle pointing down: somewhere below this */
        mark = svg("path", { "class": i === here ? "below here" : "below", d: "M" + (cx - 3.2) + " " + (cy - 2) + "h6.4l-3.2 5.4z" }, root);
      } else {
        return;
      }
      svgTitle(mark, "layer " + p.layer + ": " + shown(p) + (p.prob === null ? " (not in this cell's stored top-k)" : ""));
    });
    return root;
  }

  function showTrack(button, r, c, k) {
    var popover = document.getElementById("popover");
    var old = popover.querySelector(".stored-track");
    if (old) old.remove();
    var candidate = data.cells[r][c].k[k][0], points = trajectory(r, c, k);
    var box = el("div", "stored-track");
    box.setAttribute("aria-live", "polite");
    var head = el("h4", null, "Trajectory of ");
    head.appendChild(tokenSpan(candidate));
    head.appendChild(document.createTextNode(" at position " + data.positions[c]));
    box.appendChild(head);
    box.appendChild(chart(points, r, candidate));
    var list = el("ol", "track-values");
    points.forEach(function (p, row) {
      var item = el("li", (p.prob === null ? "below" : "listed") + (row === r ? " here" : ""));
      item.appendChild(el("span", "at", "L" + p.layer));
      item.appendChild(document.createTextNode(shown(p)));
      list.appendChild(item);
    });
    box.appendChild(list);
    var k1 = data.cells[r][c].k.length;
    box.appendChild(el("p", "track-caption", "Read from the stored top-" + k1 + " of each cell at this position, not " +
      "recomputed: \u201c< p\u201d (open triangles) means the token was not among that cell's listed tokens, so its " +
      "probability was below p, the smallest one listed there. Dots: listed; orange: this cell."));
    popover.appendChild(box);
    popover.classList.add("with-track");
    Array.prototype.forEach.call(popover.querySelectorAll("button.track-token"), function (other) {
      other.setAttribute("aria-pressed", other === button ? "true" : "false");
    });
    keepInView(popover);
  }

  function keepInView(popover) {
    var box = popover.getBoundingClientRect();
    var vw = document.documentElement.clientWidth, vh = document.documentElement.clientHeight;
    if (box.right > vw - 8) popover.style.left = Math.max(8, vw - 8 - box.width) + "px";
    if (box.bottom > vh - 8) popover.style.top = Math.max(8, vh - 8 - box.height) + "px";
  }

  /* ---------- the popover's tools (the page's cells.js adds its server-backed ones the same way) ---------- */

  function addTools(event) {
    var popover = event.target, detail = event.detail, info = data.cells[detail.r][detail.c];
    namePosition(popover, detail.c);
    popover.classList.remove("with-track");
    if (!info.k.length) return;
    var tools = el("div", "cell-tools");
    tools.appendChild(el("h4", null, "Track a candidate through the layers"));
    var list = el("div", "track-list");
    info.k.forEach(function (pair, k) {
      var button = el("button", "track-token");
      button.type = "button";
      button.dataset.k = String(k);
      button.dataset.r = String(detail.r);
      button.dataset.c = String(detail.c);
      button.title = "Track: this token's probability at every layer of this position, from the stored top-k";
      button.appendChild(lens.marked(pair[0], data.marks));
      list.appendChild(button);
    });
    tools.appendChild(list);
    tools.appendChild(el("p", "tools-hint", "Click the cell to use these."));  /* shown only while not pinned */
    popover.appendChild(tools);
  }

  document.addEventListener("lens:popover", addTools);
  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest("#popover button.track-token");
    if (button) showTrack(button, Number(button.dataset.r), Number(button.dataset.c), Number(button.dataset.k));
  });
})();

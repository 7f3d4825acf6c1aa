/* Future Lens compare page: both readings in a DIFF cell's popover, the threshold applied as it is typed (and kept
 * in the URL), synchronised scrolling of the side-by-side panes, and "Copy link" copying the whole view (query and
 * #cell=…). lens.js does the rest (popovers, keyboard, #cell= in the URL). Token text is only written as text. */
(function () {
  "use strict";

  var islands = {};

  function data(pane) {
    if (!islands[pane]) {
      var island = document.getElementById("grid-data-" + pane);
      islands[pane] = island ? JSON.parse((island.content || island).textContent) : null;
    }
    return islands[pane];
  }

  function reading(L, popover, name, grid, r, c) {
    /* One grid's cell: its phrase, the first token's alternatives and statistics. */
    var info = grid && grid.cells[r] && grid.cells[r][c];
    if (!info) return;
    var head = L.el("h4");
    head.appendChild(L.el("span", "badge badge-" + name, name.toUpperCase()));
    head.appendChild(document.createTextNode(" after "));
    var tok = L.el("span", "tk-inline");
    tok.appendChild(L.marked(grid.tokens[c], grid.marks));
    head.appendChild(tok);
    head.appendChild(document.createTextNode(info.t.length > 1 ? " · mean " + L.percent(info.m) : ""));
    popover.appendChild(head);
    popover.appendChild(L.probTable(info.t, grid.marks));
    var alternatives = L.el("details", "alternatives");
    alternatives.appendChild(L.el("summary", null, "Top " + info.k.length + " for the first token"));
    alternatives.appendChild(L.probTable(info.k, grid.marks, grid.next[c][0]));
    popover.appendChild(alternatives);
    if (info.s && info.s[0] !== null && info.s[0] !== undefined) popover.appendChild(L.statsLine(info.s));
  }

  function fillDiff(event) {
    var cell = event.target, L = window.FutureLens;
    if (!cell.classList || !cell.classList.contains("diff-cell") || !L) return;
    event.preventDefault();
    var popover = event.detail.popover, c = Number(cell.dataset.c);
    var layer = cell.closest("tr").querySelector(".layer-num").textContent;
    popover.textContent = "";
    popover.appendChild(L.el("h3", null, "Layer " + layer + " · position " + c));
    if (cell.classList.contains("unmatched")) {
      popover.appendChild(L.el("p", null, "Only " + (data("a").tokens.length > c ? "A" : "B") + " has a token at this position: nothing to compare."));
      return;
    }
    reading(L, popover, "a", data("a"), Number(cell.dataset.ra), c);
    reading(L, popover, "b", data("b"), Number(cell.dataset.rb), c);
    var steps = Number(cell.dataset.steps), dp = Number(cell.dataset.dp);
    var foot = L.el("div", "foot");
    foot.appendChild(L.el("div", null, "First-token probability: B − A = " + (dp >= 0 ? "+" : "−") + Math.abs(dp * 100).toFixed(1) + " points"));
    foot.appendChild(L.el("div", null, steps ? "The phrase differs at " + steps + (steps === 1 ? " step" : " steps") : "Same phrase"));
    popover.appendChild(foot);
  }

  /* ---------- the threshold, applied live ---------- */

  function applyThreshold(input) {
    var t = Number(input.value);
    if (input.value === "" || !(t >= 0 && t <= 1)) return;
    var count = 0;
    document.querySelectorAll("td.diff-cell[data-dp]").forEach(function (cell) {
      var differs = Number(cell.dataset.steps) > 0 || Math.abs(Number(cell.dataset.dp)) > t;
      cell.classList.toggle("differs", differs);
      if (differs) count += 1;
    });
    var out = document.querySelector(".diff-count"), shown = document.querySelector(".diff-threshold");
    if (out) out.textContent = String(count);
    if (shown) shown.textContent = String(Math.round(t * 1000) / 10);
    var url = new URL(window.location.href);
    url.searchParams.set("t", input.value);
    window.history.replaceState(window.history.state, "", url.href);
  }

  /* ---------- side by side: scroll both panes together ---------- */

  function syncScroll() {
    var panes = document.querySelectorAll(".compare-side .grid-scroll");
    if (panes.length !== 2) return;
    var leader = null;
    panes.forEach(function (pane, i) {
      var other = panes[1 - i];
      pane.addEventListener("scroll", function () {
        if (leader && leader !== pane) return;
        leader = pane;
        other.scrollLeft = pane.scrollLeft;
        other.scrollTop = pane.scrollTop;
        window.requestAnimationFrame(function () { leader = null; });
      });
    });
  }

  document.addEventListener("lens:fill", fillDiff);
  document.addEventListener("input", function (event) { if (event.target.id === "threshold") applyThreshold(event.target); });
  document.addEventListener("change", function (event) {
    if (event.target.name === "view" && event.target.form) event.target.form.requestSubmit();
  });
  /* Before lens.js copies: the link is the whole view as it is now (query and #cell=…). */
  document.addEventListener("click", function (event) {
    var copy = event.target.closest && event.target.closest("button.copy[data-current]");
    if (copy) copy.dataset.copy = window.location.href;
  }, true);
  document.addEventListener("DOMContentLoaded", syncScroll);
})();

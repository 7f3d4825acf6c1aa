/* Future Lens offline grid: the page's popover (hover, click to pin, focus and arrow keys, Esc closes).
 * Token text is only ever written with textContent, never as HTML. Nothing is fetched. */
(function () {
  "use strict";

  var island = document.getElementById("grid-data");
  var data = JSON.parse((island.content || island).textContent);
  var popover = document.getElementById("popover");
  var shown = null, pinned = null;

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function marked(text) {
    /* A span with whitespace made visible and control characters escaped, both in the dimmer .ws style. */
    var span = el("span");
    if (text === "") { span.appendChild(el("span", "ws", "∅")); return span; }
    var plain = "";
    function flush() { if (plain) { span.appendChild(document.createTextNode(plain)); plain = ""; } }
    for (var i = 0; i < text.length; i++) {
      var ch = text[i], code = text.charCodeAt(i), mark = null;
      if (Object.prototype.hasOwnProperty.call(data.marks, ch)) mark = data.marks[ch];
      else if (code < 32 || code === 127) mark = "\\x" + (code < 16 ? "0" : "") + code.toString(16);
      if (mark === null) { plain += ch; continue; }
      flush();
      span.appendChild(el("span", "ws", mark));
    }
    flush();
    return span;
  }

  function percent(p) {
    var v = p * 100;
    if (v >= 9.95) return v.toFixed(0) + "%";
    if (v >= 0.05) return v.toFixed(1) + "%";
    return "<0.1%";
  }

  function probTable(rows, nextText) {
    var table = el("table");
    rows.forEach(function (row) {
      var tr = el("tr", nextText !== undefined && row[0] === nextText ? "is-next" : null);
      var tk = el("td", "tk");
      tk.appendChild(marked(row[0]));
      var bar = el("td", "bar"), fill = el("span", "bar-fill");
      fill.style.width = Math.max(1, Math.round(row[1] * 100)) + "%";
      bar.appendChild(fill);
      tr.appendChild(tk);
      tr.appendChild(el("td", "pr", percent(row[1])));
      tr.appendChild(bar);
      table.appendChild(tr);
    });
    return table;
  }

  function fill(cell) {
    var r = Number(cell.dataset.r), c = Number(cell.dataset.c);
    var info = data.cells[r][c], next = data.next[c];
    popover.textContent = "";
    var title = el("h3", null, "Layer " + data.layers[r] + " · after token " + data.positions[c] + " ");
    var tok = el("span", "tk-inline");
    tok.appendChild(marked(data.tokens[c]));
    title.appendChild(tok);
    popover.appendChild(title);
    popover.appendChild(el("h4", null, info.t.length > 1
      ? "Predicted " + info.t.length + " tokens · mean " + percent(info.m) : "Predicted next token"));
    popover.appendChild(probTable(info.t));
    popover.appendChild(el("h4", null, "Top " + info.k.length + " for the first token"));
    popover.appendChild(probTable(info.k, next[0]));
    var foot = el("div", "foot", "Model's actual next token: ");
    var actual = el("span", "tk-inline");
    actual.appendChild(marked(next[0]));
    foot.appendChild(actual);
    foot.appendChild(document.createTextNode(" (" + percent(next[1]) + ")"));
    if (data.prompt_layers && data.prompt_layers[r] !== data.layers[r]) {
      foot.appendChild(el("div", null, "Uses the prompt trained for layer " + data.prompt_layers[r] + "."));
    }
    popover.appendChild(foot);
  }

  function place(cell) {
    var box = cell.getBoundingClientRect();
    popover.style.left = "0px";
    popover.style.top = "0px";
    var pw = popover.offsetWidth, ph = popover.offsetHeight;
    var vw = document.documentElement.clientWidth, vh = document.documentElement.clientHeight;
    var top = box.bottom + 6;
    if (top + ph > vh - 8) top = Math.max(8, box.top - ph - 6);
    popover.style.left = Math.round(Math.min(Math.max(8, box.left), vw - pw - 8)) + "px";
    popover.style.top = Math.round(top) + "px";
  }

  function highlight(cell, on) {
    var row = cell.parentElement.querySelector("th");
    var head = document.querySelector('thead th[data-c="' + cell.dataset.c + '"]');
    if (row) row.classList.toggle("row-active", on);
    if (head) head.classList.toggle("col-active", on);
    cell.classList.toggle("active", on);
  }

  function show(cell) {
    if (shown && shown !== cell) highlight(shown, false);
    shown = cell;
    fill(cell);
    highlight(cell, true);
    popover.hidden = false;
    popover.classList.toggle("pinned", pinned === cell);
    cell.setAttribute("aria-describedby", "popover");
    place(cell);
  }

  function hide(force) {
    if (pinned && !force) return;
    pinned = null;
    popover.hidden = true;
    popover.classList.remove("pinned");
    if (shown) { highlight(shown, false); shown.removeAttribute("aria-describedby"); shown = null; }
  }

  function toggle(cell) {
    if (pinned === cell) { hide(true); return; }
    pinned = cell;
    show(cell);
  }

  function cellAt(r, c) { return document.querySelector('td.cell[data-r="' + r + '"][data-c="' + c + '"]'); }

  function onKey(event, cell) {
    var r = Number(cell.dataset.r), c = Number(cell.dataset.c);
    var moves = { ArrowLeft: [r, c - 1], ArrowRight: [r, c + 1], ArrowUp: [r - 1, c], ArrowDown: [r + 1, c] };
    if (moves[event.key]) {
      var target = cellAt(moves[event.key][0], moves[event.key][1]);
      event.preventDefault();
      if (!target) return;
      pinned = null;
      cell.tabIndex = -1;
      target.tabIndex = 0;
      target.focus();
    } else if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      toggle(cell);
    } else if (event.key === "Escape") {
      hide(true);
    }
  }

  function cellOf(event) { return event.target.closest ? event.target.closest("td.cell") : null; }

  document.addEventListener("mouseover", function (event) {
    var cell = cellOf(event);
    if (cell && !pinned) show(cell);
  });
  document.addEventListener("mouseout", function (event) {
    var cell = cellOf(event);
    if (cell && !pinned && !(event.relatedTarget && cell.contains(event.relatedTarget))) hide(false);
  });
  document.addEventListener("focusin", function (event) {
    var cell = cellOf(event);
    if (!cell) return;
    if (pinned && pinned !== cell) pinned = null;
    show(cell);
  });
  document.addEventListener("focusout", function (event) {
    var cell = cellOf(event);
    if (cell && pinned !== cell) hide(false);
  });
  document.addEventListener("click", function (event) {
    var cell = cellOf(event);
    if (cell) { toggle(cell); return; }
    if (pinned && !popover.contains(event.target)) hide(true);
  });
  document.addEventListener("keydown", function (event) {
    var cell = cellOf(event);
    if (cell) onKey(event, cell);
    else if (event.key === "Escape") hide(true);
  });
  window.addEventListener("resize", function () { if (shown) place(shown); });
  document.addEventListener("scroll", function () { if (shown) place(shown); }, true);
})();

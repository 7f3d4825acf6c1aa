/* Future Lens page behaviour: Ctrl+Enter, progress timer, cell popovers, keyboard moves, copy link.
 * Token text is only ever written with textContent, never as HTML. No inline script is needed anywhere. */
(function () {
  "use strict";

  var popover = null;
  var pinnedCell = null;
  var timer = null;

  function $(selector, root) { return (root || document).querySelector(selector); }

  /* ---------- grid data (JSON text in a <template> rendered with the grid) ---------- */

  function gridData(cell) {
    /* A compare page has one island per pane ([data-pane]); a grid page one, #grid-data. */
    var pane = cell && cell.closest("[data-pane]");
    var island = pane ? pane.querySelector('template[id^="grid-data"]') : document.getElementById("grid-data");
    if (!island) return null;
    if (!island._parsed) { island._parsed = JSON.parse((island.content || island).textContent); learnNames(island._parsed); }
    return island._parsed;
  }

  /* Code point and Unicode name of each marked character other than ordinary whitespace ("U+00A0 NO-BREAK
   * SPACE"), from every grid's data seen (`names`); a character no grid named yet shows its code point alone. */
  var knownNames = {};

  function learnNames(data) {
    if (data && data.names) Object.keys(data.names).forEach(function (ch) { knownNames[ch] = data.names[ch]; });
  }

  var ORDINARY = { " ": true, "\n": true, "\t": true, "\r": true };

  function codePointName(ch) {
    if (Object.prototype.hasOwnProperty.call(knownNames, ch)) return knownNames[ch];
    var hex = ch.codePointAt(0).toString(16).toUpperCase();
    return "U+" + ("0000" + hex).slice(-Math.max(4, hex.length));
  }

  function isMarked(ch, marks) { return Object.prototype.hasOwnProperty.call(marks, ch); }

  function namedChars(text, marks) {
    /* The code points (with names) of the unusual marked characters in `text`, each once, in order. */
    var seen = {}, out = [];
    Array.from(text).forEach(function (ch) {
      if (isMarked(ch, marks) && !ORDINARY[ch] && !seen[ch]) { seen[ch] = true; out.push(codePointName(ch)); }
    });
    return out;
  }

  function marked(text, marks) {
    /* A span with invisible characters made visible (marks: the table future_lens/lens/display.py sends with the grid);
     * the marks get the dimmer .ws style; unusual ones also .odd (boxed) and a title naming them, code-point marks
     * (⟨U+200B⟩) also .cp (smaller). */
    var span = document.createElement("span");
    if (text === "") {
      var empty = document.createElement("span");
      empty.className = "ws";
      empty.textContent = "∅";
      span.appendChild(empty);
      return span;
    }
    var plain = "";
    function flush() { if (plain) { span.appendChild(document.createTextNode(plain)); plain = ""; } }
    Array.from(text).forEach(function (ch) {  /* by code point: tags and other astral format characters too */
      if (!isMarked(ch, marks)) { plain += ch; return; }
      flush();
      var mark = document.createElement("span"), shown = marks[ch];
      mark.className = ORDINARY[ch] ? "ws" : shown.length > 2 && shown[0] === "⟨" ? "ws odd cp" : "ws odd";
      mark.textContent = shown;
      if (!ORDINARY[ch]) mark.title = codePointName(ch);
      span.appendChild(mark);
    });
    flush();
    return span;
  }

  function markedNamed(text, marks) {
    /* The marked text followed by the code points of its unusual characters ("U+00A0 NO-BREAK SPACE"). */
    var span = marked(text, marks), names = namedChars(text, marks);
    if (names.length) span.appendChild(el("span", "cp-name", names.join(", ")));
    return span;
  }

  function percent(p) {
    var v = p * 100;
    if (v >= 9.95) return v.toFixed(0) + "%";
    if (v >= 0.05) return v.toFixed(1) + "%";
    return "<0.1%";
  }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function probTable(rows, marks, nextText) {
    var table = el("table");
    rows.forEach(function (row) {
      var tr = el("tr");
      if (nextText !== undefined && row[0] === nextText) tr.className = "is-next";
      var tk = el("td", "tk");
      tk.appendChild(markedNamed(row[0], marks));
      var pr = el("td", "pr", percent(row[1]));
      var bar = el("td", "bar");
      var fill = el("span", "bar-fill");
      fill.style.width = Math.max(1, Math.round(row[1] * 100)) + "%";
      bar.appendChild(fill);
      tr.appendChild(tk); tr.appendChild(pr); tr.appendChild(bar);
      table.appendChild(tr);
    });
    return table;
  }

  /* ---------- popover ---------- */

  function fillPopover(cell) {
    /* compare.js fills a DIFF cell's popover itself (both readings) and cancels this event. */
    if (!cell.dispatchEvent(new CustomEvent("lens:fill", { bubbles: true, cancelable: true, detail: { popover: popover } }))) return true;
    var data = gridData(cell);
    if (!data) return false;
    var r = Number(cell.dataset.r), c = Number(cell.dataset.c);
    var info = data.cells[r] && data.cells[r][c];
    if (!info) return false;
    var marks = data.marks, next = data.next[c];
    popover.textContent = "";
    var title = el("h3");
    title.appendChild(document.createTextNode("Layer " + data.layers[r] + " · after token " + c + " "));
    var tok = el("span", "tk-inline");
    tok.appendChild(marked(data.tokens[c], marks));
    title.appendChild(tok);
    var titleNames = namedChars(data.tokens[c], marks);
    if (titleNames.length) title.appendChild(el("span", "cp-name", titleNames.join(", ")));
    popover.appendChild(title);

    popover.appendChild(el("h4", null, info.t.length > 1
      ? "Predicted " + info.t.length + " tokens · mean " + percent(info.m)
      : "Predicted next token"));
    popover.appendChild(probTable(info.t, marks));
    popover.appendChild(el("h4", null, "Top " + info.k.length + " for the first token"));
    popover.appendChild(probTable(info.k, marks, next[0]));

    if (info.s && info.s[0] !== null && info.s[0] !== undefined) popover.appendChild(statsLine(info.s));
    var own = data.cont && data.cont[c];
    if (own && info.t.length > 1) popover.appendChild(agreementLine(info.t, own, marks));

    var foot = el("div", "foot");
    foot.appendChild(document.createTextNode("Model's actual next token: "));
    var actual = el("span", "tk-inline");
    actual.appendChild(marked(next[0], marks));
    foot.appendChild(actual);
    foot.appendChild(document.createTextNode(" (" + percent(next[1]) + ")"));
    var nextNames = namedChars(next[0], marks);
    if (nextNames.length) foot.appendChild(el("span", "cp-name", nextNames.join(", ")));
    if (data.prompt_layers && data.prompt_layers[r] !== data.layers[r]) {
      foot.appendChild(el("div", null, "Uses the prompt trained for layer " + data.prompt_layers[r] + "."));
    }
    popover.appendChild(foot);
    /* cells.js adds the cell's tools (track a token, the code behind the cell) on this event. */
    popover.dispatchEvent(new CustomEvent("lens:popover", { bubbles: true, detail: { cell: cell, r: r, c: c } }));
    return true;
  }

  function statsLine(stats) {
    /* [rank of the actual next token, entropy (nats), KL(model ‖ lens) (nats) or null]. */
    var line = el("p", "stats");
    line.appendChild(el("span", "stat", "actual next token ranks #" + stats[0]));
    line.appendChild(el("span", "stat", "entropy " + stats[1].toFixed(2) + " nats"));
    if (stats[2] !== null) {
      var kl = el("span", "stat", "KL(model ‖ lens) " + stats[2].toFixed(2) + " nats");
      kl.title = "KL divergence from the model's own next-token distribution at this position to this cell's first-token distribution";
      line.appendChild(kl);
    }
    return line;
  }

  function agreementLine(tokens, own, marks) {
    /* How many of the cell's N tokens equal the model's own continuation, step by step. */
    var agree = 0, box = el("div", "agreement");
    var row = el("p", "own");
    row.appendChild(document.createTextNode("Model's own continuation: "));
    own.forEach(function (token, step) {
      var same = tokens[step] && tokens[step][0] === token[0];
      if (same) agree += 1;
      var span = el("span", "tk-inline" + (same ? " agree" : ""));
      span.appendChild(marked(token[0], marks));
      row.appendChild(span);
    });
    box.appendChild(el("h4", null, agree + " of " + tokens.length + " tokens agree with the model's own continuation"));
    box.appendChild(row);
    return box;
  }

  function placePopover(cell) {
    var box = cell.getBoundingClientRect();
    popover.style.left = "0px";
    popover.style.top = "0px";
    var pw = popover.offsetWidth, ph = popover.offsetHeight;
    var vw = document.documentElement.clientWidth, vh = document.documentElement.clientHeight;
    var left = Math.min(Math.max(8, box.left), vw - pw - 8);
    var top = box.bottom + 6;
    if (top + ph > vh - 8) top = Math.max(8, box.top - ph - 6);
    popover.style.left = Math.round(left) + "px";
    popover.style.top = Math.round(top) + "px";
  }

  function highlight(cell, on) {
    var table = cell.closest("table");
    var row = cell.parentElement.querySelector("th");
    var head = table.querySelector('thead th[data-c="' + cell.dataset.c + '"]');
    [row, head].forEach(function (node) { if (node) node.classList.toggle(node === row ? "row-active" : "col-active", on); });
    cell.classList.toggle("active", on);
  }

  var shownCell = null;

  function showPopover(cell) {
    if (!popover || !fillPopover(cell)) return;
    if (shownCell && shownCell !== cell) highlight(shownCell, false);
    shownCell = cell;
    highlight(cell, true);
    popover.hidden = false;
    popover.classList.toggle("pinned", pinnedCell === cell);
    cell.setAttribute("aria-describedby", "popover");
    placePopover(cell);
  }

  function hidePopover(force) {
    if (!popover || (pinnedCell && !force)) return;
    if (force) pinnedCell = null;
    popover.hidden = true;
    popover.classList.remove("pinned");
    if (shownCell) {
      highlight(shownCell, false);
      shownCell.removeAttribute("aria-describedby");
      shownCell = null;
    }
  }

  /* ---------- keyboard: a roving tabindex over the cells ---------- */

  function cellAt(table, r, c) {
    return table.querySelector('td.cell[data-r="' + r + '"][data-c="' + c + '"]');
  }

  function focusCell(from, target) {
    if (!target) return;
    from.tabIndex = -1;
    target.tabIndex = 0;
    target.focus();
  }

  function onCellKey(event, cell) {
    var table = cell.closest("table");
    var r = Number(cell.dataset.r), c = Number(cell.dataset.c);
    var rows = table.tBodies[0].rows.length, cols = table.tHead.rows[0].cells.length - 1;
    var moves = {
      ArrowLeft: [r, c - 1], ArrowRight: [r, c + 1], ArrowUp: [r - 1, c], ArrowDown: [r + 1, c],
      Home: event.ctrlKey ? [0, 0] : [r, 0], End: event.ctrlKey ? [rows - 1, cols - 1] : [r, cols - 1],
      PageUp: [Math.max(0, r - 5), c], PageDown: [Math.min(rows - 1, r + 5), c]
    };
    if (moves[event.key]) {
      event.preventDefault();
      if (pinnedCell) pinnedCell = null;
      focusCell(cell, cellAt(table, moves[event.key][0], moves[event.key][1]));
    } else if (event.key === "Escape") {
      hidePopover(true);
    } else if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      togglePin(cell);
    }
  }

  function togglePin(cell) {
    if (pinnedCell === cell) { hidePopover(true); setCellInUrl(null); return; }
    pinnedCell = cell;
    showPopover(cell);
    setCellInUrl(cell);
  }

  /* ---------- state in the URL: #cell=r,c (row index, token position) pins that cell's popover; on a compare
   * page #cell=pane:r,c (pane a, b or diff) ---------- */

  function setCellInUrl(cell) {
    var url = new URL(window.location.href);
    var pane = cell && cell.closest("[data-pane]");
    url.hash = cell ? "cell=" + (pane ? pane.dataset.pane + ":" : "") + cell.dataset.r + "," + cell.dataset.c : "";
    window.history.replaceState(window.history.state, "", url.href.replace(/#$/, ""));
  }

  function restoreCellFromUrl() {
    var match = /^#cell=(?:([a-z]+):)?(\d+),(\d+)$/.exec(window.location.hash);
    if (!match) return;
    var root = match[1] ? document.querySelector('[data-pane="' + match[1] + '"]') : document.getElementById("result");
    var table = root && root.querySelector("table.grid");
    if (!table) return;
    var cell = cellAt(table, match[2], match[3]);
    if (!cell || cell.classList.contains("pending")) return;
    var current = table.querySelector('td.cell[tabindex="0"]');
    if (current && current !== cell) { current.tabIndex = -1; cell.tabIndex = 0; }
    pinnedCell = cell;
    showPopover(cell);
    cell.scrollIntoView({ block: "nearest", inline: "nearest" });
  }

  /* ---------- Back and Forward: the view the URL names (a grid's permalink, the start page) ---------- */

  /* History entries this script made or took over; htmx's own entries (state.htmx) are htmx's to restore. */
  var VIEW_STATE = { futureLens: true };
  var shownUrl = null;   /* the address (without #cell=…) of the view on screen */
  var restoring = 0;     /* which restore is the latest: an earlier answer arriving later is dropped */

  function viewUrl(href) { return href.split("#")[0]; }

  function copyForm(from, to) {
    /* The fetched page's form values into the page's form (kept, so its listeners and htmx wiring stay). */
    Array.prototype.forEach.call(to.elements, function (field) {
      if (!field.name) return;
      var source = from.elements.namedItem(field.name);
      if (!source || source.length !== undefined && !source.tagName) return;
      field.value = source.value;
      if (source.hasAttribute("aria-invalid")) field.setAttribute("aria-invalid", "true");
      else field.removeAttribute("aria-invalid");
    });
    updateLayersHint();
  }

  function restoreView() {
    var url = viewUrl(window.location.href), ticket = ++restoring;
    endStream();
    hidePopover(true);
    var result = $("#result");
    if (result) result.classList.add("loading");
    fetch(url, { headers: { Accept: "text/html" } }).then(function (answer) {
      return answer.text();  /* a 404 page ("no such grid") is a view too */
    }).then(function (html) {
      if (ticket !== restoring) return;
      var doc = new DOMParser().parseFromString(html, "text/html");
      var newResult = doc.getElementById("result"), newForm = doc.getElementById("lens-form");
      var form = $("#lens-form");
      if (!newResult || !result || !form || !newForm) { window.location.reload(); return; }
      result.innerHTML = newResult.innerHTML;  /* the server's page: token text escaped there */
      result.classList.remove("loading");
      copyForm(newForm, form);
      document.title = doc.title;
      shownUrl = url;
      markInvalidField();
      restoreCellFromUrl();
    }).catch(function () {
      if (ticket !== restoring) return;
      window.location.reload();  /* the server could not be reached: let the browser show the address's page */
    });
  }

  window.addEventListener("popstate", function (event) {
    if ((event.state && event.state.htmx) || !document.getElementById("lens-form")) return;  /* grid pages only */
    if (shownUrl !== null && viewUrl(window.location.href) === shownUrl) {  /* only #cell=… changed */
      hidePopover(true);
      restoreCellFromUrl();
      return;
    }
    restoreView();
  });

  /* ---------- copy link ---------- */

  function copyLink(button) {
    var url = new URL(button.dataset.copy, window.location.href).href;
    function done(ok) {
      button.textContent = ok ? "Copied ✓" : "Copy failed: select the link";
      button.classList.toggle("copied", ok);
      window.setTimeout(function () { button.textContent = "Copy link"; button.classList.remove("copied"); }, 2000);
    }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(url).then(function () { done(true); }, function () { done(fallbackCopy(url)); });
    } else {
      done(fallbackCopy(url));
    }
  }

  function fallbackCopy(text) {
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "skip";
    document.body.appendChild(area);
    area.select();
    var ok = false;
    try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
    document.body.removeChild(area);
    return ok;
  }

  /* ---------- form helpers ---------- */

  function updateLayersHint() {
    var stride = $("#stride"), hint = $("#layers-hint");
    if (!stride || !hint) return;
    var n = Number(stride.dataset.nLayers), s = Number(stride.value);
    if (!(s >= 1 && s <= n)) { hint.textContent = "Layer stride: 1 to " + n + "."; return; }
    var layers = [];
    for (var l = 0; l < n; l += s) layers.push(l);
    if (layers[layers.length - 1] !== n - 1) layers.push(n - 1);
    var shown = layers.length > 9 ? layers.slice(0, 4).join(", ") + ", …, " + layers.slice(-2).join(", ") : layers.join(", ");
    hint.textContent = layers.length + " of " + n + " layers: " + shown + ". ";
  }

  function showError(message) {
    var result = $("#result");
    if (!result) return;
    var box = el("div", "form-error", message);
    box.setAttribute("role", "alert");
    result.textContent = "";
    result.appendChild(box);
  }

  function markInvalidField() {
    document.querySelectorAll("#lens-form [aria-invalid]").forEach(function (node) { node.removeAttribute("aria-invalid"); });
    var error = $("#result .form-error[data-field]");
    if (!error) return;
    var input = document.querySelector('#lens-form [name="' + CSS.escape(error.dataset.field) + '"]');
    if (input) { input.setAttribute("aria-invalid", "true"); input.focus(); }
  }

  function startTimer() {
    var out = $("#progress .elapsed"), started = Date.now();
    stopTimer();
    if (out) out.textContent = "";
    timer = window.setInterval(function () {
      if (out) out.textContent = ((Date.now() - started) / 1000).toFixed(0) + " s";
    }, 500);
    var result = $("#result");
    if (result) result.classList.add("loading");
  }

  function stopTimer() {
    if (timer) window.clearInterval(timer);
    timer = null;
    var result = $("#result");
    if (result) result.classList.remove("loading");
  }

  /* What compare.js draws popovers with (one source of the token rendering). */
  window.FutureLens = {
    el: el, marked: marked, markedNamed: markedNamed, namedChars: namedChars, learnNames: learnNames,
    percent: percent, probTable: probTable, statsLine: statsLine
  };

  /* ---------- wiring (event delegation, so swapped-in grids need no re-binding) ---------- */

  document.addEventListener("DOMContentLoaded", function () {
    popover = document.getElementById("popover");
    shownUrl = viewUrl(window.location.href);
    if (document.getElementById("lens-form") && !window.history.state) window.history.replaceState(VIEW_STATE, "", window.location.href);
    updateLayersHint();
    markInvalidField();
    restoreCellFromUrl();
  });

  /* ---------- streamed grids: Server-Sent Events from /grid/stream fill the grid row by row ---------- */

  var stream = null;

  function streamStatus(done, total) {
    var bar = $("#stream-progress"), count = $("#rows-done");
    if (bar) { bar.max = total; bar.value = done; }
    if (count) count.textContent = String(done);
  }

  function endStream() {
    if (stream) { stream.source.close(); window.clearInterval(stream.clock); }
    stream = null;
    stopTimer();
  }

  function startStream(form) {
    var params = new URLSearchParams(new FormData(form));
    var result = $("#result"), started = Date.now();
    endStream();
    hidePopover(true);
    var source = new EventSource("/grid/stream?" + params.toString());
    stream = { source: source, done: 0, total: 0, clock: window.setInterval(function () {
      var out = $(".stream-elapsed");
      if (out) out.textContent = ((Date.now() - started) / 1000).toFixed(1) + " s";
    }, 100) };
    source.addEventListener("head", function (event) {
      var data = JSON.parse(event.data);
      result.innerHTML = data.html;  /* server-rendered, token text escaped there */
      stream.total = data.total;
    });
    source.addEventListener("row", function (event) {
      var data = JSON.parse(event.data), row = document.querySelector('#result tr[data-row="' + data.r + '"]');
      if (row) row.outerHTML = data.html;
      var grid = gridData(null);
      if (grid) grid.cells[data.r] = data.cells;
      stream.done = data.done;
      streamStatus(data.done, data.total);
    });
    source.addEventListener("done", function (event) {
      var data = JSON.parse(event.data);
      endStream();
      result.innerHTML = data.html;
      /* A new history entry for the grid (Back returns to the view before it); the same grid again replaces it. */
      var url = new URL(data.permalink, window.location.href).href;
      if (url === window.location.href) window.history.replaceState(VIEW_STATE, "", url);
      else window.history.pushState(VIEW_STATE, "", url);
      shownUrl = viewUrl(window.location.href);
      document.title = form.querySelector("#text").value.slice(0, 40) + " — Future Lens";
    });
    source.addEventListener("failed", function (event) {
      var data = JSON.parse(event.data);
      endStream();
      result.innerHTML = data.html;
      markInvalidField();
    });
    source.onerror = function () {
      if (!stream || stream.source !== source) return;
      endStream();
      showError("The connection to the server was lost before the grid was complete. Try again.");
    };
  }

  function cancelStream() {
    if (!stream) return;
    var done = stream.done, total = stream.total;
    endStream();  /* closing the connection stops the computation on the server */
    var status = $(".stream-status");
    if (status) {
      status.textContent = "";
      status.appendChild(el("span", "cancelled", "Cancelled after " + done + " of " + total + " rows; nothing was stored."));
    }
    var result = $("#result .result");
    if (result) result.removeAttribute("aria-busy");
  }

  /* Capture the form's submit before htmx sees it: with EventSource the grid streams; without, htmx posts. */
  document.addEventListener("submit", function (event) {
    if (event.target.id !== "lens-form" || !window.EventSource) return;
    event.preventDefault();
    event.stopPropagation();
    startStream(event.target);
  }, true);

  window.addEventListener("pagehide", endStream);

  document.addEventListener("input", function (event) {
    if (event.target.id === "stride") updateLayersHint();
  });

  document.addEventListener("keydown", function (event) {
    var target = event.target;
    if (target.id === "text" && event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      target.form.requestSubmit();
      return;
    }
    if (target.matches && target.matches("td.cell")) { onCellKey(event, target); return; }
    if (event.key === "Escape") hidePopover(true);
  });

  document.addEventListener("mouseover", function (event) {
    var cell = event.target.closest && event.target.closest("td.cell");
    if (cell && !pinnedCell) showPopover(cell);
  });

  document.addEventListener("mouseout", function (event) {
    var cell = event.target.closest && event.target.closest("td.cell");
    if (cell && !pinnedCell && !(event.relatedTarget && cell.contains(event.relatedTarget))) hidePopover(false);
  });

  document.addEventListener("focusin", function (event) {
    if (event.target.matches && event.target.matches("td.cell")) {
      if (pinnedCell && pinnedCell !== event.target) pinnedCell = null;
      showPopover(event.target);
    }
  });

  document.addEventListener("focusout", function (event) {
    if (event.target.matches && event.target.matches("td.cell") && pinnedCell !== event.target) hidePopover(false);
  });

  document.addEventListener("click", function (event) {
    var copy = event.target.closest && event.target.closest("button.copy");
    if (copy) { copyLink(copy); return; }
    if (event.target.id === "cancel-stream") { cancelStream(); return; }
    var cell = event.target.closest && event.target.closest("td.cell");
    if (cell) {
      var table = cell.closest("table"), current = table.querySelector('td.cell[tabindex="0"]');
      if (current && current !== cell) { current.tabIndex = -1; cell.tabIndex = 0; }
      togglePin(cell);
      return;
    }
    if (pinnedCell && !(popover && popover.contains(event.target))) { hidePopover(true); setCellInUrl(null); }
  });

  window.addEventListener("resize", function () { if (shownCell && !popover.hidden) placePopover(shownCell); });
  document.addEventListener("scroll", function () { if (shownCell && !popover.hidden) placePopover(shownCell); }, true);

  document.addEventListener("htmx:beforeRequest", function (event) {
    if (event.target.id === "lens-form") { hidePopover(true); startTimer(); }
  });
  document.addEventListener("htmx:afterRequest", function (event) {
    if (event.target.id === "lens-form") stopTimer();
  });
  document.addEventListener("htmx:afterSwap", function (event) {
    if (event.target.id === "result") markInvalidField();
  });
  document.addEventListener("htmx:responseError", function (event) {
    var xhr = event.detail.xhr, message = "The server answered " + xhr.status + ".";
    try { message = JSON.parse(xhr.responseText).detail || message; } catch (e) { /* not JSON */ }
    showError(message);
  });
  document.addEventListener("htmx:sendError", function () {
    showError("The server could not be reached. Check that it is running, then try again.");
  });
})();

/* Future Lens cell tools: from a cell's popover, track a candidate token through the grid (a chart below the grid,
 * /g/{id}/track.svg) or show the code behind the cell (/g/{id}/code.py, a transformers + nnsight script); on the
 * grid page and in each pane of a side-by-side comparison.
 * lens.js fires "lens:popover" after filling the popover. Token text and code are only written with textContent. */
(function () {
  "use strict";

  var documents = {};  // grid id -> promise of the stored grid JSON (token ids for the candidates)

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  /* A grid's container: the page's result, or one pane of a side-by-side comparison (two grids on one page). */
  var CONTAINER = "[data-grid-id], [data-pane-grid]";

  function gridData(cell) {
    var container = cell.closest(CONTAINER);
    var island = container && container.querySelector("template[id^='grid-data']");
    island = island || document.getElementById("grid-data");
    return island ? JSON.parse((island.content || island).textContent) : null;
  }

  function visible(text, marks) {
    /* Plain text with invisible characters as their marks (the table future_lens/lens/display.py sends), by code point. */
    var out = "";
    Array.from(text).forEach(function (ch) { out += Object.prototype.hasOwnProperty.call(marks, ch) ? marks[ch] : ch; });
    return out || "∅";
  }

  function described(text, marks) {
    /* " (U+00A0 NO-BREAK SPACE)": the unusual invisible characters of `text`, named (lens.js knows the names). */
    var L = window.FutureLens, names = L && L.namedChars ? L.namedChars(text, marks) : [];
    return names.length ? " (" + names.join(", ") + ")" : "";
  }

  function gridIdOf(cell) {
    var result = cell.closest(CONTAINER);
    if (result && result.dataset.paneGrid) return result.dataset.paneGrid;
    return result ? result.dataset.gridId : null;
  }

  function storedGrid(id) {
    if (!documents[id]) {
      documents[id] = fetch("/g/" + encodeURIComponent(id) + ".json").then(function (answer) {
        if (!answer.ok) throw new Error("the grid could not be read (" + answer.status + ")");
        return answer.json();
      });
      documents[id].catch(function () { delete documents[id]; });
    }
    return documents[id];
  }

  function errorText(answer) {
    return answer.json().then(function (body) { return body.detail || answer.statusText; },
                              function () { return "the server answered " + answer.status; });
  }

  /* ---------- tools in the popover ---------- */

  function addTools(event) {
    var popover = event.target, detail = event.detail, data = gridData(detail.cell);
    if (!data || !gridIdOf(detail.cell)) return;
    var info = data.cells[detail.r][detail.c];
    var tools = el("div", "cell-tools");
    tools.appendChild(el("h4", null, "Track a candidate through the grid"));
    var list = el("div", "track-list");
    info.k.forEach(function (pair, k) {
      var button = el("button", "track-token");
      if (window.FutureLens && window.FutureLens.marked) button.appendChild(window.FutureLens.marked(pair[0], data.marks));
      else button.textContent = visible(pair[0], data.marks);
      button.type = "button";
      button.dataset.k = String(k);
      button.title = "chart this token's probability at every layer and position" + described(pair[0], data.marks);
      list.appendChild(button);
    });
    tools.appendChild(list);
    var code = el("button", "cell-code", "Code behind this cell");
    code.type = "button";
    code.title = "a short transformers + nnsight script that recomputes this cell";
    tools.appendChild(code);
    tools.appendChild(el("p", "tools-hint", "Click the cell to use these."));  /* shown only while not pinned */
    popover.appendChild(tools);
  }

  function activeCell() {
    return document.querySelector("td.cell.active");
  }

  function keepInView(popover) {
    var box = popover.getBoundingClientRect();
    var vw = document.documentElement.clientWidth, vh = document.documentElement.clientHeight;
    if (box.right > vw - 8) popover.style.left = Math.max(8, vw - 8 - box.width) + "px";
    if (box.bottom > vh - 8) popover.style.top = Math.max(8, vh - 8 - box.height) + "px";
  }

  /* ---------- the trajectory panel below the grid ---------- */

  function trackPanel(cell) {
    var result = cell.closest(CONTAINER);
    var panel = result.querySelector(".track-panel");
    if (!panel) {
      panel = el("section", "track-panel");
      panel.setAttribute("aria-live", "polite");
      var scroll = result.querySelector(".grid-scroll");
      scroll.parentNode.insertBefore(panel, scroll.nextSibling);
    }
    panel.textContent = "";
    return panel;
  }

  function showTrack(cell, k) {
    var id = gridIdOf(cell), data = gridData(cell);
    var r = Number(cell.dataset.r), c = Number(cell.dataset.c);
    var text = visible(data.cells[r][c].k[k][0], data.marks);
    var panel = trackPanel(cell);
    var head = el("div", "track-head");
    var title = el("h3", null, "Tracking ");
    title.appendChild(el("span", "tk-inline", text));
    title.appendChild(el("span", "track-note", " from layer " + data.layers[r] + ", position " + c + " "));
    title.appendChild(el("span", "tk-inline", visible(data.tokens[c], data.marks)));
    head.appendChild(title);
    var links = el("span", "track-links");
    var close = el("button", "track-close", "Close");
    close.type = "button";
    head.appendChild(links);
    head.appendChild(close);
    panel.appendChild(head);
    var status = el("p", "track-status", "Computing the trajectory…");
    panel.appendChild(status);
    storedGrid(id).then(function (doc) {
      var tokenId = doc.cells[r][c].topk[k].id;
      var base = "/g/" + encodeURIComponent(id) + "/track";
      var svg = base + ".svg?token=" + tokenId + "&position=" + c;
      [["SVG", svg], ["JSON", base + ".json?token=" + tokenId]].forEach(function (link) {
        var a = el("a", null, link[0]);
        a.href = link[1];
        links.appendChild(a);
      });
      var img = el("img", "track-chart");
      img.alt = "Probability of the token " + text + " as the first predicted token at every layer and position";
      img.addEventListener("load", function () { status.remove(); });
      img.addEventListener("error", function () {
        fetch(svg).then(errorText).then(function (message) { status.textContent = "No trajectory: " + message; });
      });
      img.src = svg;
      panel.appendChild(img);
    }).catch(function (error) { status.textContent = "No trajectory: " + error.message; });
    panel.scrollIntoView({ block: "nearest" });
  }

  /* ---------- the code behind a cell, in the popover ---------- */

  function showCode(button, cell) {
    var id = gridIdOf(cell), data = gridData(cell), popover = document.getElementById("popover");
    var r = Number(cell.dataset.r), c = Number(cell.dataset.c);
    var box = popover.querySelector(".code-box");
    if (box) { box.remove(); popover.classList.remove("with-code"); return; }
    box = el("div", "code-box");
    var head = el("div", "code-head", "transformers + nnsight · prints the cell's tokens ");
    var copy = el("button", "copy-code", "Copy");
    copy.type = "button";
    head.appendChild(copy);
    var pre = el("pre");
    var code = el("code", null, "Loading…");
    pre.appendChild(code);
    box.appendChild(head);
    box.appendChild(pre);
    popover.appendChild(box);
    popover.classList.add("with-code");
    keepInView(popover);
    var url = "/g/" + encodeURIComponent(id) + "/code.py?layer=" + data.layers[r] + "&position=" + c;
    fetch(url).then(function (answer) {
      return answer.ok ? answer.text() : errorText(answer).then(function (message) { throw new Error(message); });
    }).then(function (text) {
      code.textContent = text;
      keepInView(popover);
    }).catch(function (error) { code.textContent = "No code: " + error.message; });
  }

  function copyCode(button) {
    var pre = button.closest(".code-box").querySelector("pre");
    var text = pre.textContent;
    function done(ok) {
      button.textContent = ok ? "Copied ✓" : "Select and copy";
      window.setTimeout(function () { button.textContent = "Copy"; }, 2000);
    }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(function () { done(true); }, function () { done(false); });
      return;
    }
    var range = document.createRange();
    range.selectNodeContents(pre);
    window.getSelection().removeAllRanges();
    window.getSelection().addRange(range);
    var ok = false;
    try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
    done(ok);
  }

  document.addEventListener("lens:popover", addTools);

  document.addEventListener("click", function (event) {
    var target = event.target.closest && event.target.closest("button");
    if (!target) return;
    var cell = activeCell();
    if (target.classList.contains("track-token") && cell) showTrack(cell, Number(target.dataset.k));
    else if (target.classList.contains("cell-code") && cell) showCode(target, cell);
    else if (target.classList.contains("copy-code")) copyCode(target);
    else if (target.classList.contains("track-close")) target.closest(".track-panel").remove();
  });
})();

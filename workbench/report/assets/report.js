/* Transformer Workbench report page: draws the charts and wires the controls.
 * Data comes only from the JSON blocks (JSON.parse of textContent); text is set with textContent,
 * never innerHTML. Chart strings were escaped for Plotly's markup when the page was written. */
(function () {
  "use strict";

  var CONFIG = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["select2d", "lasso2d"] };

  function readJson(id) {
    var element = document.getElementById(id);
    if (!element) { return null; }
    return JSON.parse(element.textContent);
  }

  function showError(element, error) {
    element.classList.add("plot-error");
    element.textContent = "This chart could not be drawn: " + (error && error.message ? error.message : error);
  }

  function draw(element, figure, replace) {
    if (typeof Plotly === "undefined") {
      showError(element, "plotly.js did not load");
      return;
    }
    try {
      (replace ? Plotly.react : Plotly.newPlot)(element, figure.data, figure.layout, CONFIG);
    } catch (error) {
      showError(element, error);
    }
  }

  var figures = readJson("wb-figures") || {};
  Object.keys(figures).forEach(function (id) {
    var element = document.getElementById(id);
    if (element) { draw(element, figures[id], false); }
  });

  /* Pattern viewer: one figure per captured (layer, head), built from its frame (axes and token
   * labels, shared by patterns of one shape) and its weight rows, padded with nulls (blank cells)
   * where a row stops at the diagonal. */
  var views = readJson("wb-patterns") || { frames: [], heads: [] };
  var heads = views.heads || [];
  var select = document.getElementById("pattern-select");
  var patternPlot = document.getElementById("fig-pattern");

  function patternFigure(head) {
    var frame = views.frames[head.frame];
    var width = frame.data[0].x.length;
    var z = head.z.map(function (row) {
      var padded = row.slice();
      while (padded.length < width) { padded.push(null); }
      return padded;
    });
    var trace = Object.assign({}, frame.data[0], { z: z });
    var layout = Object.assign({}, frame.layout, { title: Object.assign({}, frame.layout.title, { text: head.title }) });
    return { data: [trace], layout: layout };
  }

  if (select && patternPlot && heads.length) {
    var drawn = false;
    var showPattern = function (index) {
      index = Math.max(0, Math.min(heads.length - 1, index));
      select.value = String(index);
      draw(patternPlot, patternFigure(heads[index]), drawn);
      drawn = true;
    };
    select.addEventListener("change", function () { showPattern(Number(select.value)); });
    document.getElementById("pattern-prev").addEventListener("click", function () {
      showPattern(Number(select.value) - 1);
    });
    document.getElementById("pattern-next").addEventListener("click", function () {
      showPattern(Number(select.value) + 1);
    });
    showPattern(Number(select.value) || 0);
  }

  /* Findings filter: one status at a time, or all. */
  var buttons = Array.prototype.slice.call(document.querySelectorAll("button.filter"));
  var rows = Array.prototype.slice.call(document.querySelectorAll("#findings-table tbody tr"));
  buttons.forEach(function (button) {
    button.addEventListener("click", function () {
      var wanted = button.getAttribute("data-filter");
      buttons.forEach(function (other) { other.classList.toggle("active", other === button); });
      rows.forEach(function (row) {
        row.hidden = wanted !== "all" && row.getAttribute("data-status") !== wanted;
      });
    });
  });

  /* Highlight the section being read in the sticky nav. */
  var links = Array.prototype.slice.call(document.querySelectorAll("nav.nav a"));
  if ("IntersectionObserver" in window) {
    var observer = new IntersectionObserver(function (entries) {
      entries.forEach(function (entry) {
        if (!entry.isIntersecting) { return; }
        links.forEach(function (link) {
          link.classList.toggle("current", link.getAttribute("href") === "#" + entry.target.id);
        });
      });
    }, { rootMargin: "-45% 0px -50% 0px" });
    Array.prototype.forEach.call(document.querySelectorAll("main > section"), function (section) {
      observer.observe(section);
    });
  }
})();

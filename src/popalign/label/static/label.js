// The labelling page: keyboard shortcuts, double-submit protection, the layout switch, and keeping
// the served pair's lease alive while the page is open.
// Shortcuts only click the page's own buttons, so keys and mouse go through the same form posts.
(function () {
  "use strict";
  var busy = false;
  function guard(event) {
    // A second key press while the first post is on its way must not judge the next pair blind.
    if (busy) { event.preventDefault(); return; }
    busy = true;
    document.body.classList.add("busy");
  }
  ["label-form", "undo-form", "skip-form", "guidelines-form"].forEach(function (id) {
    var form = document.getElementById(id);
    if (form) { form.addEventListener("submit", guard); }
  });

  // Layout: preferences side by side (default), or each preference's chosen and rejected side by side.
  var pair = document.querySelector(".pair");
  function setLayout(name) {
    if (!pair) { return; }
    pair.classList.toggle("responses-side-by-side", name === "responses");
    try { window.localStorage.setItem("popalign-layout", name); } catch (e) { /* storage off */ }
  }
  var stored = null;
  try { stored = window.localStorage.getItem("popalign-layout"); } catch (e) { /* storage off */ }
  setLayout(stored === "responses" ? "responses" : "preferences");
  var layoutButton = document.getElementById("layout");
  if (layoutButton) {
    layoutButton.addEventListener("click", function () {
      setLayout(pair && pair.classList.contains("responses-side-by-side") ? "preferences" : "responses");
    });
  }

  var keys = { a: "choice-a", "1": "choice-a", s: "choice-same", "2": "choice-same",
               b: "choice-b", "3": "choice-b", u: "undo", k: "skip-open", g: "guidelines-link",
               l: "layout" };
  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) { return; }
    var target = event.target;
    if (target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA" || target.isContentEditable)) { return; }
    var ok = document.getElementById("guidelines-ok");
    if (ok && event.key === "Enter") { event.preventDefault(); ok.click(); return; }
    var id = keys[(event.key || "").toLowerCase()];
    var button = id && document.getElementById(id);
    if (!button || button.disabled) { return; }
    event.preventDefault();
    button.click();
  });

  // Lease: renew every third of the lease while the page is open; if renewals stop working, show how
  // long the pair stays reserved, so nobody spends minutes on a pair that is about to go elsewhere.
  var form = document.getElementById("label-form");
  var warning = document.getElementById("lease-warning");
  if (!form || !warning || !window.fetch) { return; }
  var lease = parseFloat(form.getAttribute("data-lease")) || 600;
  var deadline = Date.now() + 1000 * (parseFloat(form.getAttribute("data-expires-in")) || lease);
  var problem = "";
  function show() {
    var left = Math.max(0, Math.round((deadline - Date.now()) / 1000));
    if (!problem && left > lease / 2) { warning.hidden = true; return; }
    var clock = Math.floor(left / 60) + ":" + ("0" + (left % 60)).slice(-2);
    warning.textContent = left > 0
      ? "This pair stays reserved for you for " + clock + (problem ? " (" + problem + ")" : "") + "."
      : "Your reservation of this pair has ended" + (problem ? " (" + problem + ")" : "") +
        "; saving still works unless it has gone to someone else.";
    warning.hidden = false;
  }
  function renew() {
    var body = new URLSearchParams();
    body.set("csrf", form.elements.csrf.value);
    body.set("assignment_id", form.elements.assignment_id.value);
    window.fetch("/renew", { method: "POST", body: body, credentials: "same-origin" })
      .then(function (response) {
        return response.json().then(function (data) { return { status: response.status, data: data }; });
      })
      .then(function (r) {
        if (r.status === 200) {
          deadline = Date.now() + 1000 * r.data.expires_in;
          problem = "";
        } else if (r.status === 403) {
          problem = "it was given to someone else: reload for your next pair";
          deadline = Date.now();
        } else {
          problem = r.status === 401 ? "you are signed out" : "the server refused to renew it";
        }
        show();
      })
      .catch(function () { problem = "the server cannot be reached"; show(); });
  }
  window.setInterval(renew, Math.max(1000, 1000 * lease / 3));
  window.setInterval(show, 1000);
  show();
})();

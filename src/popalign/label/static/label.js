// Keyboard shortcuts and double-submit protection for the labelling page.
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
  ["label-form", "undo-form"].forEach(function (id) {
    var form = document.getElementById(id);
    if (form) { form.addEventListener("submit", guard); }
  });
  var keys = { a: "choice-a", "1": "choice-a", s: "choice-same", "2": "choice-same",
               b: "choice-b", "3": "choice-b", u: "undo" };
  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) { return; }
    var target = event.target;
    if (target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA" || target.isContentEditable)) { return; }
    var id = keys[(event.key || "").toLowerCase()];
    var button = id && document.getElementById(id);
    if (!button || button.disabled) { return; }
    event.preventDefault();
    button.click();
  });
})();

// Review console: live SLA countdowns and one-key actions. No dependencies, no build step.
//   c confirm · 1/2/3 correct to safe/controversial/unsafe · r reason · t next quick tag
//   (space picks it) · y / x refusal yes / no (response items) · Enter submit · n next task ·
//   Escape leaves a text field. The QA page uses the same keys (1/2/3 pick the senior's label).
//   m unfolds / folds a long post's middle. The reason box counts its characters as typed.
(function () {
  "use strict";

  function duration(s) {
    s = Math.max(0, Math.floor(s));
    if (s >= 3600) return Math.floor(s / 3600) + "h " + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
    if (s >= 60) return Math.floor(s / 60) + "m " + String(s % 60).padStart(2, "0") + "s";
    return s + "s";
  }

  function tick() {
    var now = Date.now();
    document.querySelectorAll(".countdown[data-deadline]").forEach(function (el) {
      var left = (Date.parse(el.dataset.deadline) - now) / 1000;
      // A held post past its deadline is still held (never downgraded): not "expired".
      var overdue = el.dataset.held ? "deadline passed " : "expired ";
      el.textContent = left >= 0 ? duration(left) + " left" : overdue + duration(-left) + " ago";
      el.classList.toggle("overdue", left < 0);
    });
  }

  function typing(target) {
    return target && (target.tagName === "TEXTAREA" ||
      (target.tagName === "INPUT" && ["text", "password", "search", ""].indexOf(target.type) >= 0));
  }

  function check(id) {
    var el = document.getElementById(id);
    if (el) { el.checked = true; el.dispatchEvent(new Event("change")); }
  }

  var tagIndex = -1;

  document.addEventListener("keydown", function (ev) {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    var form = document.getElementById("decide-form");
    if (ev.key === "Escape") { if (document.activeElement) document.activeElement.blur(); return; }
    if (typing(ev.target)) return;  // Enter in the reason field submits natively
    if (ev.target && ev.target.tagName === "SUMMARY" && ev.key === "Enter") return;  // unfolds
    switch (ev.key) {
      case "c":
        document.querySelectorAll("input[name=verdict]").forEach(function (el) { el.checked = false; });
        check("outcome-confirm");
        break;
      case "1": check("outcome-correct"); check("verdict-safe"); break;
      case "2": check("outcome-correct"); check("verdict-controversial"); break;
      case "3": check("outcome-correct"); check("verdict-unsafe"); break;
      case "y": check("refusal-yes"); break;
      case "x": check("refusal-no"); break;
      case "r": var reason = document.getElementById("reason"); if (reason) { reason.focus(); ev.preventDefault(); } break;
      case "t":
        var tags = document.querySelectorAll("#tags input.tag");
        if (tags.length) { tagIndex = (tagIndex + 1) % tags.length; tags[tagIndex].focus(); }
        break;
      case "Enter":
        if (form) { ev.preventDefault(); form.requestSubmit(); }
        break;
      case "m":
        var middle = document.getElementById("post-middle");
        if (middle) middle.open = !middle.open;
        break;
      case "n":
        var next = document.getElementById("next-form");
        if (next) next.requestSubmit();
        break;
      default: return;
    }
  });

  // A correction needs no separate click: picking a label picks "correct".
  document.addEventListener("change", function (ev) {
    if (ev.target && ev.target.name === "verdict") check("outcome-correct");
    if (ev.target && ev.target.name === "outcome") requireReason();
  });

  // The pack's reason rule (the server enforces it; this only says so before sending): a
  // pack that relaxes it to "when_correcting" needs the reason once "correct" is picked.
  function requireReason() {
    var box = document.getElementById("reason");
    var correct = document.getElementById("outcome-correct");
    if (!box || box.dataset.required !== "when_correcting") return;
    box.setAttribute("aria-required", correct && correct.checked ? "true" : "false");
  }

  // The reason box has no maxlength (a browser cuts a longer paste silently): a live count,
  // and past the limit a message; the server refuses it the same way, keeping the text.
  function countReason() {
    var box = document.getElementById("reason");
    var out = document.getElementById("reason-count");
    if (!box || !out) return;
    var max = parseInt(box.dataset.max, 10);
    var n = Array.from(box.value.trim()).length;  // characters, as the server counts them
    var over = n - max;
    out.textContent = n + " / " + max + (over > 0 ? " \u2014 " + over + " too many: shorten it" : "");
    out.classList.toggle("over", over > 0);
    box.setAttribute("aria-invalid", over > 0 ? "true" : "false");
  }
  document.addEventListener("input", function (ev) {
    if (ev.target && ev.target.id === "reason") countReason();
  });

  countReason();
  requireReason();
  tick();
  setInterval(tick, 1000);
})();

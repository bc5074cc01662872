// The seed's web page: one post to POST /v1/moderate, its answer as a card and as JSON.
// Every value from an answer reaches the DOM through textContent, never as markup; the API key
// lives in sessionStorage only and travels in the Authorization header, never in a URL.
"use strict";

(function () {
  const KEY_STORAGE = "guardstream.apiKey";
  const $ = (id) => document.getElementById(id);
  const STATUS_TEXT = {
    400: "Bad request",
    401: "Not authorised: this API wants a valid key (fill in “API key”)",
    403: "Forbidden: this key may not do that (another tenant?)",
    404: "Not found",
    413: "Too large: the request body is over the API's limit",
    422: "Refused by the post contract",
    429: "Too many requests: this key's rate limit is reached",
    503: "Temporarily unavailable",
  };
  const SOURCE_TEXT = {
    model: "model: the guard model judged it now",
    cache: "cache: an earlier verdict for the same content",
    human: "human: a reviewer's verdict",
    sla_timeout: "SLA timeout: no reviewer in time, the pack's fallback",
    rule: "rule: decided by a pack rule, not by a model",
  };
  let packs = [];
  let sending = false;

  function apiKey() {
    return $("api-key").value.trim();
  }

  function headers(extra) {
    const h = Object.assign({ Accept: "application/json" }, extra || {});
    const key = apiKey();
    if (key) h.Authorization = "Bearer " + key;
    return h;
  }

  // The answer's JSON as the API wrote it, indented (whitespace only: a number JavaScript
  // cannot hold exactly is still shown exactly), with bidi and C1 controls written as escapes
  // so they show instead of reordering or hiding the text (JSON has the C0 ones escaped).
  function indentJson(text) {
    let out = "";
    let depth = 0;
    let inString = false;
    let escaped = false;
    const newline = () => "\n" + "  ".repeat(depth);
    for (let i = 0; i < text.length; i++) {
      const c = text[i];
      if (inString) {
        out += c;
        if (escaped) escaped = false;
        else if (c === "\\") escaped = true;
        else if (c === '"') inString = false;
        continue;
      }
      if (c === " " || c === "\n" || c === "\r" || c === "\t") continue;
      if (c === '"') {
        inString = true;
        out += c;
      } else if (c === "{" || c === "[") {
        const close = c === "{" ? "}" : "]";
        const rest = text.slice(i + 1).trimStart();
        if (rest[0] === close) {
          out += c + close;
          i = text.length - rest.length;
        } else {
          depth += 1;
          out += c + newline();
        }
      } else if (c === "}" || c === "]") {
        depth = Math.max(0, depth - 1);
        out += newline() + c;
      } else if (c === ",") {
        out += c + newline();
      } else if (c === ":") {
        out += ": ";
      } else {
        out += c;
      }
    }
    return visibleControls(out);
  }

  function visibleControls(text) {
    return text.replace(
      /[\u0080-\u009f\u061c\u200e\u200f\u202a-\u202e\u2028\u2029\u2066-\u2069\ufeff]/g,
      (ch) => "\\u" + ch.charCodeAt(0).toString(16).padStart(4, "0")
    );
  }

  // As the reason writes it (policy.routing): rounded down, never above the real value.
  function twoDecimalsDown(value) {
    const [whole, decimals = ""] = value.toFixed(12).split(".");
    return whole + "." + decimals.slice(0, 2);
  }

  function setText(id, value) {
    $(id).textContent = value === undefined || value === null ? "—" : String(value);
  }

  function reasonOf(body) {
    if (body === null || typeof body !== "object") return "";
    const parts = [];
    if (typeof body.reason === "string") parts.push(body.reason);
    if (typeof body.detail === "string") parts.push(body.detail);
    else if (body.detail !== undefined) parts.push(JSON.stringify(body.detail));
    if (typeof body.error === "string") parts.push(body.error);
    else if (body.error && typeof body.error.message === "string") parts.push(body.error.message);
    if (typeof body.message === "string") parts.push(body.message);
    return parts.join(": ");
  }

  function showRaw(status, text, body) {
    const shown = body === undefined ? visibleControls(text) : indentJson(text);
    $("raw").textContent = "HTTP " + status + "\n" + shown;
  }

  function showError(message) {
    const box = $("error");
    box.textContent = message;
    box.hidden = false;
  }

  function showCard(d, ms) {
    const verdict = typeof d.verdict === "string" ? d.verdict : "unknown";
    const badge = $("card-verdict");
    badge.textContent = verdict.toUpperCase();
    badge.className = "badge verdict-" + (["safe", "controversial", "unsafe"].includes(verdict) ? verdict : "unknown");
    $("card").className = "card verdict-" + badge.className.split("verdict-")[1];
    setText("card-action-text", d.action ? "→ " + d.action : "");
    setText("card-label", verdict);
    setText("card-action", d.action);
    setText(
      "card-confidence",
      typeof d.confidence === "number"
        ? twoDecimalsDown(d.confidence) + " (" + String(d.confidence) + ")"
        : "— (no model confidence)"
    );
    const list = $("card-categories");
    list.replaceChildren();
    const categories = Array.isArray(d.categories) ? d.categories : [];
    for (const c of categories) {
      const item = document.createElement("li");
      item.textContent = String(c);
      list.appendChild(item);
    }
    if (categories.length === 0) {
      const none = document.createElement("li");
      none.textContent = "none";
      none.className = "muted";
      list.appendChild(none);
    }
    setText("card-reason", d.reason);
    let source = SOURCE_TEXT[d.source] || String(d.source);
    if (d.source === "cache" && d.matched_content_key) source = "cache: a near-duplicate of an earlier post";
    setText("card-source", source);
    $("card-source").dataset.source = String(d.source);
    setText("card-rule", d.rule);
    setText("card-policy", d.policy);
    setText("card-model", d.adapter ? d.model + " + " + d.adapter : d.model);
    setText("card-post", d.post_id);
    setText("card-latency", Math.round(ms) + " ms (round trip, measured by this page)");
    $("card").hidden = false;
  }

  function requestBody() {
    const body = { text: $("text").value };
    if ($("mode-response").checked) body.prompt = $("prompt").value;
    const tenant = $("tenant").value.trim();
    if (tenant) body.tenant = tenant;
    const region = $("region").value.trim();
    if (region) body.region = region;
    return body;
  }

  async function submit() {
    if (sending) return;
    sending = true;
    $("result").setAttribute("aria-busy", "true");
    $("submit").disabled = true;
    $("error").hidden = true;
    $("status").textContent = "Moderating…";
    const started = performance.now();
    try {
      const response = await fetch("/v1/moderate", {
        method: "POST",
        headers: headers({ "Content-Type": "application/json" }),
        body: JSON.stringify(requestBody()),
        credentials: "omit",
        cache: "no-store",
      });
      const text = await response.text();
      const ms = performance.now() - started;
      let body;
      try {
        body = JSON.parse(text);
      } catch (_) {
        body = undefined;
      }
      showRaw(response.status, text, body);
      if (response.status === 200 && body && typeof body === "object") {
        showCard(body, ms);
        $("status").textContent =
          "Decided in " + Math.round(ms) + " ms: " + String(body.verdict) + ", " + String(body.action) + ".";
        return;
      }
      $("card").hidden = true;
      if (response.status === 202) {
        const post = body && body.post_id ? String(body.post_id) : "";
        $("status").textContent =
          "Escalated to the larger model's tier: the decision will be published on the action topics" +
          (post ? " (GET /v1/decisions/" + post + ")." : ".");
        return;
      }
      let message = "HTTP " + response.status + " " + (STATUS_TEXT[response.status] || response.statusText || "error");
      const why = reasonOf(body) || (body === undefined ? text.slice(0, 300) : "");
      if (why) message += " — " + why;
      const retry = response.headers.get("Retry-After");
      if (retry) message += " (retry after " + retry + " s)";
      showError(message);
      $("status").textContent = "Not decided (HTTP " + response.status + ").";
    } catch (err) {
      $("card").hidden = true;
      $("raw").textContent = "";
      showError("The API could not be reached: " + String(err && err.message ? err.message : err));
      $("status").textContent = "Not decided.";
    } finally {
      sending = false;
      $("submit").disabled = false;
      $("result").setAttribute("aria-busy", "false");
    }
  }

  function choosePack() {
    const pack = packs[Number($("pack").value)];
    if (!pack) return;
    $("tenant").value = pack.tenants[0] === "*" ? "default" : pack.tenants[0];
    $("region").value = pack.regions ? pack.regions[0] : "";
  }

  // The pack the API would pick for the typed tenant and region (policy.registry.for_post):
  // the tenant's own pack for the region, else for any region, else the default's.
  function reflectPack() {
    const tenant = $("tenant").value.trim();
    const region = $("region").value.trim().toLowerCase();
    const claims = (p, t, r) =>
      p.tenants.includes(t) && (r === null ? p.regions === null : (p.regions || []).some((x) => x.toLowerCase() === r));
    const order = [[tenant, region || null], [tenant, null], ["*", region || null], ["*", null]];
    for (const [t, r] of order) {
      const index = packs.findIndex((p) => claims(p, t, r));
      if (index >= 0) {
        $("pack").value = String(index);
        return;
      }
    }
  }

  async function loadPacks() {
    const select = $("pack");
    try {
      const response = await fetch("/v1/packs", { headers: headers(), credentials: "omit", cache: "no-store" });
      if (!response.ok) {
        const note = response.status === 401 || response.status === 403 ? "enter an API key to list them" : "HTTP " + response.status;
        select.replaceChildren(new Option("(packs not listed: " + note + ")", ""));
        return;
      }
      packs = (await response.json()).packs || [];
    } catch (_) {
      select.replaceChildren(new Option("(packs not listed: the API could not be reached)", ""));
      return;
    }
    select.replaceChildren(
      ...packs.map((p, i) => {
        const who = p.default ? "every other tenant" : "tenant " + p.tenants.join(", ");
        const where = p.regions ? ", region " + p.regions.join(", ") : "";
        const option = new Option(p.ref + " — " + who + where, String(i));
        if (p.description) option.title = p.description;
        return option;
      })
    );
    reflectPack();
  }

  function updateMode() {
    const response = $("mode-response").checked;
    $("prompt-box").hidden = !response;
    $("text-label").textContent = response ? "Response to moderate" : "Text to moderate";
  }

  function countText() {
    const n = $("text").value.length;
    $("text-count").textContent = n.toLocaleString("en") + (n === 1 ? " character" : " characters");
  }

  document.addEventListener("DOMContentLoaded", () => {
    const stored = sessionStorage.getItem(KEY_STORAGE);
    if (stored) $("api-key").value = stored;
    $("api-key").addEventListener("input", () => {
      const key = apiKey();
      if (key) sessionStorage.setItem(KEY_STORAGE, key);
      else sessionStorage.removeItem(KEY_STORAGE);
    });
    $("api-key").addEventListener("change", loadPacks);
    $("moderate").addEventListener("submit", (event) => {
      event.preventDefault();
      submit();
    });
    document.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        submit();
      }
    });
    for (const radio of document.querySelectorAll("input[name=mode]")) radio.addEventListener("change", updateMode);
    $("pack").addEventListener("change", choosePack);
    $("tenant").addEventListener("input", reflectPack);
    $("region").addEventListener("input", reflectPack);
    $("text").addEventListener("input", countText);
    updateMode();
    countText();
    loadPacks();
  });
})();

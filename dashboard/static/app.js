// Bastion dashboard: one page over the graph service's REST API.
//
// Everything shown here was written by agents, tools or upstreams (tool names, arguments,
// reasons), so every element is built with createElement/textContent and never from HTML
// text: an injected `<img onerror=…>` in a tool name must show as those characters. The
// page's Content-Security-Policy (no inline script, no other origin) is the second wall.
//
// The token lives in this page's memory only, never in sessionStorage or localStorage,
// which every page of the origin can read. A reload asks for it again. It is sent only as
// an Authorization header, to the API that served this page and to the configured proxy.
"use strict";

(() => {
  let token = "";
  const config = { proxy_url: "" };
  const PAGE = 50;
  const KNOWN = new Set([
    "ALLOW", "DENY", "REQUIRE_APPROVAL", "QUEUE", "PASS", "BLOCK", "FORWARDED", "BLOCKED", "REJECTED",
    "CAUSED_BY", "INFORMED_BY", "VERIFIED_BY", "DELEGATED_TO",
  ]);
  const view = document.getElementById("view");
  const status = document.getElementById("status");
  const tokenInput = document.getElementById("token");
  const signout = document.getElementById("signout");

  // ---- DOM helpers: the only way anything reaches the page -------------------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "className") node.className = value;
      else if (key === "onclick") node.addEventListener("click", value);
      else if (key === "href") node.setAttribute("href", safeHref(value));
      else node.setAttribute(key, String(value));
    }
    append(node, children);
    return node;
  }

  function append(node, children) {
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      if (child instanceof Node) node.append(child);
      else node.append(...shown(String(child)));
    }
  }

  // Characters that change how the text around them reads without showing themselves:
  // controls (but tab and newline), format characters (bidi overrides such as U+202E that
  // make "txt.exe" read "exe.txt", zero-width spaces, the tag characters U+E0000… that carry
  // text no reader sees) and line/paragraph separators. Each is shown as a marked code point,
  // so an agent can make no value read as another nor hide text from the operator in it.
  const HIDDEN = /[\p{Cf}\p{Zl}\p{Zp}\u0000-\u0008\u000b-\u001f\u007f-\u009f]/gu;

  function codePoint(char) {
    return "U+" + char.codePointAt(0).toString(16).toUpperCase().padStart(4, "0");
  }

  function shown(text) {
    const nodes = [];
    let last = 0;
    for (const match of text.matchAll(HIDDEN)) {
      if (match.index > last) nodes.push(document.createTextNode(text.slice(last, match.index)));
      const mark = document.createElement("span");
      mark.className = "cp";
      mark.textContent = codePoint(match[0]);
      nodes.push(mark);
      last = match.index + match[0].length;
    }
    if (last < text.length || !nodes.length) nodes.push(document.createTextNode(text.slice(last)));
    return nodes;
  }

  // The same for text that can hold no element (an SVG title or label).
  function plain(text) {
    return String(text).replace(HIDDEN, (char) => `[${codePoint(char)}]`);
  }

  function safeHref(value) {
    // Links are in-page routes only: never a URL a stored value could make `javascript:`.
    return typeof value === "string" && value.startsWith("#/") ? value : "#/workflows";
  }

  function pill(text) {
    const name = String(text || "");
    return el("span", { className: "pill" + (KNOWN.has(name) ? " " + name : "") }, name || "—");
  }

  function table(headers, rows) {
    return el("table", {},
      el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
      el("tbody", {}, rows));
  }

  function when(value) {
    if (!value) return "—";
    const date = new Date(value);
    return isNaN(date.getTime()) ? String(value) : date.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
  }

  function score(verifier) {
    return verifier ? `${Number(verifier.deviation_score).toFixed(2)} / ${Number(verifier.threshold).toFixed(2)}` : "—";
  }

  function route(...parts) {
    return "#/" + parts.map((part) => encodeURIComponent(part)).join("/");
  }

  // One id as one segment of an API path, or an ApiError and no request. encodeURIComponent
  // leaves "." alone, and the browser resolves a "." or ".." segment (even spelled %2e) before
  // sending: #/workflow/.. read "/". The services decode %2F before routing: an id holding "/"
  // read another route (#/workflow/wf-1%2Fnodes, wf-1's node list). No id the proxy makes
  // is one of these; the graph stores them from any holder of the service token.
  function segment(id) {
    const text = String(id);
    if (text === "" || text === "." || text === ".." || text.includes("/")) {
      throw new ApiError(0, `${JSON.stringify(text)} cannot be read through a URL path ("", "." and ".." `
        + "cannot, nor an id holding \"/\"): nothing was requested; read it with the CLI or the REST API's listings");
    }
    return encodeURIComponent(text);
  }

  function say(text, isError) {
    status.replaceChildren(...shown(text || ""));
    status.className = isError ? "error" : "";
  }

  // ---- the API ------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(statusCode, message) {
      super(message);
      this.statusCode = statusCode;
    }
  }

  // Each render() (a route, sign-in, sign-out) starts a generation; an answer to a request of
  // an earlier one is dropped (Superseded), never painted over what the operator now looks at
  // nor back onto the signed-out page.
  let generation = 0;

  class Superseded extends Error {}

  // `base`: "" for the graph service that served the page, or the proxy's origin (from
  // /ui/config.json, which the page's Content-Security-Policy also names).
  async function api(path, params, base, body) {
    const asked = generation;
    const query = new URLSearchParams();
    for (const [key, value] of Object.entries(params || {})) {
      if (value !== undefined && value !== null && value !== "") query.set(key, String(value));
    }
    const url = (base || "") + path + (query.toString() ? "?" + query.toString() : "");
    const headers = { Accept: "application/json" };
    if (token) headers.Authorization = "Bearer " + token;
    const init = { headers, credentials: "omit", cache: "no-store", redirect: "error" };
    if (body !== undefined) {
      init.method = "POST";
      init.body = JSON.stringify(body);
      headers["Content-Type"] = "application/json";
    }
    let response;
    try {
      response = await fetch(url, init);
    } catch (error) {
      if (asked !== generation) throw new Superseded();
      throw new ApiError(0, (base ? "the proxy" : "the graph service") + " did not answer: " + error.message);
    }
    let answer = null;
    try {
      answer = await response.json();
    } catch (error) {
      answer = null;
    }
    if (asked !== generation) throw new Superseded();
    if (!response.ok) throw new ApiError(response.status, explain(response.status, answer));
    return answer;
  }

  function explain(code, body) {
    const detail = body && (body.detail || (body.error && body.error.message) || body.message);
    const text = typeof detail === "string" ? detail : detail ? JSON.stringify(detail) : "";
    if (code === 401) return "401: sign in with an operator or auditor token" + (text ? ` (${text})` : "");
    if (code === 403) return "403: this token may not read this" + (text ? ` (${text})` : "");
    return `${code}: ${text || "the request failed"}`;
  }

  // ---- views --------------------------------------------------------------------------------
  async function workflows(cursor, into) {
    const page = await api("/graphs", { limit: PAGE, cursor });
    const rows = page.items.map((w) => el("tr", { className: w.violation_count ? "blocked" : "" },
      el("td", { className: "mono" }, el("a", { href: route("workflow", w.workflow_id) }, w.workflow_id)),
      el("td", {}, when(w.first_seen)),
      el("td", {}, when(w.last_seen)),
      el("td", {}, String(w.node_count)),
      el("td", {}, String(w.violation_count)),
      el("td", { className: "mono" }, w.agents.join(", "))));
    const target = into || view;
    if (!into) {
      target.replaceChildren(el("h2", {}, "Workflows"),
        table(["workflow", "first seen", "last seen", "nodes", "violations", "agents"], []));
      if (!page.items.length) target.append(el("p", {}, "No workflow recorded yet."));
    }
    target.querySelector("tbody").append(...rows);
    more(target, page.next_cursor, (next) => workflows(next, target));
  }

  function more(target, cursor, load) {
    const old = target.querySelector("button.more");
    if (old) old.remove();
    if (!cursor) return;
    target.append(el("button", { className: "more", type: "button", onclick: () => guard(() => load(cursor)) },
      "More"));
  }

  async function workflow(workflowId) {
    const graph = await api("/graphs/" + segment(workflowId));
    const detail = el("pre", { className: "detail", id: "node-detail" }, "Select a node to see it whole.");
    const rows = new Map();
    const select = (node) => {
      for (const row of rows.values()) row.classList.remove("selected");
      if (rows.has(node.node_id)) rows.get(node.node_id).classList.add("selected");
      detail.replaceChildren(...shown(JSON.stringify(node, null, 2)));
    };
    const body = graph.nodes.map((node) => {
      const row = el("tr", { className: node.outcome === "BLOCKED" || node.outcome === "REJECTED" ? "blocked" : "",
        "data-node": node.node_id },
        el("td", {}, when(node.started_at)),
        el("td", {}, node.node_type),
        el("td", { className: "mono" }, node.agent_id),
        el("td", { className: "mono tool" }, [node.action.server, node.action.tool].filter(Boolean).join(" / ")),
        el("td", {}, node.decision ? pill(node.decision.effect) : "—",
          node.decision && node.decision.rule_id ? el("div", { className: "mono" }, node.decision.rule_id) : null),
        el("td", {}, score(node.verifier)),
        el("td", {}, pill(node.outcome)),
        el("td", { className: "reason" }, node.block_reason || (node.decision ? node.decision.reason : "")),
        el("td", {}, el("a", { href: route("drift", workflowId, node.node_id) }, "drift path")));
      row.addEventListener("click", (event) => {
        if (!(event.target instanceof HTMLAnchorElement)) select(node);
      });
      rows.set(node.node_id, row);
      return row;
    });
    view.replaceChildren(
      el("h2", {}, "Workflow ", el("span", { className: "mono" }, graph.workflow_id)),
      el("div", { className: "summary" },
        el("div", {}, el("span", {}, "nodes"), String(graph.node_count)),
        el("div", {}, el("span", {}, "violations"), String(graph.violation_count)),
        el("div", {}, el("span", {}, "agents"), graph.agents.join(", ")),
        el("div", {}, el("span", {}, "first seen"), when(graph.first_seen)),
        el("div", {}, el("span", {}, "last seen"), when(graph.last_seen))),
      graph.truncated ? el("p", {}, "Only the first nodes are drawn; the table below pages through the rest.") : null,
      el("div", { className: "legend" }, "Time runs down. Grey: CAUSED_BY. Dashed amber: INFORMED_BY (data flow). "
        + "Red nodes were blocked."),
      drawGraph(graph, select),
      table(["started", "type", "agent", "server / tool", "policy", "score / threshold", "outcome", "reason", ""], body),
      detail);
  }

  function drawGraph(graph, select) {
    // A layered drawing, one row per node in time order; sessions side by side. Enough to
    // see what caused and informed what; the table holds the detail.
    const svgNs = "http://www.w3.org/2000/svg";
    const svg = (tag, attrs, text) => {
      const node = document.createElementNS(svgNs, tag);
      for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
      if (text !== undefined) node.textContent = plain(text);
      return node;
    };
    const sessions = [...new Set(graph.nodes.map((n) => n.session_id))];
    const place = new Map();
    graph.nodes.forEach((node, index) => {
      place.set(node.node_id, { x: 40 + 220 * sessions.indexOf(node.session_id), y: 24 + 34 * index, node });
    });
    const width = Math.max(420, 40 + 220 * sessions.length + 200);
    const height = 24 + 34 * Math.max(graph.nodes.length, 1);
    const root = svg("svg", { class: "graph", width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
      "aria-label": "causal graph" });
    for (const edge of graph.edges) {
      const from = place.get(edge.source);
      const to = place.get(edge.target);
      if (!from || !to) continue;
      const line = svg("line", { x1: from.x, y1: from.y, x2: to.x + (from.x === to.x ? 14 : 0), y2: to.y,
        class: KNOWN.has(edge.type) ? edge.type : "other" });
      line.append(svg("title", {}, `${edge.type}: ${edge.reason}`));
      root.append(line);
    }
    for (const { x, y, node } of place.values()) {
      const kind = node.outcome === "BLOCKED" || node.outcome === "REJECTED" || node.outcome === "FORWARDED"
        ? node.outcome : "other";
      const dot = svg("circle", { cx: x, cy: y, r: 8, class: kind, "data-node": node.node_id });
      dot.append(svg("title", {}, `${node.node_type} ${node.action.tool} ${node.outcome}`));
      dot.addEventListener("click", () => select(node));
      root.append(dot, svg("text", { x: x + 14, y: y + 4 }, `${node.action.tool || node.node_type}`.slice(0, 40)));
    }
    return root;
  }

  async function drift(workflowId, nodeId) {
    const path = await api(
      "/graphs/" + segment(workflowId) + "/drift-path/" + segment(nodeId));
    const rows = path.hops.map((hop, index) => el("tr", {},
      el("td", {}, String(index)),
      el("td", { className: "mono" }, hop.node_id),
      el("td", {}, hop.node_type),
      el("td", { className: "mono" }, hop.agent_id),
      el("td", { className: "mono" }, [hop.server, hop.tool].filter(Boolean).join(" / ")),
      el("td", {}, pill(hop.outcome)),
      el("td", {}, hop.via || "—"),
      el("td", { className: "reason" }, hop.reason),
      el("td", { className: "mono" }, hop.taint.join("\n"))));
    view.replaceChildren(
      el("h2", {}, "Drift path of ", el("span", { className: "mono" }, nodeId)),
      el("p", {}, "Workflow ", el("a", { href: route("workflow", workflowId), className: "mono" }, workflowId),
        ". The walk ended at: ", el("strong", { id: "origin" }, path.origin), "."),
      table(["hop", "node", "type", "agent", "server / tool", "outcome", "via", "reason", "provenance"], rows));
  }

  async function violations(cursor, into) {
    const page = await api("/audit/violations", { limit: PAGE, cursor });
    const rows = page.items.map((v) => el("tr", { className: "blocked" },
      el("td", {}, when(v.timestamp)),
      el("td", { className: "mono" }, el("a", { href: route("workflow", v.workflow_id) }, v.workflow_id)),
      el("td", { className: "mono" }, v.agent_id),
      el("td", { className: "mono tool" }, [v.server, v.tool].filter(Boolean).join(" / ")),
      el("td", { className: "mono" }, v.rule_id),
      el("td", {}, v.deviation_score === null ? "—" : Number(v.deviation_score).toFixed(2)),
      el("td", {}, pill(v.outcome)),
      el("td", { className: "reason" }, v.reason),
      el("td", {}, el("a", { href: route("drift", v.workflow_id, v.node_id) }, "drift path"))));
    const target = into || view;
    if (!into) {
      target.replaceChildren(el("h2", {}, "Violations"),
        table(["time", "workflow", "agent", "server / tool", "rule", "score", "outcome", "reason", ""], []));
      if (!page.items.length) target.append(el("p", {}, "No violation recorded."));
    }
    target.querySelector("tbody").append(...rows);
    more(target, page.next_cursor, (next) => violations(next, target));
  }

  // The whole chain: a walk that stopped at the service's deadline is continued from its
  // `next` (each part linked to the last) until the head or a problem.
  async function verifyChain() {
    let answer = await api("/audit/verify");
    let records = answer.records;
    let checkpoints = answer.checkpoints;
    while (answer.stopped && answer.next && !answer.problem) {
      say(`Verifying the audit chain: ${records} records so far…`);
      answer = await api("/audit/verify", { after: answer.next.after, anchor: answer.next.anchor });
      records += answer.records;
      checkpoints += answer.checkpoints;
    }
    return { ...answer, records, checkpoints };
  }

  async function audit() {
    const verify = await verifyChain();
    const slo = await api("/audit/slo");
    const problem = verify.problem;
    const verdict = verify.ok
      ? el("p", { id: "chain" }, pill("ok"), ` The audit chain holds: ${verify.records} records checked, `
        + `${verify.checkpoints} signed checkpoints verified.`)
      : el("p", { id: "chain" }, pill("bad"), " The audit chain is broken",
        problem ? `: record #${problem.sequence} (${problem.kind}): ` : ".",
        problem ? el("span", { className: "mono" }, problem.detail) : null);
    const latency = Object.entries(slo.latency_ms || {}).map(([k, v]) => `${k} ${Number(v).toFixed(2)} ms`).join(", ");
    view.replaceChildren(
      el("h2", {}, "Audit"),
      verdict,
      verify.head ? el("p", { className: "mono" }, "Head: " + JSON.stringify(verify.head)) : null,
      el("h3", {}, `Decisions in the last ${slo.window_s} s`),
      el("div", { className: "summary" },
        el("div", {}, el("span", {}, "decisions"), String(slo.decisions)),
        el("div", {}, el("span", {}, "blocked"), String(slo.blocked)),
        el("div", {}, el("span", {}, "block rate"), (100 * slo.block_rate).toFixed(1) + "%"),
        el("div", {}, el("span", {}, "verifier fallbacks"), String(slo.verifier_fallbacks)),
        el("div", {}, el("span", {}, "decision latency"), latency || "—")),
      table(["rule", "decisions", "blocked"], (slo.rules || []).map((rule) => el("tr", {},
        el("td", { className: "mono" }, rule.rule_id), el("td", {}, String(rule.decisions)),
        el("td", {}, String(rule.blocked))))));
  }

  // ---- approvals and the verifier's queue, on the proxy ------------------------------------
  // The two lists differ only in names (proxy/_queue_api.py is the approvals handler renamed).
  const PARKED = {
    approvals: { path: "/v1/approvals", id: "approval_id", title: "Approval requests", yes: "approve", no: "deny" },
    queue: { path: "/v1/queue", id: "queue_id", title: "Verifier queue", yes: "release", no: "reject" },
  };

  // What a parked call does, whole: the operator decides on its arguments too (delete_file
  // of /tmp/old or of /etc), and on the prompt, resource or agent it names — never on a tool
  // name alone, which every call of that tool shares. The arguments are as the proxy shows
  // them (redacted, or a note that they were too long to show).
  function called(action) {
    const what = action.tool || action.prompt || action.resource || action.target_agent || action.method;
    const args = action.arguments === undefined ? {} : action.arguments;
    return [el("div", {}, [action.server, what].filter(Boolean).join(" / ")),
      el("pre", { className: "args" }, JSON.stringify(args, null, 2))];
  }

  function epoch(seconds) {
    return typeof seconds === "number" ? when(new Date(seconds * 1000).toISOString()) : "—";
  }

  async function parked(kind, before, into) {
    const names = PARKED[kind];
    const page = await api(names.path, { state: "pending", limit: PAGE, before }, config.proxy_url);
    const rows = page.items.map((item) => {
      const id = String(item[names.id]);
      const reason = el("input", { type: "text", maxlength: "1000", placeholder: "reason (optional)",
        "aria-label": "reason for " + id });
      const decide = (step) => guard(async () => {
        await api(`${names.path}/${segment(id)}/${step}`, {}, config.proxy_url, { reason: reason.value });
        await parked(kind);
        return `${id}: ${step} done.`;
      });
      const action = item.action || {};
      return el("tr", { "data-id": id },
        el("td", {}, epoch(item.created_at)),
        el("td", { className: "mono" }, item.agent_id),
        el("td", { className: "mono tool" }, called(action)),
        el("td", { className: "mono" }, item.rule_id),
        el("td", { className: "reason" }, item.reason),
        el("td", { className: "mono" }, item.workflow_id
          ? el("a", { href: route("workflow", item.workflow_id) }, item.workflow_id) : "—"),
        el("td", {}, epoch(item.expires_at)),
        el("td", {}, reason,
          el("button", { type: "button", className: "yes", onclick: () => decide(names.yes) }, names.yes),
          el("button", { type: "button", className: "no", onclick: () => decide(names.no) }, names.no)));
    });
    const target = into || view;
    if (!into) {
      target.replaceChildren(el("h2", {}, names.title),
        el("p", { className: "legend" }, "Pending only; decided ones are in each call's workflow. Deciding "
          + "needs an operator token; nobody decides a call they made."),
        table(["asked", "agent", "server / tool, arguments", "rule", "reason", "workflow", "expires", ""], []));
      if (!page.items.length) target.append(el("p", {}, "Nothing is waiting."));
    }
    target.querySelector("tbody").append(...rows);
    more(target, page.next_before, (next) => parked(kind, next, target));
  }

  // ---- routing ------------------------------------------------------------------------------
  function parts() {
    const hash = location.hash.replace(/^#\/?/, "");
    try {
      return hash ? hash.split("/").map((part) => decodeURIComponent(part)) : ["workflows"];
    } catch (error) {
      return ["workflows"];
    }
  }

  // `work` may return what to say when it is done.
  async function guard(work) {
    const started = generation;
    say("Loading…");
    try {
      const done = await work();
      if (started === generation) say(done || "");
    } catch (error) {
      if (error instanceof Superseded || started !== generation) return;
      say(error instanceof ApiError ? error.message : "The page failed: " + error.message, true);
    }
  }

  function render() {
    generation += 1;
    const [name, ...args] = parts();
    for (const link of document.querySelectorAll("nav a")) {
      link.classList.toggle("current", link.dataset.nav === name);
    }
    view.replaceChildren();
    if (!token) {
      say("Sign in with an operator or auditor token (bastion token issue --agent you --role auditor).", true);
      return;
    }
    if (name === "workflow" && args.length === 1) return guard(() => workflow(args[0]));
    if (name === "drift" && args.length === 2) return guard(() => drift(args[0], args[1]));
    if (name === "violations") return guard(() => violations());
    if (name === "audit") return guard(() => audit());
    if ((name === "approvals" || name === "queue") && config.proxy_url) return guard(() => parked(name));
    return guard(() => workflows());
  }

  document.getElementById("signin").addEventListener("submit", (event) => {
    event.preventDefault();
    const given = tokenInput.value.trim();
    tokenInput.value = "";
    if (given) token = given;
    signout.hidden = !token;
    render();
  });
  signout.addEventListener("click", () => {
    token = "";
    signout.hidden = true;
    render();
  });
  window.addEventListener("hashchange", render);
  signout.hidden = !token;
  // Where the proxy is (BASTION_DASHBOARD_PROXY_URL), if the graph was told: approvals
  // and the queue are shown only then.
  fetch("/ui/config.json", { credentials: "omit", cache: "no-store" })
    .then((response) => (response.ok ? response.json() : {}))
    .catch(() => ({}))
    .then((loaded) => {
      const proxy = loaded && typeof loaded.proxy_url === "string" ? loaded.proxy_url : "";
      config.proxy_url = /^https?:\/\/[^/?#@\\]+$/.test(proxy) ? proxy : "";
      for (const link of document.querySelectorAll("nav a[data-proxy]")) link.hidden = !config.proxy_url;
      render();
    });
})();

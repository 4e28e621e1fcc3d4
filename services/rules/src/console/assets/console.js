// The Firewall page. Plain JavaScript, no framework: it renders the rules
// service's JSON API (/api/v1/...) and follows the instance's live stream
// (server-sent events read with fetch, since EventSource cannot send the
// bearer header). Every rule of the product is decided by the service; the
// page shows its answers, including its error messages at the field they name.
"use strict";

(() => {
  const TOKEN_KEY = "cassette.token";
  // The seed's common ports, offered as quick picks.
  const QUICK_PICKS = [
    [3000, "Rails/Node dev server"],
    [5432, "PostgreSQL"],
    [6379, "Redis"],
    [8080, "Alternative HTTP"],
    [3306, "MySQL"],
    [27017, "MongoDB"],
  ];
  const DATABASE_PORTS = new Set([5432, 3306, 6379, 27017]);
  const DATABASE_ADVICE =
    "Database ports should usually stay closed. Access databases from your app on localhost, " +
    "not over the internet. If you must expose a database, use strong passwords and allowlists.";
  // How long a change the page offers to undo waits for "Keep this change".
  const UNDO_WITHIN = "120s";

  const SSH_WARNING =
    "If you disable SSH, you'll only have web console access. " +
    "SSH sessions already open are cut too. " +
    "To get back in, use the web console from your instance page and re-enable port 22 there.";
  const PORT_IN_USE_HINT =
    "Each port+protocol combination can only have one rule. Delete the existing rule first, or choose a different port.";

  const main = document.getElementById("main");
  const announcer = document.getElementById("announce");

  // ---- DOM -----------------------------------------------------------------

  function h(tag, attributes, ...children) {
    const element = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
      else if (name === "class") element.className = value;
      else element.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      element.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return element;
  }

  function trashIcon() {
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    const path = document.createElementNS(ns, "path");
    path.setAttribute(
      "d",
      "M9 3h6l1 2h4v2H4V5h4l1-2zm-3 6h12l-1 11a2 2 0 0 1-2 2H9a2 2 0 0 1-2-2L6 9zm4 2v9h2v-9h-2zm4 0v9h2v-9h-2z",
    );
    svg.append(path);
    return svg;
  }

  function announce(text) {
    announcer.textContent = "";
    window.setTimeout(() => (announcer.textContent = text), 50);
  }

  function show(...children) {
    main.replaceChildren(...children);
    main.setAttribute("aria-busy", "false");
  }

  // ---- API -----------------------------------------------------------------

  class ApiError extends Error {
    constructor(httpStatus, error) {
      super(error.message || `HTTP ${httpStatus}`);
      this.httpStatus = httpStatus;
      this.code = error.code || "";
      this.fieldViolations = error.fieldViolations || [];
      this.resource = error.resource || null;
    }
  }

  function headers(extra) {
    const result = Object.assign({ Accept: "application/json" }, extra);
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) result.Authorization = `Bearer ${token}`;
    return result;
  }

  // A 401 shows the sign-in form, unless `signingIn` (the form's own check).
  async function api(method, path, body, signingIn) {
    const init = { method, headers: headers(), cache: "no-store" };
    const hadToken = Boolean(sessionStorage.getItem(TOKEN_KEY));
    // The console takes a change only as JSON (a DELETE too): a type no page
    // of another site can send without asking first.
    if (method !== "GET") init.headers["Content-Type"] = "application/json";
    if (body !== undefined) init.body = JSON.stringify(body);
    let response;
    try {
      response = await fetch(path, init);
    } catch (cause) {
      throw new ApiError(0, { code: "UNAVAILABLE", message: "The rules service cannot be reached." });
    }
    const text = await response.text();
    let json = {};
    try {
      json = text ? JSON.parse(text) : {};
    } catch (_) {
      json = { error: { message: text } };
    }
    if (!response.ok) {
      const error = new ApiError(response.status, json.error || { message: response.statusText });
      // A first visit is asked to sign in, not told it failed; a token that
      // stopped working (expired, revoked) is told why.
      if (response.status === 401 && !signingIn) showLogin(hadToken ? `Signed out: ${error.message}` : "");
      throw error;
    }
    return json;
  }

  function requestId() {
    return window.crypto && crypto.randomUUID ? crypto.randomUUID() : undefined;
  }

  // The instance's live stream: `firewall` events carry the whole firewall.
  // Reconnects (1 s, then up to 10 s apart) while the page stays open; an
  // `error` event (deleted, no longer allowed) ends it.
  function follow(instanceId, onFirewall, onEnd, onConnection) {
    let controller = null;
    let stopped = false;
    let delay = 1000;
    const connect = async () => {
      controller = new AbortController();
      try {
        const response = await fetch(`/api/v1/firewalls/${encodeURIComponent(instanceId)}/live`, {
          headers: headers({ Accept: "text/event-stream" }),
          signal: controller.signal,
          cache: "no-store",
        });
        if (!response.ok) {
          const json = await response.json().catch(() => ({}));
          const error = new ApiError(response.status, json.error || {});
          if (response.status === 401) showLogin(error.message);
          onEnd(error);
          return;
        }
        onConnection(true);
        delay = 1000;
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            let event = "message";
            const data = [];
            for (const line of block.split("\n")) {
              if (line.startsWith("event:")) event = line.slice(6).trim();
              else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
            }
            if (!data.length) continue;
            const payload = JSON.parse(data.join("\n"));
            if (event === "firewall") onFirewall(payload);
            else if (event === "error") {
              const error = new ApiError(payload.error.status, payload.error);
              if (error.code !== "UNAVAILABLE") {
                stopped = true;
                onEnd(error);
                return;
              }
            }
          }
        }
      } catch (error) {
        if (stopped) return;
      }
      onConnection(false);
      if (!stopped) {
        window.setTimeout(connect, delay);
        delay = Math.min(delay * 2, 10000);
      }
    };
    connect();
    return () => {
      stopped = true;
      if (controller) controller.abort();
    };
  }

  // ---- formatting ----------------------------------------------------------

  // Diagnose's checks, in the seed's words.
  const CHECK_LABELS = {
    rule_exists: "A rule accepts the port",
    rule_enabled: "The rule is enabled (its toggle is green)",
    rule_applied: "The enforcer applied it",
    rule_in_kernel: "It is in the instance's firewall",
    service_listening: "A service is listening on the port",
    packets_arriving: "Connections reach the port",
  };
  const CHECK_RESULTS = {
    CHECK_RESULT_PASS: ["pass", "✓", "passed"],
    CHECK_RESULT_FAIL: ["fail", "✗", "failed"],
    CHECK_RESULT_UNKNOWN: ["unknown", "?", "unknown"],
  };

  const protocolName = (protocol) => (protocol === "PROTOCOL_UDP" ? "UDP" : "TCP");
  // "5432", or "27015-27030" for a rule that covers a range.
  const portsText = (rule) => {
    const range = rule.portRange;
    return range && range.first !== range.last ? `${range.first}-${range.last}` : String(rule.port);
  };
  // The ports typed into a Port field: one, or "first-last".
  const typedRange = (raw) => {
    const m = /^(\d+)\s*-\s*(\d+)$/.exec(raw);
    return m ? { first: Number(m[1]), last: Number(m[2]) } : null;
  };

  function seconds(duration) {
    // protobuf JSON durations: "0.002104s"
    return duration ? parseFloat(String(duration).replace(/s$/, "")) : null;
  }

  function latency(duration) {
    const s = seconds(duration);
    if (s === null || Number.isNaN(s)) return "";
    if (s < 1) return `${(s * 1000).toFixed(s < 0.01 ? 1 : 0)} ms`;
    return `${s.toFixed(1)} s`;
  }

  function ago(timestamp) {
    if (!timestamp) return "";
    const s = Math.max(0, (Date.now() - Date.parse(timestamp)) / 1000);
    if (s < 5) return "just now";
    if (s < 60) return `${Math.round(s)} s ago`;
    if (s < 3600) return `${Math.round(s / 60)} min ago`;
    if (s < 86400) return `${Math.round(s / 3600)} h ago`;
    return new Date(timestamp).toLocaleDateString();
  }

  function ruleStatus(rule) {
    switch (rule.status) {
      case "RULE_STATUS_APPLIED":
        return "applied";
      case "RULE_STATUS_FAILED":
        return "failed";
      default:
        return "pending";
    }
  }

  function sortRules(rules) {
    return [...rules].sort(
      (a, b) =>
        (b.isDefault ? 1 : 0) - (a.isDefault ? 1 : 0) ||
        a.port - b.port ||
        protocolName(a.protocol).localeCompare(protocolName(b.protocol)),
    );
  }

  // ---- confirmation --------------------------------------------------------

  // Resolves false (cancelled) or { undo }: with offerUndo, whether "Undo in
  // 2 minutes unless I confirm" stayed ticked (it starts ticked).
  function confirmAction(title, message, confirmLabel, offerUndo) {
    const dialog = document.getElementById("confirm");
    document.getElementById("confirm-title").textContent = title;
    document.getElementById("confirm-message").textContent = message;
    const undo = document.getElementById("confirm-undo");
    const undoBox = document.getElementById("confirm-undo-box");
    undo.hidden = !offerUndo;
    undoBox.checked = true;
    const ok = document.getElementById("confirm-ok");
    const cancel = document.getElementById("confirm-cancel");
    ok.textContent = confirmLabel;
    return new Promise((resolve) => {
      const finish = (answer) => {
        ok.removeEventListener("click", yes);
        cancel.removeEventListener("click", no);
        dialog.removeEventListener("cancel", no);
        dialog.close();
        resolve(answer);
      };
      const yes = () => finish({ undo: Boolean(offerUndo) && undoBox.checked });
      const no = (event) => {
        if (event) event.preventDefault();
        finish(false);
      };
      ok.addEventListener("click", yes);
      cancel.addEventListener("click", no);
      dialog.addEventListener("cancel", no);
      dialog.showModal();
      cancel.focus();
    });
  }

  // ---- sign-in -------------------------------------------------------------

  function showLogin(reason) {
    sessionStorage.removeItem(TOKEN_KEY);
    renderWho(null);
    const token = h("input", {
      id: "token",
      type: "password",
      autocomplete: "current-password",
      required: true,
      spellcheck: "false",
    });
    const alert = h("p", { class: "form-error", role: "alert", id: "login-error" }, ...prose(reason || ""));
    const form = h(
      "form",
      {
        class: "card login",
        novalidate: true,
        onsubmit: async (event) => {
          event.preventDefault();
          sessionStorage.setItem(TOKEN_KEY, token.value.trim());
          try {
            await api("GET", "/api/v1/whoami", undefined, true);
            start();
          } catch (error) {
            sessionStorage.removeItem(TOKEN_KEY);
            alert.replaceChildren(...prose(error.message));
          }
        },
      },
      h("h1", {}, "Sign in"),
      h("p", { class: "muted" }, "Paste the API token your administrator gave you. It is kept in this tab only and sent as a bearer header."),
      h("div", { class: "field" }, h("label", { for: "token" }, "API token"), token),
      alert,
      h("button", { type: "submit", class: "button primary" }, "Sign in"),
    );
    show(form);
    token.focus();
  }

  // A service message as text, its `quoted` parts as code (not backticks).
  function prose(message) {
    return String(message)
      .split("`")
      .map((part, i) => (i % 2 ? h("code", {}, part) : part))
      .filter((part) => part !== "");
  }

  function renderWho(who) {
    const nav = document.getElementById("who");
    if (!who) {
      nav.replaceChildren();
      return;
    }
    const items = [h("span", { class: "principal", title: who.caller }, who.development ? "development mode" : who.actor)];
    if (sessionStorage.getItem(TOKEN_KEY)) {
      items.push(
        h("button", { type: "button", class: "link", onclick: () => showLogin("Signed out.") }, "Sign out"),
      );
    }
    nav.replaceChildren(...items);
  }

  // ---- instance list -------------------------------------------------------

  function syncBadge(sync) {
    const state = (sync && sync.state) || "SYNC_STATE_NO_ENFORCER";
    const labels = {
      SYNC_STATE_IN_SYNC: ["In sync", "ok"],
      SYNC_STATE_PENDING: ["Applying…", "pending"],
      SYNC_STATE_ERROR: ["Error", "failed"],
      SYNC_STATE_NO_ENFORCER: ["No enforcer", "idle"],
    };
    const [label, tone] = labels[state] || labels.SYNC_STATE_NO_ENFORCER;
    return h("span", { class: `badge ${tone}`, "data-sync-state": state }, label);
  }

  async function showInstances() {
    document.title = "Instances · Cassette";
    const loading = h("tr", { class: "loading-row" }, h("td", { colspan: "3", class: "muted", role: "status" }, "Loading…"));
    const body = h("tbody", {}, loading);
    const table = h(
      "table",
      { class: "table instances", "aria-busy": "true" },
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Instance"), h("th", { scope: "col" }, "Open ports"), h("th", { scope: "col" }, "Enforcer"))),
      body,
    );
    const more = h("button", { type: "button", class: "button secondary", hidden: true }, "Show more");
    const alert = h("p", { class: "form-error", role: "alert" });
    show(h("section", { class: "card" }, h("h1", {}, "Instances"), alert, table, more));
    let token = "";
    const load = async () => {
      try {
        const page = await api("GET", `/api/v1/firewalls?pageSize=100${token ? `&pageToken=${encodeURIComponent(token)}` : ""}`);
        loading.remove();
        table.removeAttribute("aria-busy");
        for (const firewall of page.firewalls || []) {
          // A port only some networks may reach says so.
          const open = sortRules(firewall.rules || [])
            .filter((r) => r.enabled)
            .map((r) => {
              const port = `${portsText(r)}/${protocolName(r.protocol)}`;
              const sources = r.sources || [];
              if (!sources.length) return port;
              return `${port} from ${sources.length === 1 ? sources[0] : `${sources.length} networks`}`;
            });
          body.append(
            h(
              "tr",
              { "data-instance-id": firewall.instanceId },
              h("th", { scope: "row" }, h("a", { href: `/instances/${encodeURIComponent(firewall.instanceId)}` }, firewall.instanceId)),
              h("td", {}, open.length ? open.join(", ") : h("span", { class: "muted" }, "none")),
              h("td", {}, syncBadge(firewall.sync)),
            ),
          );
        }
        token = page.nextPageToken || "";
        more.hidden = !token;
        if (!body.children.length) {
          table.replaceWith(
            h("p", { class: "empty" }, "No instances you may see have a firewall yet. Create one with ", h("code", {}, "cassette firewall create web-1"), "."),
          );
        }
      } catch (error) {
        loading.remove();
        table.removeAttribute("aria-busy");
        if (error.httpStatus !== 401) alert.textContent = error.message;
      }
    };
    more.addEventListener("click", load);
    await load();
  }

  // ---- the Firewall section ------------------------------------------------

  function showFirewall(instanceId) {
    document.title = `${instanceId} · Firewall · Cassette`;
    let firewall = null;
    const rows = new Map();

    const enforcer = h("div", { class: "enforcer", id: "enforcer" });
    const tbody = h("tbody");
    const pageAlert = h("p", { class: "form-error", role: "alert", id: "page-error" });
    const table = h(
      "table",
      { class: "table rules", "aria-label": "Firewall rules" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          h("th", { scope: "col" }, "Port"),
          h("th", { scope: "col" }, "Protocol"),
          h("th", { scope: "col" }, "Description"),
          h("th", { scope: "col" }, "Status"),
          h("th", { scope: "col" }, "Accepting"),
          h("th", { scope: "col" }, h("span", { class: "visually-hidden" }, "Actions")),
        ),
      ),
      tbody,
    );

    // The Add Port form.
    const port = h("input", { id: "port", name: "port", type: "text", inputmode: "numeric", autocomplete: "off", placeholder: "1-65535", "aria-describedby": "port-error port-advice" });
    const protocol = h("select", { id: "protocol", name: "protocol" }, h("option", { value: "PROTOCOL_TCP" }, "TCP"), h("option", { value: "PROTOCOL_UDP" }, "UDP"));
    const description = h("input", { id: "description", name: "description", type: "text", maxlength: "256", autocomplete: "off", placeholder: "What listens there (recommended)", "aria-describedby": "description-error" });
    const fieldErrors = {
      port: h("p", { class: "field-error", id: "port-error", role: "alert" }),
      protocol: h("p", { class: "field-error", id: "protocol-error", role: "alert" }),
      description: h("p", { class: "field-error", id: "description-error", role: "alert" }),
    };
    const inputs = { port, protocol, description };
    const formAlert = h("p", { class: "form-error", role: "alert", id: "add-error" });
    const advice = h("p", { class: "advice", id: "port-advice", hidden: true }, DATABASE_ADVICE);
    const notice = h("div", { class: "notice", id: "add-notice", role: "status", hidden: true });
    const submit = h("button", { type: "submit", class: "button primary" }, "Add Port");
    const picks = h(
      "div",
      { class: "picks", role: "group", "aria-label": "Common ports" },
      QUICK_PICKS.map(([p, what]) =>
        h(
          "button",
          {
            type: "button",
            class: "chip",
            "data-port": p,
            onclick: () => {
              port.value = String(p);
              description.value = what;
              protocol.value = "PROTOCOL_TCP";
              updateAdvice();
              port.focus();
            },
          },
          h("strong", {}, String(p)),
          ` ${what}`,
        ),
      ),
    );
    const clearErrors = () => {
      for (const [name, element] of Object.entries(fieldErrors)) {
        element.textContent = "";
        inputs[name].removeAttribute("aria-invalid");
      }
      formAlert.textContent = "";
    };
    const updateAdvice = () => {
      const raw = port.value.trim();
      const range = typedRange(raw) || { first: Number(raw), last: Number(raw) };
      advice.hidden = ![...DATABASE_PORTS].some((p) => range.first <= p && p <= range.last);
    };
    port.addEventListener("input", updateAdvice);

    const form = h(
      "form",
      {
        class: "add-port",
        novalidate: true,
        "aria-labelledby": "add-port-title",
        onsubmit: async (event) => {
          event.preventDefault();
          clearErrors();
          notice.hidden = true;
          const raw = port.value.trim();
          const range = typedRange(raw);
          const body = {
            protocol: protocol.value,
            description: description.value,
            requestId: requestId(),
          };
          // A range goes as port_range; a whole number as one; anything
          // else as typed, for the service to name.
          if (range) body.portRange = range;
          else body.port = /^\d+$/.test(raw) ? Number(raw) : raw;
          submit.disabled = true;
          try {
            const answer = await api("POST", `/api/v1/firewalls/${encodeURIComponent(instanceId)}/rules`, body);
            update(answer);
            form.reset();
            updateAdvice();
            const warnings = answer.warnings || [];
            if (warnings.length) {
              notice.replaceChildren(...warnings.map((w) => h("p", {}, w.message)));
              notice.hidden = false;
            }
            announce(`Port ${range ? `${range.first}-${range.last}` : body.port}/${protocolName(body.protocol)} added; applying.`);
          } catch (error) {
            showError(error);
          } finally {
            submit.disabled = false;
          }
        },
      },
      h("h2", { id: "add-port-title" }, "Add Port"),
      picks,
      h(
        "div",
        { class: "fields" },
        h("div", { class: "field port" }, h("label", { for: "port" }, "Port"), port, fieldErrors.port),
        h("div", { class: "field protocol" }, h("label", { for: "protocol" }, "Protocol"), protocol, fieldErrors.protocol),
        h("div", { class: "field description" }, h("label", { for: "description" }, "Description"), description, fieldErrors.description),
        h("div", { class: "field submit" }, submit),
      ),
      advice,
      formAlert,
      notice,
      h("p", { class: "hint" }, "TCP is right for web servers, databases, APIs and most applications; UDP for game servers, VoIP, DNS and streaming. Not sure? Use TCP."),
    );

    function showError(error) {
      let placed = false;
      for (const violation of error.fieldViolations) {
        const field = String(violation.field || "").split(/[.[]/)[0];
        // A range's errors belong to the Port field it was typed into.
        const name = field === "port_range" || field === "portRange" ? "port" : field;
        if (fieldErrors[name]) {
          fieldErrors[name].textContent = violation.description;
          inputs[name].setAttribute("aria-invalid", "true");
          placed = true;
        }
      }
      if (error.code === "ALREADY_EXISTS") {
        // The existing rule's id means nothing to a person: its row is on the page.
        const message = error.resource ? error.message.replace(`: ${error.resource.name}`, "") : error.message;
        formAlert.textContent = `${message}. ${PORT_IN_USE_HINT}`;
      } else if (!placed && error.httpStatus !== 401) {
        formAlert.textContent = error.message;
      }
      const first = Object.entries(fieldErrors).find(([, element]) => element.textContent);
      if (first) inputs[first[0]].focus();
    }

    async function change(method, path, body, what) {
      pageAlert.textContent = "";
      try {
        const answer = await api(method, path, body);
        update(answer);
        announce(what);
      } catch (error) {
        if (error.httpStatus !== 401) pageAlert.textContent = error.message;
      }
    }

    async function toggle(rule, button) {
      const enable = !rule.enabled;
      const body = { enabled: enable, requestId: requestId() };
      if (!enable && rule.isDefault && rule.port === 22 && protocolName(rule.protocol) === "TCP") {
        const sure = await confirmAction("Disable SSH?", SSH_WARNING, "Disable SSH", true);
        if (!sure) return;
        if (sure.undo) body.confirmWithin = UNDO_WITHIN;
      }
      button.disabled = true;
      await change(
        "PATCH",
        `/api/v1/firewalls/${encodeURIComponent(instanceId)}/rules/${encodeURIComponent(rule.id)}`,
        body,
        `Port ${portsText(rule)}/${protocolName(rule.protocol)} ${enable ? "accepting" : "blocking, open connections included"}; applying.`,
      );
      button.disabled = false;
    }

    async function remove(rule) {
      const what = `${portsText(rule)}/${protocolName(rule.protocol)}`;
      const sure = await confirmAction(
        `Delete the rule for port ${what}?`,
        `Connections to port ${what}${rule.description ? ` (${rule.description})` : ""} will be blocked, and those already open are cut. This cannot be undone; add the port again to reopen it.`,
        "Delete rule",
      );
      if (!sure) return;
      await change(
        "DELETE",
        `/api/v1/firewalls/${encodeURIComponent(instanceId)}/rules/${encodeURIComponent(rule.id)}?requestId=${encodeURIComponent(requestId() || "")}`,
        undefined,
        `Rule for port ${what} deleted.`,
      );
    }

    // One row per rule, kept across updates so focus and hover survive.
    function row(rule) {
      let r = rows.get(rule.id);
      if (!r) {
        const toggleButton = h("button", { type: "button", role: "switch", class: "switch" }, h("span", { class: "knob", "aria-hidden": "true" }));
        toggleButton.addEventListener("click", () => toggle(r.rule, toggleButton));
        const deleteButton = rule.isDefault
          ? h("span", { class: "default-tag", title: "Default rules can be disabled but not deleted" }, "Default")
          : h("button", { type: "button", class: "delete", "aria-label": "Delete rule", title: "Delete rule" }, trashIcon());
        if (!rule.isDefault) deleteButton.addEventListener("click", () => remove(r.rule));
        const target = `${portsText(rule)}/${protocolName(rule.protocol)}`;
        const checkButton = h("button", { type: "button", class: "check", "aria-label": `Troubleshoot port ${target}`, title: "Can't connect? Check this port" }, "Check");
        checkButton.addEventListener("click", () => troubleshoot(r.rule));
        r = {
          tr: h("tr"),
          port: h("td", { class: "port", "data-label": "Port" }),
          protocol: h("td", { class: "protocol", "data-label": "Protocol" }),
          description: h("td", { class: "description", "data-label": "Description" }),
          status: h("td", { class: "status", "data-label": "Status" }),
          toggle: h("td", { class: "toggle", "data-label": "Accepting" }, toggleButton),
          actions: h("td", { class: "actions" }, checkButton, h("span", { class: "slot" }, deleteButton)),
          toggleButton,
        };
        r.tr.append(r.port, r.protocol, r.description, r.status, r.toggle, r.actions);
        rows.set(rule.id, r);
      }
      r.rule = rule;
      const status = ruleStatus(rule);
      const proto = protocolName(rule.protocol);
      r.tr.setAttribute("data-rule-id", rule.id);
      r.tr.setAttribute("data-status", status);
      r.tr.setAttribute("data-port", rule.port);
      r.tr.setAttribute("data-ports", portsText(rule));
      r.tr.setAttribute("data-protocol", proto.toLowerCase());
      r.tr.classList.toggle("blocking", !rule.enabled);
      r.port.textContent = portsText(rule);
      r.protocol.textContent = proto;
      r.description.replaceChildren(
        ...[
          rule.description || h("span", { class: "muted" }, "—"),
          (rule.sources || []).length ? h("span", { class: "sources" }, `from ${rule.sources.join(", ")}`) : null,
          rule.expireTime ? h("span", { class: "sources" }, `expires ${new Date(rule.expireTime).toLocaleString()}`) : null,
          rule.unconfirmedRevision && rule.unconfirmedRevision !== "0" ? h("span", { class: "sources unconfirmed-rule" }, `unconfirmed: undone at ${new Date(rule.revertTime).toLocaleTimeString()} unless kept`) : null,
        ].filter(Boolean),
      );
      const sync = firewall.sync || {};
      let statusText;
      if (status === "applied") {
        const measured = String(sync.appliedRevision || "0") === String(rule.revision || "0") ? latency(sync.lastAckLatency) : "";
        statusText = [h("span", { class: "dot ok", "aria-hidden": "true" }), measured ? `Applied in ${measured}` : "Applied"];
      } else if (status === "failed") {
        statusText = [h("span", { class: "dot failed", "aria-hidden": "true" }), "Failed", h("span", { class: "nft-error" }, sync.lastError || "")];
      } else {
        statusText = [h("span", { class: "dot pending", "aria-hidden": "true" }), sync.enforcerConnected ? "Applying…" : "Pending: no enforcer connected"];
      }
      r.status.replaceChildren(...statusText);
      r.toggleButton.setAttribute("aria-checked", rule.enabled ? "true" : "false");
      r.toggleButton.setAttribute("aria-label", `Accept connections on port ${portsText(rule)}/${proto}`);
      r.toggleButton.title = rule.enabled ? "Accepting connections (click to block)" : "Blocking connections (click to accept)";
      return r.tr;
    }

    // The seed's "Connection refused after opening a port" checklist, answered
    // with facts by Diagnose: the rule, its toggle, the enforcer's acks, the
    // instance's kernel, what listens and what arrives.
    const diagnosis = h("section", { class: "diagnosis", id: "diagnosis", "aria-labelledby": "diagnosis-title", hidden: true });
    async function troubleshoot(rule) {
      const target = `${portsText(rule)}/${protocolName(rule.protocol)}`;
      const head = h("div", { class: "card-head" }, h("h2", { id: "diagnosis-title" }, `Troubleshooting port ${target}`));
      const close = h("button", { type: "button", class: "button secondary", onclick: () => { diagnosis.hidden = true; } }, "Close");
      diagnosis.hidden = false;
      diagnosis.setAttribute("data-state", "checking");
      diagnosis.replaceChildren(head, h("p", { class: "muted", role: "status" }, "Checking the rule, the enforcer and the instance…"));
      diagnosis.scrollIntoView({ block: "nearest", behavior: "smooth" });
      let result;
      try {
        const query = `port=${encodeURIComponent(rule.port)}&protocol=${encodeURIComponent(rule.protocol || "PROTOCOL_TCP")}`;
        result = await api("GET", `/api/v1/firewalls/${encodeURIComponent(instanceId)}/diagnose?${query}`);
      } catch (error) {
        diagnosis.setAttribute("data-state", "error");
        diagnosis.replaceChildren(head, h("p", { class: "form-error", role: "alert" }, error.message), close);
        return;
      }
      const checks = result.checks || [];
      const passed = checks.filter((c) => c.result === "CHECK_RESULT_PASS").length;
      diagnosis.setAttribute("data-state", result.ok ? "ok" : "problems");
      diagnosis.replaceChildren(
        head,
        h("p", { class: "summary", role: "status" }, result.ok ? `All ${checks.length} checks pass: the port is open and something answers on it.` : `${passed} of ${checks.length} checks pass.`),
        h(
          "ol",
          { class: "checks" },
          checks.map((check) => {
            const [kind, mark, word] = CHECK_RESULTS[check.result] || CHECK_RESULTS.CHECK_RESULT_UNKNOWN;
            return h(
              "li",
              { "data-check": check.name, "data-result": kind },
              h("span", { class: `mark ${kind}`, "aria-hidden": "true" }, mark),
              h(
                "div",
                { class: "check-body" },
                h("strong", {}, CHECK_LABELS[check.name] || check.name),
                h("span", { class: "visually-hidden" }, ` (${word})`),
                h("span", { class: "detail" }, check.detail || ""),
                check.nextStep ? h("span", { class: "next" }, check.nextStep) : null,
              ),
            );
          }),
        ),
        h("div", { class: "diagnosis-actions" }, h("button", { type: "button", class: "button primary", onclick: () => troubleshoot(rule) }, "Check again"), close),
      );
    }

    // What the firewall dropped in the last hour (the enforcer's report of
    // the kernel's own record), with why, as the service judges it, and the
    // one click that lets it in: open the port (the Add Port form,
    // prefilled), turn its rule on, or add the source to its allowlist.
    const blockedRows = h("tbody");
    const blockedEmpty = h("p", { class: "muted", id: "blocked-empty" }, "Nothing was blocked in the last hour.");
    const blocked = h(
      "section",
      { class: "blocked", id: "blocked", "aria-labelledby": "blocked-title" },
      h("h2", { id: "blocked-title" }, "Recently blocked"),
      h("p", { class: "muted" }, "Connections the firewall dropped in the last hour, most recent first."),
      blockedEmpty,
      h(
        "table",
        { class: "table blocked-table", "aria-labelledby": "blocked-title" },
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            h("th", { scope: "col" }, "Port"),
            h("th", { scope: "col" }, "Attempts"),
            h("th", { scope: "col" }, "Sources"),
            h("th", { scope: "col" }, "Last"),
            h("th", { scope: "col" }, "Why"),
            h("th", { scope: "col" }, h("span", { class: "visually-hidden" }, "Actions")),
          ),
        ),
        blockedRows,
      ),
    );
    const REASONS = {
      BLOCKED_REASON_NO_RULE: "No rule for this port",
      BLOCKED_REASON_RULE_OFF: "The rule is off",
      BLOCKED_REASON_SOURCE_NOT_ALLOWED: "Source not in the allowlist",
      BLOCKED_REASON_ACCEPTED_NOW: "Accepted now",
    };
    function openPort(entry) {
      port.value = String(entry.port);
      protocol.value = entry.protocol === "PROTOCOL_UDP" ? "PROTOCOL_UDP" : "PROTOCOL_TCP";
      description.value = "";
      updateAdvice();
      form.scrollIntoView({ block: "nearest" });
      description.focus();
      announce(`Add Port filled in for ${entry.port}/${protocolName(entry.protocol)}: describe what listens there, then add it.`);
    }
    async function allowSource(entry, source) {
      const target = `${entry.port}/${protocolName(entry.protocol)}`;
      const base = `/api/v1/firewalls/${encodeURIComponent(instanceId)}/rules`;
      const rule = (firewall.rules || []).find((r) => r.id === entry.ruleId);
      if (!rule) {
        // A rule for the port that accepts this source only.
        await change("POST", base, { port: entry.port, protocol: entry.protocol, sources: [source.address], requestId: requestId() }, `Port ${target} opened to ${source.address}; applying.`);
        return;
      }
      const sources = [...(rule.sources || []), source.address];
      await change("PATCH", `${base}/${encodeURIComponent(rule.id)}`, { sources: { cidrs: sources }, requestId: requestId() }, `${source.address} added to the allowlist of ${target}; applying.`);
    }
    // One row per blocked port, kept across reports (every few seconds) so
    // that a button is not replaced under the pointer; its buttons are
    // rebuilt only when what they would do changes.
    const blockedByPort = new Map();
    function blockedActions(r) {
      const entry = r.entry;
      const proto = protocolName(entry.protocol);
      const reason = entry.reason || "BLOCKED_REASON_UNSPECIFIED";
      const actions = [];
      if (reason === "BLOCKED_REASON_NO_RULE") {
        actions.push(h("button", { type: "button", class: "button secondary open-port", onclick: () => openPort(r.entry) }, "Open port"));
      } else if (reason === "BLOCKED_REASON_RULE_OFF") {
        const button = h("button", { type: "button", class: "button secondary open-port" }, "Open port");
        button.addEventListener("click", () => {
          const rule = (firewall.rules || []).find((x) => x.id === r.entry.ruleId);
          if (rule) toggle(rule, button);
        });
        actions.push(button);
      }
      if (reason === "BLOCKED_REASON_NO_RULE" || reason === "BLOCKED_REASON_SOURCE_NOT_ALLOWED") {
        for (const source of (entry.topSources || []).filter((s) => !s.allowed)) {
          const button = h("button", { type: "button", class: "button secondary allow-source", "data-source": source.address, "aria-label": `Allow ${source.address} on port ${entry.port}/${proto}` }, `Allow ${source.address}`);
          button.addEventListener("click", async () => {
            button.disabled = true;
            await allowSource(r.entry, source);
            button.disabled = false;
          });
          actions.push(button);
        }
      }
      r.actions.replaceChildren(...actions);
    }
    function blockedRow(entry) {
      const proto = protocolName(entry.protocol);
      const key = `${proto}/${entry.port}`;
      let r = blockedByPort.get(key);
      if (!r) {
        r = {
          tr: h("tr", { "data-blocked-port": String(entry.port), "data-protocol": proto.toLowerCase() }),
          attempts: h("td", { class: "attempts", "data-label": "Attempts" }),
          from: h("td", { class: "from", "data-label": "Sources" }),
          last: h("td", { class: "last", "data-label": "Last" }),
          reason: h("td", { class: "reason", "data-label": "Why" }),
          actions: h("div", { class: "actions" }),
        };
        r.tr.append(h("td", { class: "port", "data-label": "Port" }, `${entry.port}/${proto}`), r.attempts, r.from, r.last, r.reason, h("td", {}, r.actions));
        blockedByPort.set(key, r);
      }
      r.entry = entry;
      const reason = entry.reason || "BLOCKED_REASON_UNSPECIFIED";
      const listed = entry.topSources || [];
      const more = Number(entry.distinctSources || 0) - listed.length;
      const top = listed.map((s) => `${s.address} (${s.attempts})`).join(", ") + (more > 0 ? ` and ${more} more` : "");
      r.tr.setAttribute("data-reason", reason);
      r.attempts.textContent = String(entry.attempts || "0");
      r.from.textContent = top || "—";
      r.last.textContent = entry.lastTime ? ago(entry.lastTime) : "—";
      r.reason.textContent = REASONS[reason] || "—";
      const does = JSON.stringify([reason, entry.ruleId || "", listed.map((s) => [s.address, Boolean(s.allowed)])]);
      if (r.does !== does) {
        r.does = does;
        blockedActions(r);
      }
      return r.tr;
    }
    function renderBlocked() {
      const entries = firewall.blocked || [];
      blockedEmpty.hidden = entries.length > 0;
      blockedRows.parentElement.hidden = entries.length === 0;
      const shown = entries.map(blockedRow);
      for (const [key, r] of blockedByPort) {
        if (!shown.includes(r.tr)) blockedByPort.delete(key);
      }
      blockedRows.replaceChildren(...shown);
    }

    // Changes that undo themselves unless kept: a banner each, counting down,
    // with "Keep this change"; once one is undone, what and why.
    const unconfirmed = h("div", { class: "unconfirmed", id: "unconfirmed" });
    const reverted = h("div", { class: "notice reverted", id: "reverted", role: "alert", hidden: true });
    const pendingChanges = new Map();
    const keptHere = new Set();
    function countdown(change) {
      const left = Math.max(0, Math.ceil((new Date(change.revertTime) - Date.now()) / 1000));
      return `${Math.floor(left / 60)}:${String(left % 60).padStart(2, "0")}`;
    }
    async function keep(change, button) {
      button.disabled = true;
      keptHere.add(String(change.revision));
      try {
        const answer = await api("POST", `/api/v1/firewalls/${encodeURIComponent(instanceId)}/confirm`, { revision: change.revision, requestId: requestId() });
        update(answer);
        announce(`Kept: ${change.summary}.`);
      } catch (error) {
        keptHere.delete(String(change.revision));
        button.disabled = false;
        if (error.httpStatus !== 401) pageAlert.textContent = error.message;
      }
    }
    function renderUnconfirmed() {
      const changes = firewall.unconfirmed || [];
      const now = new Set(changes.map((c) => String(c.revision)));
      for (const [revision, change] of pendingChanges) {
        if (now.has(revision)) continue;
        pendingChanges.delete(revision);
        // A change is confirmed only before its revert time (the service
        // refuses it after): gone at or after it, on the service's clock, it
        // was undone.
        const settledAt = new Date(firewall.updateTime || 0);
        if (!keptHere.has(revision) && settledAt >= new Date(change.revertTime)) {
          reverted.replaceChildren(h("p", {}, `Undone: ${change.summary} (revision ${revision}) was not confirmed within its window, so the rules it changed were put back.`));
          reverted.hidden = false;
        }
      }
      for (const change of changes) pendingChanges.set(String(change.revision), change);
      unconfirmed.replaceChildren(
        ...changes.map((change) => {
          const button = h("button", { type: "button", class: "button primary" }, "Keep this change");
          button.addEventListener("click", () => keep(change, button));
          return h(
            "div",
            { class: "banner", role: "status", "data-revision": String(change.revision) },
            h("span", {}, `Unconfirmed: ${change.summary}. Undone in `, h("strong", { class: "countdown", "data-revert-time": change.revertTime }, countdown(change)), " unless you keep it."),
            button,
          );
        }),
      );
    }
    const ticking = setInterval(() => {
      if (!unconfirmed.isConnected) {
        clearInterval(ticking);
        return;
      }
      for (const clock of unconfirmed.querySelectorAll(".countdown")) {
        clock.textContent = countdown({ revertTime: clock.getAttribute("data-revert-time") });
      }
    }, 1000);

    function renderEnforcer() {
      const sync = firewall.sync || {};
      const state = sync.state || "SYNC_STATE_NO_ENFORCER";
      const parts = [syncBadge(sync)];
      if (!sync.enforcerConnected) {
        parts.push(h("span", {}, "No enforcer is connected: changes are saved and take effect when the instance's enforcer connects."));
      } else if (state === "SYNC_STATE_IN_SYNC") {
        const measured = latency(sync.lastAckLatency);
        parts.push(h("span", {}, "Enforcer connected. Every rule is in force", measured ? `; the last change took ${measured} from save to kernel` : "", sync.lastAckTime ? ` (${ago(sync.lastAckTime)})` : "", "."));
      } else if (state === "SYNC_STATE_PENDING") {
        parts.push(h("span", {}, "Enforcer connected; applying the latest change. Rules take effect in seconds."));
      } else if (state === "SYNC_STATE_ERROR") {
        parts.push(h("span", {}, "The instance could not apply a change: ", h("code", {}, sync.lastError || "unknown error")));
      }
      if (sync.enforcerStateError) parts.push(h("span", { class: "muted" }, `Saved state refused: ${sync.enforcerStateError}`));
      enforcer.setAttribute("data-sync-state", state);
      enforcer.setAttribute("data-connected", sync.enforcerConnected ? "true" : "false");
      enforcer.replaceChildren(...parts);
    }

    // The live stream is in order and has the last word; an answer to this
    // page's own change can arrive after the stream already showed that
    // change applied, and must not take it back.
    const revision = (f) => Number(f.revision || 0);
    const applied = (f) => Number((f.sync || {}).appliedRevision || 0);
    function update(next, fromStream) {
      if (!next || next.instanceId !== instanceId) return;
      if (!fromStream && firewall) {
        if (revision(next) < revision(firewall)) return;
        if (revision(next) === revision(firewall) && applied(next) < applied(firewall)) return;
      }
      firewall = next;
      const rules = sortRules(firewall.rules || []);
      const keep = new Set(rules.map((r) => r.id));
      for (const [id, r] of rows) {
        if (!keep.has(id)) {
          r.tr.remove();
          rows.delete(id);
        }
      }
      tbody.replaceChildren(...rules.map(row));
      renderEnforcer();
      renderUnconfirmed();
      renderBlocked();
    }

    const connection = h("span", { class: "live", id: "live", "data-live": "false" }, "Connecting…");
    const section = h(
      "div",
      { class: "instance" },
      h("nav", { class: "crumbs", "aria-label": "Breadcrumb" }, h("a", { href: "/" }, "Instances"), h("span", { "aria-hidden": "true" }, " / "), h("span", {}, instanceId)),
      h("h1", {}, instanceId),
      h(
        "section",
        { class: "card firewall", "aria-labelledby": "firewall-title" },
        h("div", { class: "card-head" }, h("h2", { id: "firewall-title" }, "Firewall"), connection),
        h("p", { class: "muted" }, "Green accepts connections, gray blocks them. Default rules (SSH, HTTP, HTTPS) can be disabled but not deleted."),
        enforcer,
        unconfirmed,
        reverted,
        pageAlert,
        table,
        diagnosis,
        blocked,
        form,
      ),
    );
    show(section);

    follow(
      instanceId,
      (next) => update(next, true),
      (error) => {
        connection.textContent = "Not live";
        connection.setAttribute("data-live", "false");
        if (error.httpStatus === 404 || error.httpStatus === 403) {
          // Nothing to show or change here: say why, and the way back.
          show(
            h(
              "section",
              { class: "card" },
              h("h1", {}, instanceId),
              h("p", { class: "form-error", role: "alert", id: "page-error" }, error.message),
              h("a", { href: "/" }, "Back to instances"),
            ),
          );
        } else if (error.httpStatus !== 401) {
          pageAlert.textContent = error.message;
        }
      },
      (connected) => {
        connection.textContent = connected ? "Live" : "Reconnecting…";
        connection.setAttribute("data-live", connected ? "true" : "false");
      },
    );
  }

  // ---- start ---------------------------------------------------------------

  async function start() {
    let who;
    try {
      who = await api("GET", "/api/v1/whoami");
    } catch (error) {
      if (error.httpStatus !== 401) show(h("p", { class: "form-error", role: "alert" }, error.message));
      return;
    }
    renderWho(who);
    const match = window.location.pathname.match(/^\/instances\/([^/]+)\/?$/);
    if (match) showFirewall(decodeURIComponent(match[1]));
    else await showInstances();
  }

  start();
})();

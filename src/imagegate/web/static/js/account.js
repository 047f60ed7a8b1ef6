// The account: usage, password, sessions, API keys and webhooks.

import { call, changePassword, signOut } from "./api.js";
import { announce, bytes, date, errorBox, explain, field, h, setError, show } from "./ui.js";

function section(title, ...children) {
  const id = `s-${title.toLowerCase().replace(/[^a-z]+/g, "-")}`;
  return h("section", { class: "card", "aria-labelledby": id }, h("h2", { id }, title), ...children);
}

function usage(user) {
  return section(
    "Usage",
    h("p", {}, `Signed in as `, h("strong", {}, user.login), `, since ${date(user.created_at)}.`),
    h("p", {}, `${user.images} images, ${bytes(user.bytes)}.`),
  );
}

function password() {
  const current = h("input", { type: "password", autocomplete: "current-password", required: true });
  const fresh = h("input", { type: "password", autocomplete: "new-password", required: true });
  const error = errorBox();
  const button = h("button", { type: "submit" }, "Change password");
  return section(
    "Password",
    h(
      "form",
      {
        onsubmit: async (event) => {
          event.preventDefault();
          setError(error, "");
          button.disabled = true;
          try {
            await changePassword(current.value, fresh.value);
            current.value = "";
            fresh.value = "";
            announce("Password changed; your other sessions are signed out");
          } catch (failure) {
            setError(error, explain(failure));
          } finally {
            button.disabled = false;
          }
        },
      },
      field("Current password", current),
      field("New password", fresh),
      error,
      h("p", { class: "actions" }, button),
    ),
  );
}

function sessions() {
  const error = errorBox();
  const everywhere = () => signOut(true).catch((failure) => setError(error, explain(failure)));
  return section(
    "Sessions",
    h("p", {}, "Sign out here and on every other device and browser."),
    error,
    h("p", { class: "actions" }, h("button", { type: "button", onclick: everywhere }, "Sign out everywhere")),
  );
}

function keys() {
  const list = h("ul", { class: "rows", "aria-label": "API keys" });
  const shown = h("div", { role: "status" });
  const name = h("input", { required: true, maxlength: 64, placeholder: "backup script" });
  const write = h("input", { type: "checkbox", checked: true });
  const days = h("input", { type: "number", min: 1, max: 365, value: 90, required: true });
  const error = errorBox();

  async function load() {
    const page = await call("GET", "/v1/keys");
    list.replaceChildren(
      ...page.items.map((key) =>
        h(
          "li",
          {},
          h("span", {}, h("strong", {}, key.name), ` ${key.scopes.join(", ")}`),
          h(
            "span",
            { class: "hint" },
            `created ${date(key.created_at)}, ${key.last_used_at ? `last used ${date(key.last_used_at)}` : "never used"}, expires ${date(key.expires_at)}`,
          ),
          h(
            "button",
            {
              type: "button",
              class: "danger",
              "aria-label": `Revoke ${key.name}`,
              onclick: () =>
                call("DELETE", `/v1/keys/${encodeURIComponent(key.id)}`)
                  .then(() => announce(`Key ${key.name} revoked`))
                  .then(load)
                  .catch((failure) => setError(error, explain(failure))),
            },
            "Revoke",
          ),
        ),
      ),
    );
    if (!page.items.length) list.append(h("li", { class: "hint" }, "No API keys."));
  }

  const formNode = h(
    "form",
    {
      onsubmit: async (event) => {
        event.preventDefault();
        setError(error, "");
        try {
          const scopes = ["images:read", ...(write.checked ? ["images:write"] : [])];
          const made = await call("POST", "/v1/keys", {
            json: { name: name.value.trim(), scopes, expires_in_days: Number(days.value) },
          });
          shown.replaceChildren(
            h("p", {}, "Copy this key now: it is shown only once."),
            h("p", { class: "snippet" }, h("code", { id: "new-key" }, made.key)),
          );
          name.value = "";
          await load();
        } catch (failure) {
          setError(error, explain(failure));
        }
      },
    },
    field("Name", name),
    h("p", { class: "field" }, h("label", {}, write, " May upload and delete (images:write)")),
    field("Expires after (days)", days),
    error,
    h("p", { class: "actions" }, h("button", { type: "submit" }, "Create key")),
  );
  load().catch((failure) => setError(error, explain(failure)));
  return section("API keys", h("p", { class: "hint" }, "For scripts and the imagegate command: a Bearer credential for your images only."), shown, list, formNode);
}

function webhooks() {
  const list = h("ul", { class: "rows", "aria-label": "Webhooks" });
  const url = h("input", { type: "url", required: true, placeholder: "https://example.com/hooks/imagegate" });
  const shown = h("div", { role: "status" });
  const error = errorBox();

  async function deliveries(hook, target) {
    const page = await call("GET", `/v1/webhooks/${encodeURIComponent(hook.id)}/deliveries?limit=10`);
    target.replaceChildren(
      ...(page.items.length
        ? page.items.map((d) =>
            h("li", {}, `${date(d.created_at)} ${d.event_type}: ${d.status}`, d.last_status ? ` (HTTP ${d.last_status})` : ""),
          )
        : [h("li", { class: "hint" }, "No deliveries yet.")]),
    );
  }

  async function load() {
    const page = await call("GET", "/v1/webhooks");
    list.replaceChildren(
      ...page.items.map((hook) => {
        const recent = h("ul", { class: "deliveries" });
        return h(
          "li",
          {},
          h("code", {}, hook.url),
          h("button", { type: "button", onclick: () => deliveries(hook, recent).catch((f) => setError(error, explain(f))) }, "Recent deliveries"),
          h(
            "button",
            {
              type: "button",
              class: "danger",
              "aria-label": `Remove webhook ${hook.url}`,
              onclick: () =>
                call("DELETE", `/v1/webhooks/${encodeURIComponent(hook.id)}`)
                  .then(() => announce("Webhook removed"))
                  .then(load)
                  .catch((failure) => setError(error, explain(failure))),
            },
            "Remove",
          ),
          recent,
        );
      }),
    );
    if (!page.items.length) list.append(h("li", { class: "hint" }, "No webhooks."));
  }

  const formNode = h(
    "form",
    {
      onsubmit: async (event) => {
        event.preventDefault();
        setError(error, "");
        try {
          const made = await call("POST", "/v1/webhooks", { json: { url: url.value.trim() } });
          shown.replaceChildren(
            h("p", {}, "Signing secret (shown only once):"),
            h("p", { class: "snippet" }, h("code", {}, made.secret)),
          );
          url.value = "";
          await load();
        } catch (failure) {
          setError(error, explain(failure));
        }
      },
    },
    field("Address", url),
    error,
    h("p", { class: "actions" }, h("button", { type: "submit" }, "Add webhook")),
  );
  load().catch((failure) => setError(error, explain(failure)));
  return section("Webhooks", shown, list, formNode);
}

export async function accountView(view) {
  show(view, h("p", { class: "hint" }, "Loading…"));
  try {
    const user = await call("GET", "/v1/user");
    show(view, h("div", { class: "account" }, h("h1", {}, "Account"), usage(user), password(), sessions(), keys(), webhooks()));
  } catch (failure) {
    show(view, h("section", { class: "card" }, h("h1", {}, "Account"), h("p", { class: "error", role: "alert" }, explain(failure))));
  }
}

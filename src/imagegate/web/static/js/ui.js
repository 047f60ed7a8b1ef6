// Small DOM helpers. Text always goes in as text (textContent), never as HTML: file names,
// logins and server messages cannot inject markup.

export function h(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "class") node.className = value;
    else if (value === true) node.setAttribute(name, "");
    else node.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function show(view, ...children) {
  view.replaceChildren(...children);
  const heading = view.querySelector("h1");
  document.title = heading ? `${heading.textContent} · imagegate` : "imagegate";
  view.focus({ preventScroll: true });
}

export function announce(message) {
  const status = document.getElementById("status");
  status.textContent = "";
  // A change the screen reader hears even when the same words come twice.
  requestAnimationFrame(() => {
    status.textContent = message;
  });
}

export function bytes(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = n;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return `${unit ? value.toFixed(1) : value} ${units[unit]}`;
}

export function date(iso) {
  return new Date(iso).toLocaleString();
}

// "Try again in 12 s" for a throttled request, the API's message otherwise.
export function explain(error) {
  if (!error.retryAfter) return error.message;
  const wait = `try again in ${error.retryAfter} s`;
  return error.message.includes("try again later")
    ? error.message.replace("try again later", wait)
    : `${error.message} — ${wait}`;
}

export function field(label, input, hint = null) {
  const id = input.id || `f-${Math.random().toString(36).slice(2)}`;
  input.id = id;
  const hintNode = hint ? h("p", { class: "hint", id: `${id}-hint` }, hint) : null;
  if (hintNode) input.setAttribute("aria-describedby", hintNode.id);
  return h("p", { class: "field" }, h("label", { for: id }, label), input, hintNode);
}

export function errorBox() {
  return h("p", { class: "error", role: "alert", hidden: true });
}

export function setError(box, message) {
  box.textContent = message || "";
  box.hidden = !message;
}

export async function copy(text, what) {
  try {
    await navigator.clipboard.writeText(text);
    announce(`${what} copied`);
  } catch {
    announce(`Copy failed: select the text and copy it`);
  }
}

// One image: shown at screen size, its facts, snippets to share it, visibility and deletion.

import { call, objectUrl } from "./api.js";
import { announce, bytes, copy, date, errorBox, explain, h, setError, show } from "./ui.js";

function picture(image) {
  const alt = `Image ${image.filename}`;
  if (image.visibility === "public") {
    return h("img", {
      src: image.variants.medium || image.url,
      srcset: image.srcset || null,
      sizes: "(max-width: 70rem) 100vw, 70rem",
      alt,
      class: "full",
      width: image.width,
      height: image.height,
    });
  }
  const img = h("img", { alt, class: "full pending", width: image.width, height: image.height });
  objectUrl(`/v1/user/large/${image.filename}`)
    .then((url) => {
      img.src = url;
      img.classList.remove("pending");
    })
    .catch(() => img.classList.add("broken")); // deleted meanwhile, or signed out
  return img;
}

function snippets(image) {
  const absolute = (path) => new URL(path, window.location.origin).href;
  const url = absolute(image.url);
  const srcset = (image.srcset || "")
    .split(", ")
    .filter(Boolean)
    .map((entry) => {
      const [path, width] = entry.split(" ");
      return `${absolute(path)} ${width}`;
    })
    .join(", ");
  const html = srcset
    ? `<img src="${url}" srcset="${srcset}" sizes="100vw" alt="" width="${image.width}" height="${image.height}">`
    : `<img src="${url}" alt="" width="${image.width}" height="${image.height}">`;
  return [
    ["URL", url],
    ["Markdown", `![](${url})`],
    ["HTML", html],
  ];
}

export async function imageView(view, name) {
  const error = errorBox();
  show(view, h("p", { class: "hint" }, "Loading…"));
  let image;
  try {
    image = await call("GET", `/v1/images/${encodeURIComponent(name)}`);
  } catch (failure) {
    show(view, h("section", { class: "card" }, h("h1", {}, "Image"), h("p", { class: "error", role: "alert" }, explain(failure))));
    return;
  }

  const facts = h(
    "dl",
    { class: "facts" },
    h("dt", {}, "Size"),
    h("dd", {}, `${image.width} × ${image.height}, ${bytes(image.bytes)}`),
    h("dt", {}, "Type"),
    h("dd", {}, image.content_type),
    h("dt", {}, "Uploaded"),
    h("dd", {}, date(image.created_at)),
    h("dt", {}, "Visibility"),
    h("dd", { id: "visibility" }, image.visibility),
  );

  const frame = h("div", { class: "frame" }, picture(image));
  const share = h("div", { class: "share" });
  const renderShare = () => {
    if (image.visibility !== "public") {
      share.replaceChildren(h("p", { class: "hint" }, "Only you can see this image: make it public to share it."));
      return;
    }
    share.replaceChildren(
      ...snippets(image).map(([what, text]) =>
        h(
          "p",
          { class: "snippet" },
          h("code", {}, text),
          h("button", { type: "button", onclick: () => copy(text, what) }, `Copy ${what}`),
        ),
      ),
    );
  };
  renderShare();

  const toggle = h(
    "button",
    {
      type: "button",
      onclick: async () => {
        const wanted = image.visibility === "public" ? "private" : "public";
        setError(error, "");
        toggle.disabled = true;
        try {
          image = await call("PATCH", `/v1/images/${encodeURIComponent(name)}`, { json: { visibility: wanted } });
          facts.querySelector("#visibility").textContent = image.visibility;
          toggle.textContent = image.visibility === "public" ? "Make private" : "Make public";
          renderShare();
          frame.replaceChildren(picture(image)); // its public URL is gone, or new
          announce(`The image is now ${image.visibility}`);
        } catch (failure) {
          setError(error, explain(failure));
        } finally {
          toggle.disabled = false;
        }
      },
    },
    image.visibility === "public" ? "Make private" : "Make public",
  );

  const confirmDelete = h(
    "dialog",
    { "aria-labelledby": "delete-title" },
    h(
      "form",
      { method: "dialog" },
      h("h2", { id: "delete-title" }, "Delete this image?"),
      h("p", {}, "The image and its thumbnails are removed for good."),
      h(
        "p",
        { class: "actions" },
        h("button", { value: "cancel", autofocus: true }, "Keep it"),
        h("button", { value: "delete", class: "danger" }, "Delete"),
      ),
    ),
  );
  confirmDelete.addEventListener("close", async () => {
    if (confirmDelete.returnValue !== "delete") return;
    try {
      await call("DELETE", `/v1/images/${encodeURIComponent(name)}`);
      announce("Image deleted");
      window.location.hash = "#/gallery";
    } catch (failure) {
      setError(error, explain(failure));
    }
  });
  const remove = h("button", { type: "button", class: "danger", onclick: () => confirmDelete.showModal() }, "Delete…");

  show(
    view,
    h(
      "article",
      { class: "image" },
      h("h1", {}, "Image"),
      frame,
      facts,
      share,
      error,
      h("p", { class: "actions" }, toggle, remove),
      confirmDelete,
    ),
  );
}

// The gallery: the caller's images, newest first, as thumbnails. Pages of the listing load as
// the end comes into view; a thumbnail is fetched only once it is near the screen (public
// ones by URL with srcset, private ones with the token, as blobs).

import { call, objectUrl } from "./api.js";
import { explain, h, show } from "./ui.js";

const PAGE = 50;

export function thumbnail(image, alt) {
  const img = h("img", { alt, width: 320, height: 320, decoding: "async", class: "pending" });
  if (image.visibility === "public") {
    // The cropped thumb for ordinary screens; the whole-picture presets (cropped by CSS) for
    // dense ones.
    img.dataset.src = image.variants.thumb;
    img.dataset.srcset = [`${image.variants.thumb} 320w`, image.srcset].filter(Boolean).join(", ");
    img.sizes = "(max-width: 40rem) 45vw, 12rem";
  } else {
    img.dataset.path = `/v1/user/thumb/${image.filename}`;
  }
  loader.observe(img);
  return img;
}

// One observer for every thumbnail: fetched once within half a screen of the view (the
// browser's own lazy loading starts 1,250 px or more ahead, which on a phone is many rows).
const loader = new IntersectionObserver(
  (entries) => {
    for (const entry of entries) {
      if (!entry.isIntersecting) continue;
      const img = entry.target;
      loader.unobserve(img);
      img.addEventListener("load", () => img.classList.remove("pending"), { once: true });
      if (img.dataset.path) {
        objectUrl(img.dataset.path)
          .then((url) => {
            img.src = url;
          })
          .catch(() => img.classList.add("broken"));
      } else {
        img.srcset = img.dataset.srcset;
        img.src = img.dataset.src;
      }
    }
  },
  { rootMargin: "50% 0px" },
);

export function galleryView(view) {
  const grid = h("ul", { class: "grid", "aria-label": "Your images" });
  const status = h("p", { class: "hint", role: "status" });
  const sentinel = h("div", { class: "sentinel", "aria-hidden": "true" });
  let cursor = null;
  let loading = false;
  let finished = false;

  async function more() {
    if (loading || finished) return;
    loading = true;
    status.textContent = "Loading…";
    try {
      const query = new URLSearchParams({ limit: String(PAGE) });
      if (cursor) query.set("cursor", cursor);
      const page = await call("GET", `/v1/images?${query}`);
      for (const image of page.items) {
        const label = `${image.content_type.replace("image/", "").toUpperCase()} ${image.width}×${image.height}, ${image.visibility}`;
        grid.append(
          h("li", {}, h("a", { href: `#/image/${image.filename}`, class: "tile" }, thumbnail(image, label))),
        );
      }
      cursor = page.next_cursor;
      finished = !cursor;
      status.textContent = "";
      if (!grid.children.length) {
        status.replaceChildren("No images yet. ", h("a", { href: "#/upload" }, "Upload some"), " — drop files or paste them.");
      }
    } catch (error) {
      status.textContent = explain(error);
      return; // no retry loop: scrolling again, or a reload, tries again
    } finally {
      loading = false;
    }
    if (finished) {
      more_.disconnect();
    } else {
      // Observed afresh: its first report is the end's position now. The observer reports
      // only changes, and the end may have stayed in view (a short page, or a scroll that
      // happened while this page loaded).
      more_.unobserve(sentinel);
      more_.observe(sentinel);
    }
  }

  const more_ = new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting)) more();
  }, { rootMargin: "200px 0px" });
  more_.observe(sentinel);
  window.addEventListener("hashchange", () => more_.disconnect(), { once: true });

  show(view, h("section", {}, h("h1", {}, "Your images"), grid, status, sentinel));
}

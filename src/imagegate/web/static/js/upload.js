// Upload: drag and drop, a file picker or paste; many files at once, two at a time, each with its
// progress bar and then its link or the API's reason for refusing it.

import { upload } from "./api.js";
import { explain, h, show } from "./ui.js";

const PARALLEL = 2;

export function uploadView(view) {
  // The input itself stays hidden (its look cannot be styled); a real button opens it.
  const picker = h("input", { type: "file", multiple: true, accept: "image/*", hidden: true });
  const pick = h("button", { type: "button", onclick: () => picker.click() }, "Choose files");
  const privacy = h(
    "fieldset",
    { class: "inline" },
    h("legend", {}, "Who can see them"),
    h("label", {}, h("input", { type: "radio", name: "visibility", value: "public", checked: true }), " Anyone with the link"),
    h("label", {}, h("input", { type: "radio", name: "visibility", value: "private" }), " Only me"),
  );
  const list = h("ol", { class: "uploads", "aria-label": "Uploads" });
  const zone = h(
    "div",
    { class: "dropzone" },
    h("p", {}, "Drop images here, paste them, or "),
    pick,
    picker,
  );

  const queue = [];
  let running = 0;
  const visibility = () => privacy.querySelector("input:checked").value;

  function next() {
    while (running < PARALLEL && queue.length) {
      const job = queue.shift();
      running += 1;
      job().finally(() => {
        running -= 1;
        next();
      });
    }
  }

  function add(files) {
    const chosen = visibility();
    for (const file of files) {
      const bar = h("progress", { max: "1", value: "0", "aria-label": `${file.name} progress` });
      const result = h("span", { class: "result" }, "waiting");
      const item = h("li", { class: "upload" }, h("span", { class: "name" }, file.name), bar, result);
      list.append(item);
      queue.push(async () => {
        result.textContent = "sending";
        try {
          const { image, existing } = await upload(file, chosen, (fraction) => {
            bar.value = fraction;
          });
          bar.value = 1;
          item.classList.add("done");
          const what = `${existing ? "already there" : "stored"}, ${image.visibility}`;
          const url = new URL(image.url, window.location.origin).href;
          result.replaceChildren(h("a", { href: `#/image/${image.filename}` }, what), " ", h("code", {}, url));
        } catch (error) {
          item.classList.add("failed");
          bar.remove();
          result.textContent = explain(error);
        }
      });
    }
    next();
  }

  picker.addEventListener("change", () => {
    add([...picker.files]);
    picker.value = "";
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    add([...event.dataTransfer.files]);
  });
  const onPaste = (event) => {
    const files = [...event.clipboardData.files];
    if (files.length) add(files);
  };
  document.addEventListener("paste", onPaste);
  window.addEventListener("hashchange", () => document.removeEventListener("paste", onPaste), { once: true });

  show(view, h("section", { class: "card" }, h("h1", {}, "Upload"), privacy, zone, list));
}

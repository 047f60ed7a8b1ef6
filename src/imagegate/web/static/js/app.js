// The page's entry point: a hash router over the views, and the signed-in state.
// Hash routes keep every page at "/": one document, revalidated on each load, no server routes.

import { onSessionChange, resume, signOut, signedIn } from "./api.js";
import { accountView } from "./account.js";
import { galleryView } from "./gallery.js";
import { imageView } from "./image.js";
import { signInView, signUpView } from "./signin.js";
import { announce, explain, h, show } from "./ui.js";
import { uploadView } from "./upload.js";

const view = document.getElementById("view");
const nav = document.getElementById("nav");
const PUBLIC_ROUTES = new Set(["signin", "signup"]);

function route() {
  const [name = "", ...rest] = window.location.hash.replace(/^#\/?/, "").split("/");
  return { name: name || "gallery", arg: decodeURIComponent(rest.join("/")) };
}

function go(hash) {
  if (window.location.hash === hash) render();
  else window.location.hash = hash;
}

function render() {
  const { name, arg } = route();
  nav.hidden = !signedIn();
  if (!signedIn() && !PUBLIC_ROUTES.has(name)) {
    go("#/signin");
    return;
  }
  const done = () => go("#/gallery");
  switch (name) {
    case "signin":
      if (signedIn()) return done();
      return signInView(view, done);
    case "signup":
      if (signedIn()) return done();
      return signUpView(view, done);
    case "gallery":
      return galleryView(view);
    case "upload":
      return uploadView(view);
    case "image":
      return imageView(view, arg);
    case "account":
      return accountView(view);
    default:
      return show(view, h("section", { class: "card" }, h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/gallery" }, "Back to the gallery"))));
  }
}

onSessionChange((isIn) => {
  nav.hidden = !isIn;
  if (!isIn) {
    // Nothing of the account stays on screen or in the history's views: the next render of
    // any route (including the back button's) finds no session and shows the sign-in form.
    view.replaceChildren();
    announce("Signed out");
    go("#/signin");
  }
});

document.getElementById("signout").addEventListener("click", () => {
  signOut(false).catch((error) => announce(`Sign-out failed: ${explain(error)}`));
});
window.addEventListener("hashchange", render);
// The skip link focuses the content without touching the hash (the router's).
document.querySelector(".skip").addEventListener("click", (event) => {
  event.preventDefault();
  view.focus();
});

resume()
  .catch(() => false)
  .finally(render);

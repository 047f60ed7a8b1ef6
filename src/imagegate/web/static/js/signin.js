// Sign in and sign up: the API's own messages (password policy, throttling) are shown as given.

import { register, signIn } from "./api.js";
import { errorBox, explain, field, h, setError, show } from "./ui.js";

function form(view, { title, action, submit, other, onDone }) {
  const login = h("input", { name: "login", autocomplete: "username", required: true, maxlength: 64 });
  const password = h("input", {
    name: "password",
    type: "password",
    autocomplete: action === "up" ? "new-password" : "current-password",
    required: true,
  });
  const error = errorBox();
  const button = h("button", { type: "submit" }, submit);
  const formNode = h(
    "form",
    {
      class: "card narrow",
      onsubmit: async (event) => {
        event.preventDefault();
        setError(error, "");
        button.disabled = true;
        try {
          if (action === "up") await register(login.value.trim(), password.value);
          await signIn(login.value.trim(), password.value);
          password.value = "";
          onDone();
        } catch (failure) {
          setError(error, explain(failure));
          password.focus();
        } finally {
          button.disabled = false;
        }
      },
    },
    h("h1", {}, title),
    field("Login", login),
    field(
      "Password",
      password,
      action === "up" ? "A long one, not a common password nor your login." : null,
    ),
    error,
    h("p", { class: "actions" }, button, other),
  );
  show(view, formNode);
  login.focus();
}

export function signInView(view, onDone) {
  form(view, {
    title: "Sign in",
    action: "in",
    submit: "Sign in",
    other: h("a", { href: "#/signup" }, "Create an account"),
    onDone,
  });
}

export function signUpView(view, onDone) {
  form(view, {
    title: "Create an account",
    action: "up",
    submit: "Sign up",
    other: h("a", { href: "#/signin" }, "I have an account"),
    onDone,
  });
}

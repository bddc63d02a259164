// The dashboard's live block, replaced from the server-sent events of /admin/events.
"use strict";
(function () {
  const live = document.getElementById("live");
  if (!live || !window.EventSource) return;
  // The live block holds the action forms (refund, acknowledge): what the operator is typing
  // there survives a replacement, and so does the focus.
  const kept = () => {
    const values = {};
    live.querySelectorAll("[data-keep]").forEach((input) => { values[input.dataset.keep] = input.value; });
    const active = document.activeElement;
    return { values, focused: active && live.contains(active) ? active.dataset.keep : undefined };
  };
  const restore = (state) => {
    live.querySelectorAll("[data-keep]").forEach((input) => {
      if (state.values[input.dataset.keep]) input.value = state.values[input.dataset.keep];
      if (input.dataset.keep === state.focused) input.focus();
    });
  };
  const events = new EventSource(live.dataset.events);
  events.addEventListener("dashboard", (event) => {
    if (live.querySelector("form[data-submitted]")) return; // leaving: keep the submitted form as it is
    const state = kept();
    live.innerHTML = event.data;
    restore(state);
    live.dataset.updates = String(Number(live.dataset.updates || "0") + 1);
  });
})();

// An action form is sent once: its button is disabled on submit and a second submit is
// ignored (the server makes one refund of a double submit all the same).
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (!(form instanceof HTMLFormElement) || !form.classList.contains("action-form")) return;
  if (form.dataset.submitted) {
    event.preventDefault();
    return;
  }
  form.dataset.submitted = "1";
  form.querySelectorAll("button[type=submit]").forEach((button) => {
    // Disabled after this event has built the form data, which a disabled button would leave out.
    setTimeout(() => { button.disabled = true; }, 0);
  });
});

// The dashboard's live block, replaced from the server-sent events of /admin/events.
"use strict";
(function () {
  const live = document.getElementById("live");
  if (!live || !window.EventSource) return;
  const events = new EventSource(live.dataset.events);
  events.addEventListener("dashboard", (event) => {
    live.innerHTML = event.data;
    live.dataset.updates = String(Number(live.dataset.updates || "0") + 1);
  });
})();

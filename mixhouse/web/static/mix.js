// A mix's page: the copy button, and the status block replaced live from the server-sent
// events of /mix/{id}/events (the browser's EventSource reconnects by itself).
"use strict";
(function () {
  const copy = document.getElementById("copy");
  if (copy) {
    copy.addEventListener("click", async () => {
      const text = copy.dataset.copy;
      const done = document.getElementById("copied");
      try {
        await navigator.clipboard.writeText(text);
        done.textContent = "copied";
      } catch (err) {
        // No clipboard permission (plain http): select the text for a manual copy.
        const range = document.createRange();
        range.selectNodeContents(document.getElementById("deposit-address"));
        const selection = window.getSelection();
        selection.removeAllRanges();
        selection.addRange(range);
        done.textContent = "selected: copy it";
      }
    });
  }
  const status = document.getElementById("status");
  if (status && window.EventSource) {
    const events = new EventSource(status.dataset.events);
    events.addEventListener("status", (event) => {
      status.innerHTML = event.data;
      status.dataset.updates = String(Number(status.dataset.updates || "0") + 1);
    });
  }
})();

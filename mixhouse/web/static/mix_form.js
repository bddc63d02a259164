// The mix form: address fields checked as the user types (POST /mix/check, the API's own
// rules and messages), the quote of the chosen asset, and creation through POST /api/v1/mixes.
"use strict";
(function () {
  const form = document.getElementById("mix-form");
  if (!form) return;
  const offers = JSON.parse(document.getElementById("offers").textContent);
  const list = document.getElementById("addresses");
  const maxAddresses = offers.length ? offers[0].max_addresses : 10;
  const formError = document.getElementById("form-error");
  let checkTimer = null;
  let checkSeq = 0;

  function offer() {
    const chosen = form.querySelector("input[name=asset]:checked").value;
    return offers.find((o) => o.asset === chosen);
  }

  function words(seconds) {
    seconds = Math.floor(seconds);
    if (seconds < 120) return seconds + " s";
    const days = Math.floor(seconds / 86400);
    const hours = Math.floor((seconds % 86400) / 3600);
    const minutes = Math.floor((seconds % 3600) / 60);
    const parts = [];
    if (days) parts.push(days + (days > 1 ? " days" : " day"));
    if (hours) parts.push(hours + " h");
    if (minutes && !days) parts.push(minutes + " min");
    return parts.join(" ");
  }

  function addField(value) {
    const count = list.children.length;
    if (count >= maxAddresses) return;
    const li = document.createElement("li");
    const input = document.createElement("input");
    input.type = "text";
    input.name = "withdrawal_address";
    input.autocomplete = "off";
    input.spellcheck = false;
    input.setAttribute("aria-label", "withdrawal address " + (count + 1));
    input.value = value || "";
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "secondary remove";
    remove.textContent = "Remove";
    remove.addEventListener("click", () => {
      if (list.children.length > 1) li.remove();
      else input.value = "";
      renumber();
      scheduleCheck();
    });
    const error = document.createElement("p");
    error.className = "field-error";
    error.setAttribute("role", "alert");
    input.addEventListener("input", scheduleCheck);
    li.append(input, remove, error);
    list.append(li);
    renumber();
  }

  function renumber() {
    Array.from(list.children).forEach((li, i) => {
      li.querySelector("input").setAttribute("aria-label", "withdrawal address " + (i + 1));
      li.querySelector(".field-error").id = "address-error-" + i;
    });
    document.getElementById("add-address").disabled = list.children.length >= maxAddresses;
  }

  function addresses() {
    return Array.from(list.querySelectorAll("input")).map((i) => i.value);
  }

  function showProblems(result) {
    Array.from(list.children).forEach((li, i) => {
      const message = result.problems[String(i)] || "";
      li.querySelector(".field-error").textContent = message;
      li.querySelector("input").setAttribute("aria-invalid", message ? "true" : "false");
    });
    return Object.keys(result.problems).length === 0;
  }

  async function check() {
    const seq = ++checkSeq;
    const response = await fetch("/mix/check", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ asset: offer().asset, withdrawal_addresses: addresses() }),
    });
    if (seq !== checkSeq || !response.ok) return null;
    const result = await response.json();
    showProblems(result);
    return result;
  }

  function scheduleCheck() {
    clearTimeout(checkTimer);
    checkTimer = setTimeout(check, 250);
  }

  function delays() {
    const o = offer();
    const minText = document.getElementById("delay-min").value;
    const maxText = document.getElementById("delay-max").value;
    const min = minText === "" ? null : Math.round(Number(minText) * 60);
    const max = maxText === "" ? null : Math.round(Number(maxText) * 60);
    const effMin = min === null ? o.default_delay_min_seconds : min;
    const effMax = max === null ? o.default_delay_max_seconds : max;
    let error = "";
    if (!(0 <= effMin && effMin <= effMax && effMax <= o.max_delay_seconds)) {
      error = "the delay window must satisfy 0 <= delay_min_seconds <= delay_max_seconds <= " + o.max_delay_seconds;
    }
    return { min, max, effMin, effMax, error };
  }

  function quote() {
    const o = offer();
    const d = delays();
    document.getElementById("q-fee").textContent = o.fee_percent_range;
    document.getElementById("q-min").textContent = o.min_coins;
    document.getElementById("q-max").textContent = o.max_coins;
    form.querySelectorAll(".q-asset").forEach((e) => (e.textContent = o.asset));
    document.getElementById("q-window").textContent = words(d.effMin) + " to " + words(d.effMax) + " after your deposit is pooled";
    document.getElementById("q-wait").textContent = words(d.effMax + o.extra_wait_seconds) +
      " after pooling, if too few other deposits arrive to hide yours";
    const expiry = new Date(Date.now() + o.ttl_seconds * 1000);
    document.getElementById("q-expiry").textContent = expiry.toISOString().slice(0, 16).replace("T", " ") +
      " UTC (" + words(o.ttl_seconds) + " from now; late deposits are still mixed for " + words(o.grace_seconds) + ")";
    document.getElementById("q-conf").textContent = String(o.confirmations);
    document.getElementById("delay-error").textContent = d.error;
    document.getElementById("delay-min").placeholder = String(Math.floor(o.default_delay_min_seconds / 60));
    document.getElementById("delay-max").placeholder = String(Math.floor(o.default_delay_max_seconds / 60));
  }

  async function submit(event) {
    event.preventDefault();
    formError.textContent = "";
    const button = document.getElementById("create");
    const d = delays();
    if (d.error) {
      document.getElementById("delay-error").textContent = d.error;
      return;
    }
    const typed = addresses().filter((a) => a !== "");
    const body = { asset: offer().asset, withdrawal_addresses: typed };
    if (d.min !== null) body.delay_min_seconds = d.min;
    if (d.max !== null) body.delay_max_seconds = d.max;
    button.disabled = true;
    try {
      const response = await fetch("/api/v1/mixes", {
        method: "POST",
        headers: { "content-type": "application/json", accept: "application/json" },
        body: JSON.stringify(body),
      });
      const answer = await response.json();
      if (response.status === 201) {
        window.location.assign("/mix/" + encodeURIComponent(answer.id));
        return;
      }
      // Show the API's own message; the check puts it next to the field it is about.
      formError.textContent = answer.detail || answer.title || "the mix was not created";
      await check();
    } catch (err) {
      formError.textContent = "the server could not be reached; nothing was created";
    } finally {
      button.disabled = false;
    }
  }

  document.getElementById("add-address").addEventListener("click", () => addField(""));
  form.querySelectorAll("input[name=asset]").forEach((r) => r.addEventListener("change", () => { quote(); scheduleCheck(); }));
  ["delay-min", "delay-max"].forEach((id) => document.getElementById(id).addEventListener("input", quote));
  form.addEventListener("submit", submit);
  addField("");
  quote();
})();

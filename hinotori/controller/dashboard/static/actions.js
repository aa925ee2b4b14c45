// Actions from the dashboard, for a sign-in from `hinotori dashboard --operate` only (a
// read-only tab never builds these buttons, and the controller refuses its changes anyway).
//
// Every action goes through the same API routes as the CLI (deploy, rollback, the canary and
// held-deployment controls, maintenance, kill), so the controller records it in the audit log
// with this tab's session as the actor. Each one first asks for confirmation in a modal dialog
// that says exactly what will happen; nothing is sent until the operator confirms.

import { canOperate, get, post } from "./api.js";
import { h, releaseName } from "./dom.js";

const $ = (id) => document.getElementById(id);

export { canOperate };

// The buttons of one service card: what can be done to it now.
export function serviceActions(svc, running) {
  const name = svc.name;
  const buttons = [];
  if (running) {
    for (const [action, label, what] of [
      ["promote", "Promote", `promote the running deployment of ${name} (${releaseName(running.to_release)}) to all traffic`],
      ["pause", "Pause", `pause the running canary of ${name} at its current step`],
      ["resume", "Resume", `resume the paused canary of ${name}`],
      ["abort", "Abort", `abort the running deployment of ${name} and send all traffic back to ${releaseName(running.from_release)}`],
    ]) {
      buttons.push(button(action, label, what, () => post(`/v1/services/${name}/${action}`),
        () => `${action} sent to ${name}`));
    }
  } else {
    if (svc.latest) {
      buttons.push(button("deploy", "Deploy…",
        `deploy the release chosen below to ${name} (now ${releaseName(svc.current)}) with its strategy`,
        (_, release) => post(`/v1/services/${name}/deploy`,
                             { release: Number(release), reason: "dashboard" }),
        (answer) => (answer.deployment === null ? `${name}: that release already serves`
          : `deployment #${answer.deployment} of ${name} started`),
        { releases: name, latest: svc.latest }));
    }
    if (svc.previous) {
      buttons.push(button("rollback", `Roll back to ${releaseName(svc.previous)}`,
        `roll ${name} back from ${releaseName(svc.current)} to ${releaseName(svc.previous)}`,
        () => post(`/v1/services/${name}/rollback`, { reason: "dashboard" }),
        (answer) => `rollback of ${name} started (deployment #${answer.deployment})`));
    }
  }
  if (svc.maintenance) {
    buttons.push(button("maintenance-off", "End maintenance",
      `send ${name}'s requests to its hosts again`,
      () => post(`/v1/maintenance/${name}/off`, { reason: "dashboard" }),
      () => `${name} serves again`));
  } else {
    buttons.push(button("maintenance-on", "Maintenance",
      `answer every request of ${name} with 503 and the message below (its hosts keep running)`,
      (message) => post(`/v1/maintenance/${name}/on`, { message: message || undefined,
                                                        reason: "dashboard" }),
      () => `${name} is in maintenance`, { message: true }));
  }
  return h("div", { class: "actions", "data-actions": name }, buttons);
}

// The button of one host row: burn it (a serving host is killed; the health monitor replaces it).
export function hostActions(host) {
  if (host.state !== "serving") return h("td", {});
  return h("td", {}, button("burn", "Burn",
    `kill host ${host.id} of ${host.service} now; the health monitor boots a fresh one from the same image`,
    () => post(`/v1/hosts/${host.id}/kill`, { reason: "dashboard" }),
    () => `host ${host.id} burned`));
}

function button(action, label, what, run, done, options = {}) {
  return h("button", { type: "button", class: `act a-${action}`, "data-action": action,
                       onclick: () => confirmThen(what, run, done, options) }, label);
}

// Ask, then act: the dialog says what will happen; only its Confirm button sends anything.
function confirmThen(what, run, done, options) {
  const dialog = $("confirm");
  $("confirm-text").textContent = `This will ${what}.`;
  const extra = $("confirm-extra");
  extra.hidden = !options.message;
  $("confirm-message").value = "";
  $("confirm-release-row").hidden = !options.releases;
  if (options.releases) fillReleases(options.releases, options.latest);
  dialog.returnValue = "";
  dialog.onclose = async () => {
    if (dialog.returnValue !== "confirm") return;
    say("working…", "busy");
    try {
      const answer = await run($("confirm-message").value.trim(), $("confirm-release").value);
      say(done(answer), "ok");
    } catch (e) {
      say(e.message, "error");
    }
  };
  dialog.showModal();
}

// The service's releases, newest first, the newest chosen (what `hinotori deploy` takes).
async function fillReleases(service, latest) {
  const select = $("confirm-release");
  select.replaceChildren(h("option", { value: latest }, releaseName(latest)));
  select.value = String(latest);
  try {
    const rows = await get("/v1/releases", { service });
    select.replaceChildren(...[...rows].reverse().map((r) => h("option", { value: r.release },
      `${r.release_name}${r.role ? ` (${r.role})` : ""}${r.reason ? ` · ${r.reason}` : ""}`)));
    select.value = String(latest);
  } catch (e) {
    say(`could not list releases: ${e.message}`, "error");
  }
}

function say(text, state) {
  const box = $("action-status");
  box.hidden = false;
  box.dataset.state = state;
  box.textContent = text;
}

// The dialog's buttons: wired once, when the page starts (no inline handlers: the CSP).
export function wireDialog() {
  const dialog = $("confirm");
  $("confirm-ok").addEventListener("click", () => dialog.close("confirm"));
  $("confirm-cancel").addEventListener("click", () => dialog.close("cancel"));
}

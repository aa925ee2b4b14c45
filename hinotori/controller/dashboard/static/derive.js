// What the page derives from the API's answers: pure functions, no DOM, so the integration
// test can call them in the browser with data of its own.

// Each serving host carries a weight; a release's share of its service's traffic is the sum
// of its hosts' weights over the total: exactly the split the router applies.
export function trafficSplit(hosts, service) {
  const byRelease = new Map();
  let total = 0;
  for (const host of hosts) {
    if (host.service !== service || host.state !== "serving") continue;
    byRelease.set(host.release, (byRelease.get(host.release) || 0) + host.weight);
    total += host.weight;
  }
  return [...byRelease.entries()].sort((a, b) => a[0] - b[0])
    .map(([release, weight]) => ({ release, share: total ? (100 * weight) / total : 0 }));
}

// A canary step is judged every analysis interval; a long step would list hundreds of checks.
// Show the latest check of each run at one weight, and how many there were.
export function collapseChecks(steps) {
  const shown = [];
  for (const step of steps) {
    const last = shown[shown.length - 1];
    if (step.step === "analysis" && last && last.step === "analysis" && last.weight === step.weight
        && last.outcome === step.outcome) {
      shown[shown.length - 1] = { ...step, checks: (last.checks || 1) + 1 };
    } else {
      shown.push(step);
    }
  }
  return shown;
}

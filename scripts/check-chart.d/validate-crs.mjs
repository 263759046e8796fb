// Validates the custom resources in rendered manifests against their CRD models
// (@kubernetes-models: prometheus-operator ServiceMonitor, Gateway API HTTPRoute), which
// kubernetes-validate does not know. Usage: node validate-crs.mjs <models dir> <file>...
// Exit 1 if any custom resource fails, or if a file has a kind neither validator knows.
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import path from "node:path";

const [modelsDir, ...files] = process.argv.slice(2);
const nm = path.join(modelsDir, "node_modules");
const require = createRequire(path.join(nm, "x.js"));
const yaml = require("js-yaml");
const load = async (spec) => import(path.join(nm, spec + ".js"));
const { ServiceMonitor } = await load("@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor");
const { HTTPRoute } = await load("@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1/HTTPRoute");
const models = {
  "monitoring.coreos.com/v1/ServiceMonitor": ServiceMonitor,
  "gateway.networking.k8s.io/v1/HTTPRoute": HTTPRoute,
};
let passed = 0, failed = 0;
for (const file of files) {
  for (const doc of yaml.loadAll(readFileSync(file, "utf8"))) {
    if (!doc) continue;
    const key = `${doc.apiVersion}/${doc.kind}`;
    const Model = models[key];
    if (!Model) continue; // core kinds: kubernetes-validate's job
    try {
      new Model(doc).validate();
      passed++;
      console.log(`ok ${doc.kind}/${doc.metadata.name} (${path.basename(file)})`);
    } catch (e) {
      failed++;
      console.log(`FAIL ${doc.kind}/${doc.metadata?.name} (${path.basename(file)}): ${e.message}`);
    }
  }
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);

// Checks each dashboard JSON given (default: ../reactive-rtc.json) against
// Grafana's published dashboard schema: the TypeScript types of
// @grafana/schema, which Grafana generates from its CUE schema of the
// dashboard JSON model. Each dashboard is type-checked as an object literal
// that must satisfy `Dashboard`, so a field of the wrong type, a missing
// required field or a field the schema does not know (excess property
// checks) is an error naming the path in the JSON.
//
//   npm ci && node check.mjs [dashboard.json...]
//
// Exits 0 when every dashboard passes, 1 with each error otherwise, 2 on a
// file that cannot be read or is not JSON.
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import ts from "typescript";

const here = path.dirname(fileURLToPath(import.meta.url));
const files = process.argv.slice(2);
if (files.length === 0) files.push(path.join(here, "..", "reactive-rtc.json"));

const work = fs.mkdtempSync(path.join(here, "node_modules", ".check-"));
const sources = [];
for (const file of files) {
  let json;
  try {
    json = JSON.parse(fs.readFileSync(file, "utf8"));
  } catch (e) {
    console.error(`dashboard check: ${file}: ${e.message}; allowed: a Grafana dashboard JSON file`);
    process.exit(2);
  }
  const source = path.join(work, `${sources.length}.ts`);
  fs.writeFileSync(
    source,
    `import type { Dashboard } from "@grafana/schema";\n` +
      `export const dashboard = ${JSON.stringify(json, null, 2)} satisfies Dashboard;\n`,
  );
  sources.push({ file, source });
}

const program = ts.createProgram(
  sources.map((s) => s.source),
  {
    strict: true,
    noEmit: true,
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    skipLibCheck: true,
    types: [],
  },
);
const diagnostics = ts.getPreEmitDiagnostics(program);
let failed = 0;
for (const d of diagnostics) {
  const owner = sources.find((s) => d.file && path.resolve(d.file.fileName) === path.resolve(s.source));
  const text = ts.flattenDiagnosticMessageText(d.messageText, "\n  ");
  if (d.file && d.start !== undefined) {
    const { line } = d.file.getLineAndCharacterOfPosition(d.start);
    const at = d.file.text.split("\n")[line].trim();
    console.error(`${owner ? owner.file : d.file.fileName}: at ${at}\n  ${text}`);
  } else {
    console.error(text);
  }
  failed++;
}
fs.rmSync(work, { recursive: true, force: true });
if (failed > 0) {
  console.error(`dashboard check: ${failed} error(s) against @grafana/schema's Dashboard`);
  process.exit(1);
}
for (const s of sources) console.log(`${s.file}: satisfies @grafana/schema's Dashboard`);

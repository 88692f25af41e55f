// One long-lived reference CQL engine process (cql-execution + cql-exec-fhir, FHIR 4.0.1).
//
// Protocol: one JSON object per line on stdin, one JSON object per line on stdout, same `id`.
//
//   {"id": 1, "op": "load", "libraries": [<ELM JSON>, ...], "main": "<library name>",
//    "valuesets": {"<url>": [{"system": ..., "code": ...}, ...]}}
//       -> {"id": 1, "ok": true, "library": "<name>", "version": "<version>"}
//   {"id": 2, "op": "evaluate", "bundle": <FHIR Bundle>, "executionDateTime": "2026-11-26",
//    "parameters": {"Name": <value>, ...}, "extraCodes": {"<url>": [{"system", "code"}, ...]},
//    "dateParameters": ["AsOf", ...]}
//       -> {"id": 2, "ok": true, "patientId": "...", "results": {"<define>": <value>, ...}}
//   {"id": 3, "op": "ping"} -> {"id": 3, "ok": true}
// Any failure of a request answers {"id": ..., "ok": false, "error": "<one line>"}; the process
// keeps running. It ends when stdin closes.
//
// ELM and the ValueSet expansions are loaded once per process ("load"); an evaluate request may add
// per-patient codes to some ValueSets ("extraCodes": record codes whose ICD-10/ATC ancestor is
// listed, see fhir_trial/cql/engine.py) without touching the shared expansions.
import { createRequire } from "node:module";
import readline from "node:readline";

const require = createRequire(import.meta.url);
const cql = require("cql-execution");
const cqlfhir = require("cql-exec-fhir");

// cql-exec-fhir gives every element declared as FHIR.Resource (Resource.contained, Bundle entries)
// the type FHIR.Resource, whatever its resourceType, so `C as FHIR.Medication` on a contained
// Medication is always null. Re-type such values by their own resourceType, as a FHIR server's
// data would be typed; everything else is left as the library built it.
{
  const modelInfoWrapper = cqlfhir.FHIRWrapper.FHIRv401();
  const FHIRObject = Object.getPrototypeOf(modelInfoWrapper.wrap({ resourceType: "Basic" })).constructor;
  const originalGet = FHIRObject.prototype.get;
  const retype = (value) => {
    if (Array.isArray(value)) return value.map(retype);
    if (value instanceof FHIRObject && value._json && typeof value._json.resourceType === "string") {
      const name = value._typeInfo && value._typeInfo.name;
      if (name === "Resource" || name === "FHIR.Resource" || name === "DomainResource" || name === "FHIR.DomainResource") {
        const actual = value._modelInfo.findClass(value._json.resourceType);
        if (actual) return new FHIRObject(value._json, actual, value._modelInfo);
      }
    }
    return value;
  };
  FHIRObject.prototype.get = function get(field) {
    return retype(originalGet.call(this, field));
  };
}

let state = null; // {library, codes: Map<url, Code[]>}

function toCodes(list) {
  return (list || []).map((c) => new cql.Code(String(c.code), c.system, c.version));
}

// A TerminologyProvider over the shared expansions plus one request's extra codes.
class LayeredCodeService {
  constructor(base, extra) {
    this.base = base;
    this.extra = extra || {};
    this.cache = new Map();
  }
  findValueSetsByOid(url) {
    const vs = this.findValueSet(url);
    return vs ? [vs] : [];
  }
  findValueSet(url, _version) {
    if (this.cache.has(url)) return this.cache.get(url);
    const base = this.base.get(url);
    const extra = this.extra[url];
    let vs = null;
    if (base || extra) {
      const codes = extra ? base.concat(toCodes(extra)) : base;
      vs = new cql.ValueSet(url, "", codes);
    }
    this.cache.set(url, vs);
    return vs;
  }
}

function load(msg) {
  const libraries = msg.libraries || [];
  if (libraries.length === 0) throw new Error("load: no ELM libraries given");
  const byName = {};
  for (const elm of libraries) {
    const id = elm && elm.library && elm.library.identifier;
    if (!id || !id.id) throw new Error("load: a library has no identifier");
    byName[id.id] = elm;
  }
  const main = byName[msg.main];
  if (!main) throw new Error(`load: main library ${msg.main} not among the libraries`);
  const repository = new cql.Repository(byName);
  const library = new cql.Library(main, repository);
  const codes = new Map();
  for (const [url, list] of Object.entries(msg.valuesets || {})) codes.set(url, toCodes(list));
  state = { library, codes };
  return { library: main.library.identifier.id, version: main.library.identifier.version };
}

function parameterValue(name, value, dateNames) {
  if (value === null || value === undefined) return null;
  if (dateNames.has(name)) return cql.Date.parse(String(value));
  return value;
}

// Plain JSON for what CQL returns (strings, numbers, booleans, lists, tuples, dates, codes).
function plain(value) {
  if (value === null || value === undefined) return null;
  if (Array.isArray(value)) return value.map(plain);
  if (typeof value !== "object") return value;
  if (value.isDate || value.isDateTime || value.isTime) return value.toString();
  if (value.isQuantity) return { value: value.value, unit: value.unit };
  if (value.isInterval) return { low: plain(value.low), high: plain(value.high) };
  if (value.isCode) return { system: value.system, code: value.code };
  if (value.isConcept) return { codes: plain(value.codes) };
  if (typeof value.getId === "function" && value._json) {
    return `${value._json.resourceType}/${value._json.id}`;
  }
  const out = {};
  for (const [k, v] of Object.entries(value)) out[k] = plain(v);
  return out;
}

async function evaluate(msg) {
  if (!state) throw new Error("evaluate before load");
  if (!msg.bundle || msg.bundle.resourceType !== "Bundle") throw new Error("evaluate: bundle is not a FHIR Bundle");
  const dateNames = new Set(msg.dateParameters || []);
  const parameters = {};
  for (const [k, v] of Object.entries(msg.parameters || {})) parameters[k] = parameterValue(k, v, dateNames);
  const source = cqlfhir.PatientSource.FHIRv401();
  source.loadBundles([msg.bundle]);
  const codeService = new LayeredCodeService(state.codes, msg.extraCodes);
  const executor = new cql.Executor(state.library, codeService, parameters);
  const when = msg.executionDateTime ? cql.DateTime.parse(String(msg.executionDateTime)) : undefined;
  const results = await executor.exec(source, when);
  const ids = Object.keys(results.patientResults);
  if (ids.length !== 1) throw new Error(`evaluate: expected one patient in the bundle, found ${ids.length}`);
  const perDefine = results.patientResults[ids[0]];
  const wanted = msg.defines ? new Set(msg.defines) : null;
  const out = {};
  for (const [name, value] of Object.entries(perDefine)) {
    if (name === "Patient" || (wanted && !wanted.has(name))) continue;
    out[name] = plain(value);
  }
  return { patientId: ids[0], results: out };
}

async function handle(line) {
  let msg;
  try {
    msg = JSON.parse(line);
  } catch (err) {
    return { id: null, ok: false, error: `request is not JSON: ${err.message}` };
  }
  const id = msg && msg.id !== undefined ? msg.id : null;
  try {
    if (msg.op === "load") return { id, ok: true, ...load(msg) };
    if (msg.op === "evaluate") return { id, ok: true, ...(await evaluate(msg)) };
    if (msg.op === "ping") return { id, ok: true };
    throw new Error(`unknown op ${JSON.stringify(msg.op)}`);
  } catch (err) {
    const text = err && err.message ? err.message : String(err);
    return { id, ok: false, error: text.split("\n")[0] };
  }
}

const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
// Requests are answered strictly in order.
let queue = Promise.resolve();
rl.on("line", (line) => {
  if (!line.trim()) return;
  queue = queue.then(async () => {
    const answer = await handle(line);
    process.stdout.write(JSON.stringify(answer) + "\n");
  });
});
rl.on("close", () => {
  queue.then(() => process.exit(0));
});

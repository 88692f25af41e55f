// Translate the project's CQL (cql/*.cql) to ELM JSON (cql/build/<Library>.json) with the reference
// CQL-to-ELM translator (@cqframework/cql, JS build).
//
// Usage: node translate.mjs [--project <root>] [--out <dir>] [--check]
//   --project  project root (default: two levels above this file)
//   --out      output folder (default: <project>/cql/build)
//   --check    translate and report, write nothing
// Exit codes: 0 translated with zero errors (warnings are printed), 1 translation errors, 2 setup
// problem (missing model info, unreadable folder).
//
// Model infos: the System model info is read from <project>/../shared/cql-support/system-modelinfo.xml
// (never copied into the project) and the FHIR 4.0.1 model info from cql-exec-fhir's lib/modelInfos.
import { createRequire } from "node:module";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

// The ESM build of the translator expects a global `require` (kotlinx-io packaging issue).
globalThis.require = createRequire(import.meta.url);
const require = globalThis.require;

const here = path.dirname(fileURLToPath(import.meta.url));

function parseArgs(argv) {
  const args = { project: path.resolve(here, "..", ".."), out: null, check: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--project") args.project = path.resolve(argv[++i]);
    else if (a === "--out") args.out = path.resolve(argv[++i]);
    else if (a === "--check") args.check = true;
    else {
      console.error(`error: unknown argument ${a}`);
      process.exit(2);
    }
  }
  args.out = args.out || path.join(args.project, "cql", "build");
  return args;
}

function readOrDie(file, what) {
  try {
    return fs.readFileSync(file, "utf8");
  } catch (err) {
    console.error(`error: cannot read ${what} at ${file}: ${err.message}`);
    process.exit(2);
  }
}

function ucumService(createUcumService) {
  const ucum = require("@lhncbc/ucum-lhc");
  const utils = ucum.UcumLhcUtils.getInstance();
  const convert = (value, from, to) => {
    const res = utils.convertUnitTo(from, Number(value), to);
    if (res.status !== "succeeded") {
      throw new Error(`cannot convert ${value} '${from}' to '${to}': ${res.msg.join("; ")}`);
    }
    return String(res.toVal);
  };
  const validate = (unit) => {
    const res = utils.validateUnitString(unit);
    return res.status === "valid" ? null : `invalid UCUM unit '${unit}': ${res.msg.join("; ")}`;
  };
  // Quantity arithmetic between literals is not folded at translation time by this library.
  const unsupported = () => {
    throw new Error("UCUM multiplication/division of quantity literals is not supported");
  };
  return createUcumService(convert, validate, unsupported, unsupported);
}

function describe(exc) {
  // The locator is a Kotlin TrackBack; its toString() is the only stable way to read it.
  const text = exc.locator ? String(exc.locator) : "";
  const m = /startLine=(\d+), startChar=(\d+)/.exec(text);
  return `${m ? `${m[1]}:${m[2]}` : "?"} ${exc.message}`;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const cqlDir = path.join(args.project, "cql");
  const systemInfo = readOrDie(
    path.join(args.project, "..", "shared", "cql-support", "system-modelinfo.xml"),
    "the System model info",
  );
  const fhirInfo = readOrDie(
    path.join(here, "node_modules", "cql-exec-fhir", "lib", "modelInfos", "fhir-modelinfo-4.0.1.xml"),
    "the FHIR 4.0.1 model info (run npm ci in tools/cql)",
  );
  let files;
  try {
    files = fs.readdirSync(cqlDir).filter((f) => f.endsWith(".cql")).sort();
  } catch (err) {
    console.error(`error: cannot list ${cqlDir}: ${err.message}`);
    process.exit(2);
  }
  if (files.length === 0) {
    console.error(`error: no .cql files in ${cqlDir}`);
    process.exit(2);
  }

  const {
    CqlTranslator,
    CqlCompilerOptions,
    LibraryManager,
    ModelManager,
    createLibrarySourceProvider,
    createModelInfoProvider,
    createUcumService,
    stringAsSource,
  } = await import("@cqframework/cql/cql-to-elm");

  // Library sources by name (the `library` declaration of each file).
  const sources = new Map();
  for (const file of files) {
    const text = fs.readFileSync(path.join(cqlDir, file), "utf8");
    // The declaration outside comments (a comment line may well begin with the word "library").
    const code = text.replace(/('(?:[^'\\]|\\.)*')|\/\*[\s\S]*?\*\/|\/\/[^\n]*/g, (all, str) => str || "");
    const m = /^\s*library\s+("?)([A-Za-z0-9_]+)\1(?:\s+version\s+'([^']+)')?/m.exec(code);
    if (!m) {
      console.error(`error: ${file} has no library declaration`);
      process.exit(2);
    }
    sources.set(m[2], { file, text, version: m[3] || null });
  }

  const modelManager = new ModelManager();
  modelManager.modelInfoLoader.registerModelInfoProvider(
    createModelInfoProvider((id, _system, version) => {
      if (id === "System") return stringAsSource(systemInfo);
      if (id === "FHIR" && (!version || version === "4.0.1")) return stringAsSource(fhirInfo);
      return null;
    }),
  );
  // The ELM is published as a Library attachment, and servers refuse strings over 1 MB (Medplum),
  // so it carries only what an engine executes: no annotations (the narrative repeats the CQL,
  // which the Library attaches next to it), no result types (the translator's default leaves them
  // out; engines infer them), no locators. Translation errors keep their line:column either way.
  const options = CqlCompilerOptions.defaultOptions();
  const chosen = options.options.asJsSetView();
  chosen.clear();
  chosen.add(CqlCompilerOptions.Options.DisableListDemotion);
  chosen.add(CqlCompilerOptions.Options.DisableListPromotion);
  options.withAnalyzeDataRequirements(false);
  const libraryManager = new LibraryManager(modelManager, options, undefined, ucumService(createUcumService));
  libraryManager.librarySourceLoader.registerProvider(
    createLibrarySourceProvider((name, _system, _version) => {
      const src = sources.get(name);
      return src ? stringAsSource(src.text) : null;
    }),
  );

  let failed = false;
  const written = new Set();
  if (!args.check) fs.mkdirSync(args.out, { recursive: true });
  for (const [name, src] of sources) {
    const translator = CqlTranslator.fromText(src.text, libraryManager);
    const errors = translator.errors.asJsReadonlyArrayView();
    const warnings = translator.warnings.asJsReadonlyArrayView();
    for (const w of warnings) console.log(`warning: ${src.file} ${describe(w)}`);
    if (errors.length > 0) {
      failed = true;
      for (const e of errors) console.error(`error: ${src.file} ${describe(e)}`);
      continue;
    }
    // Dropped: localId (it only ties nodes to annotations and locators, neither of which is
    // emitted) and the empty `annotation: []` the translator puts on every node.
    const elm = JSON.parse(translator.toJson(), (key, value) =>
      key === "localId" || (key === "annotation" && Array.isArray(value) && value.length === 0)
        ? undefined
        : value,
    );
    const json = JSON.stringify(elm, null, 2) + "\n";
    if (!args.check) fs.writeFileSync(path.join(args.out, `${name}.json`), json);
    written.add(`${name}.json`);
    console.log(`translated ${src.file} -> ${name}.json (${warnings.length} warnings)`);
  }
  // ELM of a library no CQL file declares any more (renamed, split, removed) would still be loaded
  // by the engine and published: remove it once everything translated.
  if (!failed && !args.check) {
    for (const f of fs.readdirSync(args.out)) {
      if (f.endsWith(".json") && !written.has(f)) {
        fs.unlinkSync(path.join(args.out, f));
        console.log(`removed ${f} (no CQL library of that name)`);
      }
    }
  }
  process.exit(failed ? 1 : 0);
}

main().catch((err) => {
  console.error(`error: translation failed: ${err && err.message ? err.message : err}`);
  process.exit(2);
});

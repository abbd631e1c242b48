// Summarises a V8 .cpuprofile: self time per function and per source file (top N).
//   node bench/prof-top.mjs FILE [N]
import { readFileSync } from 'node:fs';

const [file, nArg] = process.argv.slice(2);
if (!file) {
  process.stderr.write('usage: node bench/prof-top.mjs FILE.cpuprofile [N]\n');
  process.exit(2);
}
const n = Number(nArg ?? 25);
const prof = JSON.parse(readFileSync(file, 'utf8'));
const byId = new Map(prof.nodes.map((node) => [node.id, node]));
const self = new Map();
const dt = prof.timeDeltas;
for (let i = 0; i < prof.samples.length; i++) self.set(prof.samples[i], (self.get(prof.samples[i]) ?? 0) + (dt[i] ?? 0));
const total = [...self.values()].reduce((a, b) => a + b, 0);
const fn = new Map();
const src = new Map();
for (const [id, us] of self) {
  const cf = byId.get(id).callFrame;
  const name = `${cf.functionName || '(anonymous)'} ${cf.url.replace(/^.*node_modules\//, '').replace(/^file:\/\/.*\/(src|dist|node_modules\/\.cache)\//, '$1/')}:${cf.lineNumber + 1}`;
  fn.set(name, (fn.get(name) ?? 0) + us);
  const key = cf.url ? cf.url.replace(/^.*node_modules\/([^/]+(\/[^/]+)?)\/.*$/, '$1').replace(/^file:\/\/.*\//, '') : cf.functionName;
  src.set(key, (src.get(key) ?? 0) + us);
}
const show = (title, m) => {
  process.stdout.write(`\n${title} (total ${(total / 1000).toFixed(0)} ms)\n`);
  for (const [k, us] of [...m].sort((a, b) => b[1] - a[1]).slice(0, n)) process.stdout.write(`${((100 * us) / total).toFixed(1).padStart(5)}%  ${k}\n`);
};
show('self time by function', fn);
show('self time by source', src);

// Inclusive (self + callees) time of functions whose name matches the optional 3rd argument.
const pattern = process.argv[4] ? new RegExp(process.argv[4]) : undefined;
if (pattern) {
  const parent = new Map();
  for (const node of prof.nodes) for (const c of node.children ?? []) parent.set(c, node.id);
  const incl = new Map();
  for (const [id, us] of self) {
    const seen = new Set();
    for (let cur = id; cur !== undefined; cur = parent.get(cur)) {
      const cf = byId.get(cur).callFrame;
      if (!pattern.test(cf.functionName) || seen.has(cf.functionName)) continue;
      seen.add(cf.functionName);
      incl.set(cf.functionName, (incl.get(cf.functionName) ?? 0) + us);
    }
  }
  show(`inclusive time of /${pattern.source}/`, incl);
}

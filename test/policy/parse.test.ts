import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CocoonError } from '../../src/errors.js';
import { diffPolicies, evaluateAccept, formatPolicyDiff, grantedSecrets, parsePolicy, parseTemplate, renderTemplate } from '../../src/policy/index.js';
import { policySchemaErrors } from '../../src/policy/parse.js';
import { parseTlsSpec, tlsSpecToWire } from '../../src/policy/tls.js';

const M = 'ab'.repeat(48);
const base = (workloadExtra: string, secrets = '  redis-password: { kind: random, size: 32, encoding: hex, ownerReadable: true }\n  layer-key: { kind: layer-key }\n  api-token: { kind: imported }\n') => `name: demo/redis
secrets:
${secrets}workloads:
  redis:
    accept:
      - tee: [sim, tdx]
        measurement: "${M}"
${workloadExtra}`;

function invalid(text: string, pattern: RegExp, line?: number): CocoonError {
  try {
    parsePolicy(text, { file: 'shop.yaml' });
  } catch (err) {
    assert.ok(err instanceof CocoonError, String(err));
    assert.equal(err.code, 'POLICY_INVALID');
    assert.match(err.message, pattern);
    assert.match(err.message, /^shop\.yaml:\d+:\d+: /);
    if (line !== undefined) assert.equal(err.details?.line, line, err.message);
    assert.equal(err.details?.file, 'shop.yaml');
    assert.equal(typeof err.details?.column, 'number');
    return err;
  }
  assert.fail('expected POLICY_INVALID');
}

test('parses the documented example', () => {
  const p = parsePolicy(
    base(`    secrets: [redis-password]
    env: { REDIS_PW: "{{ secret.redis-password }}" }
    files:
      - { path: /run/cocoon/redis.conf, mode: "0400", content: "requirepass {{ secret.redis-password }}\\n" }
    args: ["redis-server", "/run/cocoon/redis.conf"]
`),
  );
  assert.equal(p.name, 'demo/redis');
  assert.deepEqual(p.secrets['redis-password'], { kind: 'random', size: 32, encoding: 'hex', ownerReadable: true });
  assert.deepEqual(p.secrets['api-token'], { kind: 'imported', ownerReadable: false });
  const w = p.workloads.redis!;
  assert.deepEqual(w.accept, [{ tee: ['sim', 'tdx'], measurement: M, debug: false }]);
  assert.equal(w.files[0]?.mode, 0o400);
  assert.equal(w.args?.length, 2);
  assert.deepEqual([...grantedSecrets(p, 'redis')].sort(), ['layer-key', 'redis-password']);
});

test('unknown secret reference in a template fails with file:line:column', () => {
  const err = invalid(base(`    secrets: [redis-password]\n    env: { PW: "{{ secret.nope }}" }\n`), /unknown secret "nope"/, 12);
  assert.equal(err.details?.path, 'workloads.redis.env.PW');
});

test('a declared but ungranted secret is refused', () => {
  invalid(base(`    env: { TOKEN: "{{ secret.api-token }}" }\n`), /not granted/, 11);
});

test('unknown grant, unknown field, bad tee, bad measurement, bad mode', () => {
  invalid(base(`    secrets: [missing]\n`), /unknown secret "missing"/, 11);
  invalid(base(`    secretz: [redis-password]\n`), /unknown field "secretz"/, 11);
  invalid(base('').replace('[sim, tdx]', '[sim, quantum]'), /unknown TEE kind "quantum"/, 9);
  invalid(base('').replace(M, 'abc'), /96 hex/, 10);
  invalid(base(`    files:\n      - { path: /x, mode: 0400, content: "a" }\n`), /quoted octal/, 12);
  invalid(base(`    files:\n      - { path: /../etc/passwd, content: "a" }\n`), /absolute, normalized/, 12);
});

test('binary secrets need a filter in env/args; templates reject other expressions', () => {
  invalid(base(`    env: { K: "{{ secret.layer-key }}" }\n`), /binary/);
  assert.doesNotThrow(() => parsePolicy(base(`    env: { K: "{{ secret.layer-key | base64 }}" }\n`)));
  invalid(base(`    secrets: [redis-password]\n    env: { K: "{{ env.HOME }}" }\n`), /unsupported template expression/);
  invalid(base(`    secrets: [redis-password]\n    env: { K: "{{ secret.redis-password | upper }}" }\n`), /unsupported template expression|unknown template filter/);
  invalid(base(`    secrets: [redis-password]\n    env: { K: "{{ secret.redis-password" }\n`), /unterminated/);
});

test('syntax errors, duplicate keys, aliases and size carry positions', () => {
  invalid('name: demo/redis\nworkloads: [\n', /./);
  invalid('name: demo/redis\nname: demo/other\nworkloads: {}\n', /./, 2);
  invalid(base(`    secrets: &g [redis-password]\n    env: *g\n`), /alias/);
  invalid('name: Demo/Redis\nworkloads: {}\n', /org\/app/, 1);
  invalid('x'.repeat(300 * 1024), /larger than/);
  invalid(base('', '  layer: { kind: layer-key }\n'), /must be named "layer-key"/, 3);
  invalid(base('', '  launch-plan: { kind: imported }\n'), /reserved/, 3);
});

test('templates render with raw/hex/base64 filters', () => {
  const t = parseTemplate('a={{ secret.x }};b={{secret.x|hex}};c={{ secret.x | base64 }}');
  const out = renderTemplate(t, () => Buffer.from('hi')).toString();
  assert.equal(out, 'a=hi;b=6869;c=aGk=');
});

test('accept rules: tee, measurement, debug, sim gating', () => {
  const p = parsePolicy(base(''));
  const w = p.workloads.redis!;
  assert.deepEqual(evaluateAccept(w, { tee: 'sim', measurement: M, debug: false, allowSim: true }), { allowed: true, ruleIndex: 0 });
  const wrong = evaluateAccept(w, { tee: 'sim', measurement: 'cd'.repeat(48), debug: false, allowSim: true });
  assert.equal(wrong.allowed, false);
  assert.match(!wrong.allowed ? wrong.reason : '', /measurement/);
  assert.equal(evaluateAccept(w, { tee: 'snp', measurement: M, debug: false, allowSim: true }).allowed, false);
  assert.equal(evaluateAccept(w, { tee: 'sim', measurement: M, debug: true, allowSim: true }).allowed, false);
  assert.equal(evaluateAccept(w, { tee: 'sim', measurement: M, debug: false, allowSim: false }).allowed, false);
  assert.equal(evaluateAccept(w, { tee: 'tdx', measurement: M.toUpperCase(), debug: false, allowSim: false }).allowed, true);
});

/** Policy shop/mtls: redis with one tls ingress entry (line 9), web with an egress to it, and `more` workloads. */
const shop = (ingress: string, more = '') =>
  `name: shop/mtls
secrets:
  layer-key: { kind: layer-key }
workloads:
  redis:
    accept: [{ tee: [sim], measurement: "${M}" }]
    tls:
      ingress:
        - ${ingress}
  web:
    accept: [{ tee: [sim], measurement: "${M}" }]
    tls: { egress: [{ listen: 7000, to: "127.0.0.1:6380", expect: { policy: shop/mtls, workload: redis } }] }
${more}`;

test('tls ingress allow: names resolved to policies, checked with the position of the entry', () => {
  // redis admits `web` of this policy (three spellings) and one workload of another policy
  const p = parsePolicy(shop('{ listen: 6380, to: 6379, clientCert: required, allow: [web, "shop/mtls#web2", { workload: web3 }, { policy: org/app, workload: job }, "org/app#web"] }', '  web2: { accept: [{ tee: [sim], measurement: "' + M + '" }], workloadCert: true }\n  web3: { accept: [{ tee: [sim], measurement: "' + M + '" }], workloadCert: true }\n'));
  assert.deepEqual(p.workloads.redis?.tls?.ingress[0]?.allow, [
    { policy: 'shop/mtls', workload: 'web' },
    { policy: 'shop/mtls', workload: 'web2' },
    { policy: 'shop/mtls', workload: 'web3' },
    { policy: 'org/app', workload: 'job' },
    { policy: 'org/app', workload: 'web' },
  ]);
  // clientCert defaults to required, so allow alone is fine; without allow any workload is admitted
  assert.deepEqual(parsePolicy(shop('{ listen: 6380, to: 6379, allow: [web] }')).workloads.redis?.tls?.ingress[0], { listen: 6380, to: 6379, clientCert: 'required', allow: [{ policy: 'shop/mtls', workload: 'web' }] });
  assert.equal(parsePolicy(shop('{ listen: 6380, to: 6379 }')).workloads.redis?.tls?.ingress[0]?.allow, undefined);

  // each error names file:line:column of the offending node (line 9 holds the ingress entry;
  // the column is where `at` starts after "allow") and its path
  const cases: { ingress: string; re: RegExp; path: string; at: string; more?: string }[] = [
    { ingress: '{ listen: 6380, to: 6379, clientCert: optional, allow: [web] }', re: /only with clientCert: required/, path: '.allow', at: '[web]' },
    { ingress: '{ listen: 6380, to: 6379, clientCert: none, allow: [web] }', re: /only with clientCert: required/, path: '.allow', at: '[web]' },
    { ingress: '{ listen: 6380, to: 6379, allow: [] }', re: /at least one workload/, path: '.allow', at: '[]' },
    { ingress: '{ listen: 6380, to: 6379, allow: web }', re: /must be a list/, path: '.allow', at: 'web' },
    { ingress: '{ listen: 6380, to: 6379, allow: [Web] }', re: /must name a workload of this policy \("web"\) or of another policy \("org\/app#web"\)/, path: '.allow[0]', at: 'Web' },
    { ingress: '{ listen: 6380, to: 6379, allow: [web, "shop#web"] }', re: /must name a workload/, path: '.allow[1]', at: '"shop#web"' },
    { ingress: '{ listen: 6380, to: 6379, allow: ["org/app#"] }', re: /must name a workload/, path: '.allow[0]', at: '"org/app#"' },
    { ingress: '{ listen: 6380, to: 6379, allow: ["a/b#c#d"] }', re: /must name a workload/, path: '.allow[0]', at: '"a/b#c#d"' },
    { ingress: '{ listen: 6380, to: 6379, allow: [{ policy: nope, workload: web }] }', re: /policy name "org\/app"/, path: '.allow[0].policy', at: 'nope' },
    { ingress: '{ listen: 6380, to: 6379, allow: [{ policy: org/app }] }', re: /missing required field "workload"/, path: '.allow[0]', at: '{ policy' },
    { ingress: '{ listen: 6380, to: 6379, allow: [{ workload: web, tee: sim }] }', re: /unknown field "tee"/, path: '.allow[0].tee', at: 'sim' },
    { ingress: '{ listen: 6380, to: 6379, allow: [web, "shop/mtls#web"] }', re: /shop\/mtls#web is listed twice/, path: '.allow[1]', at: '"shop/mtls#web"' },
    // cross-references within the policy
    { ingress: '{ listen: 6380, to: 6379, allow: [wbe] }', re: /unknown workload "wbe" of this policy/, path: '.allow[0]', at: 'wbe' },
    { ingress: '{ listen: 6380, to: 6379, allow: ["org/app#job", "shop/mtls#nope"] }', re: /unknown workload "nope"/, path: '.allow[1]', at: '"shop/mtls#nope"' },
    { ingress: '{ listen: 6380, to: 6379, allow: [plain] }', re: /workload "plain" gets no workload certificate/, path: '.allow[0]', at: 'plain', more: `  plain: { accept: [{ tee: [sim], measurement: "${M}" }] }\n` },
  ];
  for (const c of cases) {
    const text = shop(c.ingress, c.more);
    const err = invalid(text, c.re, 9);
    assert.equal(err.details?.path, `workloads.redis.tls.ingress[0]${c.path}`, c.ingress);
    const line = text.split('\n')[8] as string;
    assert.equal(err.details?.column, line.indexOf(c.at, line.indexOf('allow')) + 1, `${c.ingress}: ${err.message}`);
  }
});

test('tls ingress allow: in the JSON Schema, the launch-plan wire form and policy diff', () => {
  const doc = (ingress: Record<string, unknown>) => ({ name: 'a/b', workloads: { w: { accept: [{ tee: ['sim'], measurement: M }], tls: { ingress: [{ listen: 443, to: 80, ...ingress }] } } } });
  assert.deepEqual(policySchemaErrors(doc({ allow: ['web', 'org/app#web', { workload: 'w' }, { policy: 'org/app', workload: 'x' }] })), []);
  for (const bad of [{ clientCert: 'optional', allow: ['web'] }, { allow: [] }, { allow: ['Web'] }, { allow: ['org#web'] }, { allow: [{ policy: 'org/app' }] }]) {
    assert.ok(policySchemaErrors(doc(bad)).length > 0, JSON.stringify(bad));
  }
  const yaml = (allow: string) => shop(`{ listen: 6380, to: 6379${allow} }`);
  const open = parsePolicy(yaml(''));
  const closed = parsePolicy(yaml(', allow: [web]'));
  // the launch plan carries full names, which the launcher parses back to the same spec
  const wire = tlsSpecToWire(closed.workloads.redis!.tls!);
  assert.deepEqual(wire, { ingress: [{ listen: 6380, to: 6379, clientCert: 'required', allow: ['shop/mtls#web'] }], egress: [] });
  assert.deepEqual(parseTlsSpec(wire), closed.workloads.redis!.tls);
  assert.throws(() => parseTlsSpec({ ingress: [{ listen: 1, to: 2, allow: ['web'] }] }), /name the policy too/);
  // policy diff shows the allow list
  assert.equal(formatPolicyDiff(diffPolicies(open, closed)), '+ workloads.redis.tls.ingress[0].allow: ["shop/mtls#web"]');
  assert.equal(formatPolicyDiff(diffPolicies(closed, parsePolicy(yaml(', allow: [web, "shop/other#app"]')))), '~ workloads.redis.tls.ingress[0].allow: ["shop/mtls#web"] → ["shop/mtls#web","shop/other#app"]');
});

test('a volumes error points at the offending field (file:line of the value)', () => {
  const err = invalid(
    base(`    volumes:
      - name: data
        mountPath: /data
      - name: logs
        mountPath: /cocoon/logs
`),
    /mountPath must not be under \/cocoon/,
    15,
  );
  assert.equal(err.details?.path, 'workloads.redis.volumes[1].mountPath');
});

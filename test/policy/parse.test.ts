import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CocoonError } from '../../src/errors.js';
import { evaluateAccept, grantedSecrets, parsePolicy, parseTemplate, renderTemplate } from '../../src/policy/index.js';

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

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CocoonError } from '../../src/errors.js';
import { readFileBounded } from '../../src/util/read-bounded.js';
import { readJwkFile } from '../../src/crypto/jwk-file.js';

const codeOf = async (p: Promise<unknown>): Promise<string> => {
  try {
    await p;
    return 'resolved';
  } catch (err) {
    return err instanceof CocoonError ? err.code : `not a CocoonError: ${String(err)}`;
  }
};

test('bounded read: up to the bound, refusals with stable codes, /dev/zero refused without reading it whole', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'cocoon-bounded-'));
  try {
    const file = join(dir, 'f');
    await writeFile(file, Buffer.alloc(100_000, 7));
    assert.deepEqual(await readFileBounded(file, { max: 100_000, what: 'policy' }), Buffer.alloc(100_000, 7), 'exactly the bound, over several chunks');
    assert.equal(await codeOf(readFileBounded(file, { max: 99_999, what: 'policy' })), 'INPUT_TOO_LARGE');
    await writeFile(join(dir, 'empty'), '');
    assert.equal((await readFileBounded(join(dir, 'empty'), { max: 10, what: 'policy' })).length, 0);
    assert.equal(await codeOf(readFileBounded(join(dir, 'missing'), { max: 10, what: 'policy' })), 'IO_ERROR');
    assert.equal(await codeOf(readFileBounded(join(dir, 'missing'), { max: 10, what: 'policy', unreadable: 'BAD_USAGE' })), 'BAD_USAGE');
    await mkdir(join(dir, 'd'));
    assert.equal(await codeOf(readFileBounded(join(dir, 'd'), { max: 10, what: 'policy', unreadable: 'BAD_USAGE' })), 'BAD_USAGE');
    const started = Date.now();
    assert.equal(await codeOf(readFileBounded('/dev/zero', { max: 1024 * 1024, what: 'policy' })), 'INPUT_TOO_LARGE');
    assert.ok(Date.now() - started < 5000, 'stops at the bound');
    // key material: refused when group or others have access
    await writeFile(join(dir, 'key'), 'k');
    await chmod(join(dir, 'key'), 0o640);
    const err = await readFileBounded(join(dir, 'key'), { max: 10, what: 'owner key', ownerOnly: true }).catch((e: unknown) => e);
    assert.ok(err instanceof CocoonError && err.code === 'IO_ERROR' && /accessible by other users/.test(err.message), String(err));
    await chmod(join(dir, 'key'), 0o600);
    assert.equal((await readFileBounded(join(dir, 'key'), { max: 10, what: 'owner key', ownerOnly: true })).toString(), 'k');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('bounded read: a pipe is read to its end, and an endless one is cut at the bound', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'cocoon-bounded-'));
  try {
    const fifo = join(dir, 'fifo');
    await new Promise<void>((resolve, reject) => spawn('mkfifo', [fifo]).on('exit', (c) => (c === 0 ? resolve() : reject(new Error(`mkfifo ${c}`)))));
    const writer = spawn('sh', ['-c', `printf 'name: demo/app\\n' > ${fifo}`]);
    const written = new Promise((resolve) => writer.on('exit', resolve));
    assert.equal((await readFileBounded(fifo, { max: 64, what: 'policy' })).toString(), 'name: demo/app\n');
    assert.equal(await written, 0);
    const endless = spawn('sh', ['-c', `yes > ${fifo}`]);
    try {
      assert.equal(await codeOf(readFileBounded(fifo, { max: 100_000, what: 'policy' })), 'INPUT_TOO_LARGE');
    } finally {
      endless.kill();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('JWK files: one JSON object within 16 KiB, else INPUT_MALFORMED or INPUT_TOO_LARGE', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'cocoon-jwk-'));
  try {
    const f = (name: string) => join(dir, name);
    await writeFile(f('ok'), '{"kty":"OKP","crv":"X25519","x":"AAAA"}\n');
    assert.deepEqual(await readJwkFile(f('ok'), 'key'), { kty: 'OKP', crv: 'X25519', x: 'AAAA' });
    for (const [name, text] of [
      ['array', '[]'],
      ['null', 'null'],
      ['text', 'not json'],
      ['string', '"x"'],
    ] as const) {
      await writeFile(f(name), text);
      assert.equal(await codeOf(readJwkFile(f(name), 'key')), 'INPUT_MALFORMED', name);
    }
    await writeFile(f('big'), `{"x":"${'a'.repeat(17 * 1024)}"}`);
    assert.equal(await codeOf(readJwkFile(f('big'), 'key')), 'INPUT_TOO_LARGE');
    await chmod(f('ok'), 0o644);
    assert.equal(await codeOf(readJwkFile(f('ok'), 'key', { ownerOnly: true })), 'IO_ERROR');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

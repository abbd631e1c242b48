import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { chmod, mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { installKeys } from '../../src/k8s/keys.js';
import { isCocoonError } from '../../src/errors.js';

describe('cocoon k8s install-keys (KBS init container)', () => {
  it('copies both key files as 0600, replacing older copies', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cocoon-keys-'));
    try {
      const from = join(dir, 'secret');
      const to = join(dir, 'data');
      await mkdir(from);
      await mkdir(to);
      await writeFile(join(from, 'kbs-identity.jwk'), '{"kty":"EC"}\n');
      await writeFile(join(from, 'seal.key'), 'c2VhbA==\n');
      await chmod(join(from, 'seal.key'), 0o440);
      await writeFile(join(to, 'seal.key'), 'old');
      const written = await installKeys(from, to);
      assert.deepEqual(written, [join(to, 'kbs-identity.jwk'), join(to, 'seal.key')]);
      for (const f of written) assert.equal((await stat(f)).mode & 0o777, 0o600);
      assert.equal(await readFile(join(to, 'seal.key'), 'utf8'), 'c2VhbA==\n');

      await rm(join(from, 'seal.key'));
      await assert.rejects(installKeys(from, to), (e: unknown) => isCocoonError(e, 'IO_ERROR') && /seal\.key is missing/.test((e as Error).message));
      await writeFile(join(from, 'seal.key'), Buffer.alloc(70 * 1024));
      await assert.rejects(installKeys(from, to), (e: unknown) => isCocoonError(e, 'INPUT_TOO_LARGE'));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

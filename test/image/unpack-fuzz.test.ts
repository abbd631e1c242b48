import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import fc from 'fast-check';
import { CocoonError } from '../../src/errors.js';
import { unpackLayer } from '../../src/image/unpack.js';
import { rawTar, type RawEntry } from './helpers.js';

const component = fc.oneof(
  { arbitrary: fc.constantFrom('a', 'b', 'c'), weight: 10 },
  { arbitrary: fc.constantFrom('..', '.', '.wh.a', '.wh..wh..opq'), weight: 1 },
);
const relPath = fc.array(component, { minLength: 1, maxLength: 4 }).map((cs) => cs.join('/'));

function entryArb(outside: string): fc.Arbitrary<RawEntry> {
  const target = fc.oneof(relPath, relPath.map((p) => `/${p}`), fc.constant(outside), fc.constant(`${outside}/x`), fc.constant('../../outside'));
  return fc.oneof(
    fc.record({ name: fc.oneof(relPath, relPath.map((p) => `/${p}`)), type: fc.constant<'file'>('file'), content: fc.constant('x') }),
    fc.record({ name: relPath, type: fc.constant<'directory'>('directory') }),
    fc.record({ name: relPath, type: fc.constant<'symlink'>('symlink'), linkname: target }),
    fc.record({ name: relPath, type: fc.constant<'link'>('link'), linkname: target }),
  );
}

test('random hostile layers never write outside the root and fail only with Cocoon codes', async () => {
  const base = await mkdtemp(join(tmpdir(), 'cocoon-fuzz-'));
  const outside = join(base, 'outside');
  try {
    await fc.assert(
      fc.asyncProperty(fc.array(fc.array(entryArb(outside), { minLength: 1, maxLength: 8 }), { minLength: 1, maxLength: 3 }), async (layers) => {
        const root = join(base, 'root');
        await rm(root, { recursive: true, force: true });
        await rm(outside, { recursive: true, force: true });
        await mkdir(join(outside, 'a'), { recursive: true });
        await writeFile(join(outside, 'canary'), 'canary');
        for (const entries of layers) {
          try {
            await unpackLayer(Readable.from([await rawTar(entries)]), 'none', root, { chown: false });
          } catch (err) {
            assert.ok(err instanceof CocoonError, `unexpected error ${String(err)}`);
            assert.ok(['PATH_TRAVERSAL', 'IMAGE_INVALID', 'IO_ERROR'].includes(err.code), err.code);
          }
        }
        assert.deepEqual((await readdir(outside)).sort(), ['a', 'canary']);
        assert.deepEqual(await readdir(join(outside, 'a')), []);
        assert.equal(await readFile(join(outside, 'canary'), 'utf8'), 'canary');
        assert.deepEqual((await readdir(base)).sort(), ['outside', 'root']);
      }),
      { numRuns: 150, seed: 42 },
    );
  } finally {
    await rm(base, { recursive: true, force: true });
  }
});

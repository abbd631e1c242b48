/**
 * Periodic and on-demand commits of protected volumes while the app runs (docs/volumes.md,
 * "Periodic commits"): the commit loop (interval, commit now, unchanged volumes, KBS failures
 * and CONFLICT), stable per-file reads of files that change during sealing, and the atomic
 * switch — a commit killed part-way (a real SIGKILL of a sealing process, or a failure between
 * the steps) leaves the previous or the new version, and the KBS counter stays consistent.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { appendFile, mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CocoonError, isCocoonError } from '../../src/errors.js';
import { readStoreManifest, restoreVolume, STABLE_READ_ATTEMPTS } from '../../src/launcher/volumes/format.js';
import { commitOpenVolume, openVolumes } from '../../src/launcher/volumes/index.js';
import type { CounterCommit, OpenVolume } from '../../src/launcher/volumes/index.js';
import { COMMIT_SIGNAL, VolumeCommitter } from '../../src/launcher/volumes/commit.js';
import { parseCommitEvery, parseVolumesSpec, VolumeSpecError } from '../../src/policy/volumes.js';
import { parseVolumeGrants } from '../../src/kbs/volume-plan.js';
import { policySchemaErrors } from '../../src/policy/parse.js';
import { createLauncherLog } from '../../src/launcher/log.js';

const key = randomBytes(32);
const M = 'a'.repeat(96);

function capturingLog(): { log: ReturnType<typeof createLauncherLog>; lines: string[] } {
  const lines: string[] = [];
  return { lines, log: createLauncherLog({ write: (s: string) => lines.push(s) } as unknown as NodeJS.WritableStream) };
}

/** A KBS counter with compare-and-set, recording calls; `store` is checked never to run more than one version ahead. */
class FakeKbs {
  counter = 0;
  readonly calls: [number, number][] = [];
  /** Commits that found the store more than one version ahead of the counter. */
  readonly violations: string[] = [];
  /** 'down': refuse with a network error; 'lost': apply, then fail as if the answer was lost. */
  mode: 'ok' | 'down' | 'lost' = 'ok';
  constructor(private readonly storeDir: string) {}
  readonly commit: CounterCommit = async (_volume, from, to) => {
    this.calls.push([from, to]);
    const have = (await readStoreManifest(this.storeDir, 'data', key))?.version ?? 0;
    // recorded too: the commit loop logs a failed commit instead of rethrowing it (checked by setUp)
    if (have > this.counter + 1) this.violations.push(`store ${have} more than one commit ahead of counter ${this.counter}`);
    assert.ok(have <= this.counter + 1, `store ${have} never more than one commit ahead of counter ${this.counter}`);
    if (this.mode === 'down') throw new CocoonError('KBS_UNREACHABLE', 'KBS not reachable');
    if (from !== this.counter) throw new CocoonError('CONFLICT', `counter is ${this.counter}, not ${from}`, { details: { version: this.counter } });
    this.counter = to;
    if (this.mode === 'lost') throw new Error('socket hang up');
  };
}

async function setUp(fn: (d: { work: string; storeDir: string; root: string; data: string; kbs: FakeKbs; open: (grant?: { commitEvery?: number; allowRollback?: boolean }) => Promise<OpenVolume> }) => Promise<void>): Promise<void> {
  const work = await mkdtemp(join(tmpdir(), 'cocoon-volc-'));
  const storeRoot = join(work, 'stores');
  const storeDir = join(storeRoot, 'data');
  await mkdir(storeDir, { recursive: true });
  const root = join(work, 'root');
  await mkdir(root);
  const kbs = new FakeKbs(storeDir);
  const { log } = capturingLog();
  const open = async (g: { commitEvery?: number; allowRollback?: boolean } = {}) => {
    const [v] = await openVolumes([{ name: 'data', mountPath: '/data', allowRollback: g.allowRollback ?? false, key, version: kbs.counter, ...(g.commitEvery !== undefined ? { commitEvery: g.commitEvery } : {}) }], { storeRoot, rootDir: root, chown: false, commit: kbs.commit }, log);
    return v as OpenVolume;
  };
  try {
    await fn({ work, storeDir, root, data: join(root, 'data'), kbs, open });
    assert.deepEqual(kbs.violations, []);
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** The files of the store's current version, decrypted (authenticates every chunk). */
async function storeContent(storeDir: string, work: string): Promise<{ version: number; files: Record<string, string> }> {
  const m = await readStoreManifest(storeDir, 'data', key);
  if (!m) return { version: 0, files: {} };
  const dest = await mkdtemp(join(work, 'restore-'));
  await restoreVolume(storeDir, key, m, dest, { chown: false });
  const files: Record<string, string> = {};
  for (const e of m.entries) if (e.type === 'file') files[e.path] = await readFile(join(dest, e.path), 'utf8');
  await rm(dest, { recursive: true });
  return { version: m.version, files };
}

const until = async (cond: () => boolean | Promise<boolean>, what: string, ms = 5000): Promise<void> => {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
};

test('policy: commitEvery is a duration from 10s to 24h; the launch plan carries it in seconds', () => {
  assert.equal(parseCommitEvery('5m'), 300);
  assert.equal(parseCommitEvery('90s'), 90);
  assert.equal(parseCommitEvery('2h'), 7200);
  assert.equal(parseCommitEvery('5 m'), undefined);
  assert.deepEqual(parseVolumesSpec([{ name: 'data', mountPath: '/data', commitEvery: '5m' }]), [{ name: 'data', mountPath: '/data', allowRollback: false, commitEvery: 300 }]);
  assert.equal(parseVolumesSpec([{ name: 'data', mountPath: '/data' }])[0]?.commitEvery, undefined, 'default: no periodic commits');
  for (const bad of ['5s', '9s', '25h', '1441m', '0m', '05m', '1d', 300, true, '']) {
    assert.throws(() => parseVolumesSpec([{ name: 'd', mountPath: '/d', commitEvery: bad }]), (e: unknown) => e instanceof VolumeSpecError && e.path === '[0].commitEvery', String(bad));
  }
  assert.equal(parseVolumesSpec([{ name: 'd', mountPath: '/d', commitEvery: '10s' }])[0]?.commitEvery, 10);
  assert.equal(parseVolumesSpec([{ name: 'd', mountPath: '/d', commitEvery: '24h' }])[0]?.commitEvery, 86_400);
  const pol = (commitEvery: unknown) => ({ name: 'a/b', workloads: { w: { accept: [{ tee: ['sim'], measurement: M }], volumes: [{ name: 'd', mountPath: '/d', commitEvery }] } } });
  assert.deepEqual(policySchemaErrors(pol('5m')), []);
  assert.ok(policySchemaErrors(pol(300)).length > 0);
  const wire = { name: 'd', mountPath: '/d', allowRollback: false, key: key.toString('base64'), version: 0 };
  assert.equal(parseVolumeGrants([{ ...wire, commitEvery: 300 }])[0]?.commitEvery, 300);
  assert.equal(parseVolumeGrants([wire])[0]?.commitEvery, undefined);
  for (const bad of [0, -1, 1.5, '300', 86_401]) assert.throws(() => parseVolumeGrants([{ ...wire, commitEvery: bad }]), (e: unknown) => isCocoonError(e, 'INPUT_MALFORMED'));
});

test('commit loop: commits every interval while data changes, writes nothing (no KBS call) while idle, and seals at close', () =>
  setUp(async ({ work, storeDir, data, kbs, open }) => {
    const v = await open({ commitEvery: 1 });
    const { log, lines } = capturingLog();
    const c = new VolumeCommitter([v], { commit: kbs.commit, log, unitMs: 30 });
    c.start();
    await writeFile(join(data, 'db'), 'one');
    await until(() => kbs.counter >= 1, 'the first periodic commit');
    assert.deepEqual((await storeContent(storeDir, work)).files, { db: 'one' });
    // idle: the ticks go on but write no version and do not call the KBS
    const calls = kbs.calls.length;
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(kbs.calls.length, calls, 'no KBS call for an unchanged volume');
    assert.equal((await readStoreManifest(storeDir, 'data', key))?.version, kbs.counter);
    await writeFile(join(data, 'db'), 'two');
    await until(async () => (await storeContent(storeDir, work)).files.db === 'two', 'the next periodic commit');
    await until(() => kbs.counter === (v.manifest?.version ?? -1), 'the counter to follow');
    await writeFile(join(data, 'db'), 'three');
    const before = kbs.counter;
    await c.close();
    assert.equal(kbs.counter, before + 1, 'close seals once more');
    assert.deepEqual(await storeContent(storeDir, work), { version: before + 1, files: { db: 'three' } });
    const after = kbs.calls.length;
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(kbs.calls.length, after, 'no commits after close');
    assert.ok(lines.some((l) => /committed version 1 \(periodic commit\)/.test(l)), lines.join(''));
  }));

test('commit now (COMMIT_SIGNAL): commits at once without commitEvery; concurrent requests coalesce; an unchanged volume is left alone', () =>
  setUp(async ({ work, storeDir, data, kbs, open }) => {
    assert.equal(COMMIT_SIGNAL, 'SIGPWR', 'not one of the signals forwarded to the app');
    const v = await open();
    const { log } = capturingLog();
    const c = new VolumeCommitter([v], { commit: kbs.commit, log });
    c.start();
    await writeFile(join(data, 'f'), 'x');
    await Promise.all([c.commitNow(), c.commitNow(), c.commitNow()]);
    assert.deepEqual(kbs.calls, [[0, 1]], 'three requests before the commit started: one commit');
    await c.commitNow();
    assert.deepEqual(kbs.calls, [[0, 1]], 'unchanged: nothing written, no KBS call');
    await appendFile(join(data, 'f'), 'y');
    await c.commitNow();
    assert.deepEqual(kbs.calls, [[0, 1], [1, 2]]);
    assert.deepEqual(await storeContent(storeDir, work), { version: 2, files: { f: 'xy' } });
    await c.close();
    assert.equal(kbs.counter, 3, 'a clean shutdown always commits (as before)');
  }));

test('KBS failures: the store never runs two versions ahead; the next commit first advances the counter; a lost answer is recognised', () =>
  setUp(async ({ work, storeDir, root, data, kbs, open }) => {
    const v = await open();
    const { log, lines } = capturingLog();
    const c = new VolumeCommitter([v], { commit: kbs.commit, log });
    await writeFile(join(data, 'f'), 'v1');
    kbs.mode = 'down';
    await c.commitNow(); // store → 1, counter stays 0
    assert.equal(kbs.counter, 0);
    assert.equal((await readStoreManifest(storeDir, 'data', key))?.version, 1);
    await writeFile(join(data, 'f'), 'v2');
    await c.commitNow(); // the pending advance fails again: nothing new is written
    assert.equal((await readStoreManifest(storeDir, 'data', key))?.version, 1, 'not written as version 2 while the counter is 0');
    assert.ok(lines.some((l) => /the store holds version 1, the KBS counter is 0/.test(l)), lines.join(''));
    // a crash now: the next start completes the commit of version 1 (its content: v1)
    assert.deepEqual(await storeContent(storeDir, work), { version: 1, files: { f: 'v1' } });
    kbs.mode = 'lost'; // the advance 0→1 reaches the KBS, the answer does not
    await c.commitNow();
    assert.equal(kbs.counter, 1);
    kbs.mode = 'ok';
    await c.commitNow(); // pending 0→1 gets CONFLICT with version 1: already done; then seals v2 as 2
    assert.equal(kbs.counter, 2);
    assert.deepEqual(await storeContent(storeDir, work), { version: 2, files: { f: 'v2' } });
    assert.equal(c.stoppedReason('data'), undefined);
    assert.ok(lines.some((l) => /its answer was lost/.test(l)));
    await c.close();
    // reopen: the store and the counter agree
    await rm(data, { recursive: true });
    const again = await open();
    assert.equal(again.counter, 3);
    assert.equal(await readFile(join(root, 'data', 'f'), 'utf8'), 'v2');
  }));

test('CONFLICT (another instance advanced the counter): commits stop with an error; nothing more is written; close refuses', () =>
  setUp(async ({ storeDir, data, kbs, open }) => {
    const v = await open({ commitEvery: 1 });
    const { log, lines } = capturingLog();
    const c = new VolumeCommitter([v], { commit: kbs.commit, log, unitMs: 20 });
    c.start();
    await writeFile(join(data, 'f'), 'mine');
    await until(() => kbs.counter === 1, 'the first commit');
    kbs.counter = 5; // someone else committed
    await writeFile(join(data, 'f'), 'mine, later');
    await until(() => c.stoppedReason('data') !== undefined, 'the conflict');
    assert.ok(lines.some((l) => /ERROR|error/i.test(l) && /another instance committed this volume/.test(l)), lines.join(''));
    const version = (await readStoreManifest(storeDir, 'data', key))?.version;
    const calls = kbs.calls.length;
    await writeFile(join(data, 'f'), 'even later');
    await c.commitNow();
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(kbs.calls.length, calls, 'no more KBS calls');
    assert.equal((await readStoreManifest(storeDir, 'data', key))?.version, version, 'no more store writes');
    await assert.rejects(c.close(), (e: unknown) => isCocoonError(e, 'CONFLICT') && /not sealed at shutdown/.test((e as Error).message));
    assert.equal(kbs.counter, 5);
  }));

test('stable reads: a file changing during sealing is read again; one that never settles keeps its previous version; no torn content is sealed', () =>
  setUp(async ({ work, storeDir, data, kbs, open }) => {
    const v = await open();
    await writeFile(join(data, 'calm'), 'calm');
    await writeFile(join(data, 'busy'), 'busy-0');
    const { log, lines } = capturingLog();
    await commitOpenVolume(v, kbs.commit, log, { reason: 'periodic' });
    assert.deepEqual((await storeContent(storeDir, work)).files, { busy: 'busy-0', calm: 'calm' });
    // 'busy' changes right after its first read, once: sealed from the second attempt
    await writeFile(join(data, 'busy'), 'busy-1');
    await commitOpenVolume(v, kbs.commit, log, {
      reason: 'periodic',
      onRead: async (path, attempt) => {
        if (path === 'busy' && attempt === 0) await writeFile(join(data, 'busy'), 'busy-2, longer');
      },
    });
    assert.deepEqual((await storeContent(storeDir, work)).files, { busy: 'busy-2, longer', calm: 'calm' });
    // 'busy' changes during every read; 'fresh' (new) too: the previous 'busy' is kept, 'fresh' left out
    const n: Record<string, number> = { busy: 0, fresh: 0 };
    await writeFile(join(data, 'fresh'), 'fresh');
    await writeFile(join(data, 'calm'), 'calm, changed');
    const r = await commitOpenVolume(v, kbs.commit, log, {
      reason: 'periodic',
      onRead: async (path) => {
        if (path === 'busy' || path === 'fresh') await writeFile(join(data, path), `${path}-${(n[path] = (n[path] ?? 0) + 1)}`);
      },
    });
    assert.deepEqual(r.unstable.sort(), ['busy', 'fresh']);
    assert.deepEqual(n, { busy: STABLE_READ_ATTEMPTS, fresh: STABLE_READ_ATTEMPTS });
    assert.deepEqual(await storeContent(storeDir, work), { version: 3, files: { busy: 'busy-2, longer', calm: 'calm, changed' } });
    assert.ok(lines.some((l) => /2 file\(s\) kept changing while being sealed/.test(l)));
    // once quiet, the next commit takes them
    await commitOpenVolume(v, kbs.commit, log, { reason: 'periodic' });
    assert.deepEqual((await storeContent(storeDir, work)).files, { busy: `busy-${STABLE_READ_ATTEMPTS}`, calm: 'calm, changed', fresh: `fresh-${STABLE_READ_ATTEMPTS}` });
  }));

test('entries deleted, replaced or turned into symlinks/FIFOs during the walk are skipped, not fatal', () =>
  setUp(async ({ work, storeDir, data, kbs, open }) => {
    const { mkfifo } = { mkfifo: async (p: string) => new Promise<void>((res, rej) => spawn('mkfifo', [p]).once('exit', (c) => (c === 0 ? res() : rej(new Error('mkfifo'))))) };
    const { symlink, rename } = await import('node:fs/promises');
    const v = await open();
    await mkdir(join(data, 'dir'));
    for (const f of ['a', 'b', 'c', 'dir/x']) await writeFile(join(data, f), f);
    const { log } = capturingLog();
    await commitOpenVolume(v, kbs.commit, log, {
      reason: 'periodic',
      onRead: async (path) => {
        if (path === 'a') {
          await rm(join(data, 'b')); // deleted after readdir
          await rm(join(data, 'c'));
          await mkfifo(join(data, 'c')); // a FIFO swapped in: must not block the seal
          await rename(join(data, 'dir'), join(work, 'moved'));
          await symlink('/etc', join(data, 'dir')); // a directory swapped for a symlink out of the root
        }
      },
    });
    const { files } = await storeContent(storeDir, work);
    assert.deepEqual(Object.keys(files).sort(), ['a'], JSON.stringify(files));
  }));

test('atomic switch: a sealing process SIGKILLed at any point leaves the previous or the new version, never a mix', { timeout: 120_000 }, () =>
  setUp(async ({ work, storeDir, data }) => {
    const child = new URL('./volume-seal-child.ts', import.meta.url).pathname;
    await mkdir(data, { recursive: true });
    const write = async (gen: number) => {
      for (let i = 0; i < 300; i++) await writeFile(join(data, `f${i}`), `${gen}:${i}:`.padEnd(20_000, String(gen % 10)));
    };
    const seal = (killAfterMs: number | undefined) =>
      new Promise<boolean>((resolve, reject) => {
        const p = spawn(process.execPath, ['--import', 'tsx', child, storeDir, data, key.toString('hex')], { stdio: ['ignore', 'pipe', 'inherit'] });
        let out = '';
        p.stdout.on('data', (d: Buffer) => {
          out += d.toString();
          if (killAfterMs !== undefined && out.includes('sealing')) setTimeout(() => p.kill('SIGKILL'), killAfterMs);
        });
        p.once('error', reject);
        p.once('exit', () => resolve(out.includes('sealed')));
      });
    const expect = (gen: number) => Object.fromEntries(Array.from({ length: 300 }, (_, i) => [`f${i}`, `${gen}:${i}:`.padEnd(20_000, String(gen % 10))]));
    await write(1);
    assert.equal(await seal(undefined), true);
    let committed = 1; // generation of the version in the store
    let version = 1;
    const outcomes = new Set<string>();
    for (const [gen, delay] of [[2, 0], [3, 5], [4, 15], [5, 30], [6, 60], [7, 120], [8, 250]] as const) {
      await write(gen);
      const finished = await seal(delay);
      const got = await storeContent(storeDir, work); // authenticates every chunk of every file
      if (got.version === version) {
        assert.deepEqual(got.files, expect(committed), `killed after ${delay} ms: the previous version, intact`);
        outcomes.add('previous');
      } else {
        assert.equal(got.version, version + 1);
        assert.deepEqual(got.files, expect(gen), `killed after ${delay} ms: the new version, complete`);
        version = got.version;
        committed = gen;
        outcomes.add(finished ? 'finished' : 'new');
      }
    }
    // interrupted commits leave unreferenced blobs only; the next commit removes them
    await write(9);
    assert.equal(await seal(undefined), true);
    assert.equal((await readdir(join(storeDir, 'blobs'))).length, 300);
    assert.ok(outcomes.has('previous'), `some kill hit mid-commit: ${[...outcomes].join(', ')}`);
  }));

test('crash between the store write and the counter advance: the previous version is replaced atomically; the next start completes the commit', () =>
  setUp(async ({ work, storeDir, root, data, kbs, open }) => {
    const v = await open();
    await writeFile(join(data, 'f'), 'committed');
    await new VolumeCommitter([v], { commit: kbs.commit, log: createLauncherLog({ write: () => true } as unknown as NodeJS.WritableStream) }).close();
    assert.equal(kbs.counter, 1);
    // a periodic commit: the walk dies half-way (before the manifest rename)
    const v2 = await open();
    await writeFile(join(data, 'f'), 'lost');
    await writeFile(join(data, 'g'), 'lost too');
    const { log } = capturingLog();
    await assert.rejects(
      commitOpenVolume(v2, kbs.commit, log, {
        reason: 'periodic',
        onRead: (path) => {
          if (path === 'g') throw new Error('killed');
        },
      }),
      /killed/,
    );
    assert.deepEqual(await storeContent(storeDir, work), { version: 1, files: { f: 'committed' } });
    assert.equal(kbs.counter, 1);
    await rm(data, { recursive: true });
    const v3 = await open();
    assert.equal(v3.counter, 1);
    assert.equal(await readFile(join(root, 'data', 'f'), 'utf8'), 'committed');
    // the manifest is renamed, then the process dies before the KBS call: version 2 with counter 1
    await writeFile(join(data, 'f'), 'kept');
    kbs.mode = 'down';
    await assert.rejects(commitOpenVolume(v3, kbs.commit, log, { reason: 'periodic' }), /KBS not reachable/);
    kbs.mode = 'ok';
    assert.equal(kbs.counter, 1);
    await rm(data, { recursive: true });
    const v4 = await open();
    assert.equal(kbs.counter, 2, 'the next start advanced the counter');
    assert.equal(v4.counter, 2);
    assert.equal(await readFile(join(root, 'data', 'f'), 'utf8'), 'kept');
  }));

/**
 * Peak memory of image operations on a generated ~2 GB image (4 layers of ~512 MiB random
 * data, tar+gzip): `cocoon wrap`, `cocoon image encrypt`, `cocoon image decrypt`, each in its
 * own process (dist/cli.mjs), peak RSS from /usr/bin/time -v (VmHWM). Slow (minutes): a bench,
 * not a test.
 *
 *   node scripts/build.mjs && node --import tsx bench/image-memory.ts [--mib 2048] [--json]
 */
import { execFile } from 'node:child_process';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { promisify } from 'node:util';
import { createGzip } from 'node:zlib';
import tar from 'tar-stream';
import { LayoutWriter } from '../src/image/layout.js';
import { MediaType, type Descriptor } from '../src/image/oci.js';
import { HashTap } from '../src/image/streams.js';

const run = promisify(execFile);
const MIB = 1024 * 1024;
const root = join(import.meta.dirname, '..');
const cli = join(root, 'dist', 'cli.mjs');

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? (process.argv[i + 1] ?? dflt) : dflt;
}
const totalMiB = Number(arg('mib', '2048'));
const json = process.argv.includes('--json');

async function makeImage(dir: string): Promise<number> {
  const w = await LayoutWriter.open(dir);
  const layers: Descriptor[] = [];
  const diffIDs: string[] = [];
  let bytes = 0;
  const files = Math.max(1, Math.round(totalMiB / 4 / 16));
  for (let l = 0; l < 4; l++) {
    const pack = tar.pack();
    const tap = new HashTap();
    const done = w.putStream(Readable.from(pack as unknown as AsyncIterable<Buffer>).pipe(tap).pipe(createGzip({ level: 1 })));
    for (let i = 0; i < files; i++) {
      const body = randomBytes(16 * MIB);
      await new Promise<void>((res, rej) => pack.entry({ name: `data/l${l}/f${i}.bin`, size: body.length, mode: 0o644, mtime: new Date(0) }, body, (e) => (e ? rej(e) : res())));
    }
    pack.finalize();
    const r = await done;
    layers.push({ mediaType: MediaType.layerGzip, digest: r.digest, size: r.size });
    diffIDs.push(tap.digest);
    bytes += r.size;
  }
  const cfg = await w.putBytes(Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: { Cmd: ['/bin/true'] }, rootfs: { type: 'layers', diff_ids: diffIDs } })), MediaType.config);
  const md = await w.putBytes(Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.manifest, config: cfg, layers })), MediaType.manifest, { 'org.opencontainers.image.ref.name': 'big' });
  await w.writeIndex([md]);
  return bytes;
}

async function measured(args: string[]): Promise<{ ms: number; peakRssMiB: number }> {
  const t0 = Date.now();
  const { stderr } = await run('/usr/bin/time', ['-v', process.execPath, cli, ...args], { maxBuffer: 16 * MIB, env: { ...process.env, COCOON_CACHE: join(tmpdir(), 'cocoon-bench-mem-cache') } });
  const kb = /Maximum resident set size \(kbytes\): (\d+)/.exec(stderr)?.[1];
  if (!kb) throw new Error(`no RSS in /usr/bin/time output: ${stderr.slice(-500)}`);
  return { ms: Date.now() - t0, peakRssMiB: Math.round(Number(kb) / 1024) };
}

async function main(): Promise<void> {
  if (!existsSync(cli)) throw new Error('dist/cli.mjs is missing: run `node scripts/build.mjs` first');
  const launcherDir = join(root, 'dist', 'launcher-rootfs', 'cocoon');
  const dir = await mkdtemp(join(tmpdir(), 'cocoon-bench-mem-'));
  try {
    const t0 = Date.now();
    const bytes = await makeImage(join(dir, 'src'));
    if (!json) process.stderr.write(`generated ${(bytes / MIB).toFixed(0)} MiB image in ${((Date.now() - t0) / 1000).toFixed(0)} s\n`);
    await writeFile(join(dir, 'k.key'), randomBytes(32).toString('base64') + '\n', { mode: 0o600 });
    const { publicKey, privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    await writeFile(join(dir, 'pub.pem'), publicKey.export({ type: 'spki', format: 'pem' }));
    await writeFile(join(dir, 'priv.pem'), privateKey.export({ type: 'pkcs8', format: 'pem' }));
    const rows: Array<{ op: string; ms: number; peakRssMiB: number }> = [];
    const step = async (op: string, args: string[]) => {
      const r = await measured(args);
      rows.push({ op, ...r });
      if (!json) process.stderr.write(`${op}: ${r.ms} ms, peak RSS ${r.peakRssMiB} MiB\n`);
    };
    await step('cocoon wrap', ['wrap', `oci:${join(dir, 'src')}:big`, `oci:${join(dir, 'wrapped')}:big`, '--policy', 'bench/big', '--workload', 'big', '--key-file', join(dir, 'k.key'), '--launcher-dir', launcherDir, '--quiet']);
    await rm(join(dir, 'wrapped'), { recursive: true, force: true });
    await step('cocoon image encrypt', ['image', 'encrypt', `oci:${join(dir, 'src')}:big`, `oci:${join(dir, 'enc')}:big`, '--recipient', `jwe:${join(dir, 'pub.pem')}`, '--quiet']);
    await step('cocoon image decrypt', ['image', 'decrypt', `oci:${join(dir, 'enc')}:big`, `oci:${join(dir, 'dec')}:big`, '--key', join(dir, 'priv.pem'), '--quiet']);
    const idle = await measured(['image', 'inspect', `oci:${join(dir, 'src')}:big`, '--quiet']);
    const result = { imageMiB: Math.round(bytes / MIB), node: process.version, baselineInspectRssMiB: idle.peakRssMiB, operations: rows };
    if (json) process.stdout.write(JSON.stringify(result, null, 2) + '\n');
    else {
      process.stdout.write(`image ${result.imageMiB} MiB (4 gzip layers)\n`);
      for (const r of rows) process.stdout.write(`${r.op.padEnd(24)} ${String(r.ms).padStart(7)} ms   peak RSS ${String(r.peakRssMiB).padStart(5)} MiB\n`);
      process.stdout.write(`${'cocoon image inspect'.padEnd(24)} (baseline)   peak RSS ${String(idle.peakRssMiB).padStart(5)} MiB\n`);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

await main();

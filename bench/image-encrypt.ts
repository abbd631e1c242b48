/**
 * Image encryption: `cocoon image encrypt` of a generated ≥ 200 MB image next to
 * `skopeo copy --encryption-key jwe:…` of the same image in the same run (wall time, best of
 * N, interleaved), the same for decryption, and decrypt throughput next to
 * `openssl speed -evp aes-256-ctr` (16 KiB blocks).
 *
 *   node scripts/build.mjs && node --import tsx bench/image-encrypt.ts [--mib 224] [--runs 3] [--json]
 *
 * Uses dist/cli.mjs (the CLI users run); skopeo must be installed.
 */
import { execFile, execFileSync } from 'node:child_process';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { createWriteStream, existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { promisify } from 'node:util';
import { createGzip } from 'node:zlib';
import tar from 'tar-stream';
import { BLOB_READ_CHUNK, LayoutWriter, openVerifiedFile } from '../src/image/layout.js';
import { MediaType, type Descriptor } from '../src/image/oci.js';
import { LayerDecryptStream, LayerEncryptStream, verifyLayerHmac } from '../src/image/ocicrypt.js';
import { HashTap } from '../src/image/streams.js';

const run = promisify(execFile);
const MIB = 1024 * 1024;

function arg(name: string, dflt: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? (process.argv[i + 1] ?? dflt) : dflt;
}
const totalMiB = Number(arg('mib', '224'));
const runs = Number(arg('runs', '3'));
const json = process.argv.includes('--json');
const root = join(import.meta.dirname, '..');
const cli = join(root, 'dist', 'cli.mjs');

/** A layer: a tar of `files` random files of `fileMiB` each, gzip level 1 (random data does not compress). */
async function layer(w: LayoutWriter, files: number, fileMiB: number): Promise<{ desc: Descriptor; diffID: string }> {
  const pack = tar.pack();
  const tarTap = new HashTap();
  const done = w.putStream(Readable.from(pack as unknown as AsyncIterable<Buffer>).pipe(tarTap).pipe(createGzip({ level: 1 })));
  for (let i = 0; i < files; i++) {
    const body = randomBytes(fileMiB * MIB);
    await new Promise<void>((res, rej) => pack.entry({ name: `data/f${i}.bin`, size: body.length, mode: 0o644, mtime: new Date(0) }, body, (e) => (e ? rej(e) : res())));
  }
  pack.finalize();
  const r = await done;
  return { desc: { mediaType: MediaType.layerGzip, digest: r.digest, size: r.size }, diffID: tarTap.digest };
}

async function makeImage(dir: string): Promise<number> {
  const w = await LayoutWriter.open(dir);
  const layers: Descriptor[] = [];
  const diffIDs: string[] = [];
  const perLayer = Math.max(1, Math.round(totalMiB / 4));
  let bytes = 0;
  for (let i = 0; i < 4; i++) {
    const l = await layer(w, Math.max(1, perLayer / 8), 8);
    layers.push(l.desc);
    diffIDs.push(l.diffID);
    bytes += l.desc.size;
  }
  const cfg = await w.putBytes(Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: { Cmd: ['/bin/true'] }, rootfs: { type: 'layers', diff_ids: diffIDs } })), MediaType.config);
  const md = await w.putBytes(Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MediaType.manifest, config: cfg, layers })), MediaType.manifest, { 'org.opencontainers.image.ref.name': 'bench' });
  await w.writeIndex([md]);
  return bytes;
}

async function timed(cmd: string, args: string[], env?: NodeJS.ProcessEnv): Promise<number> {
  const t0 = process.hrtime.bigint();
  await run(cmd, args, { env: { ...process.env, ...(env ?? {}) }, maxBuffer: 16 * MIB });
  return Number(process.hrtime.bigint() - t0) / 1e6;
}

function opensslMBps(): number {
  const out = execFileSync('openssl', ['speed', '-evp', 'aes-256-ctr', '-bytes', '16384', '-seconds', '3'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  const m = /aes-256-ctr\s+([\d.]+)k/i.exec(out);
  if (!m?.[1]) throw new Error(`cannot parse openssl speed output: ${out}`);
  return (Number(m[1]) * 1000) / MIB;
}

/**
 * The launcher's path from a file, as decryptPayloadLayers runs it: an HMAC pass, then a decrypt
 * pass, both reading through openVerifiedFile (digest checked), 256 MiB, best of 3.
 */
async function launcherPathMiBps(dir: string, chunkBytes: number): Promise<number> {
  const key = randomBytes(32);
  const nonce = randomBytes(16);
  const enc = new LayerEncryptStream(key, nonce);
  const file = join(dir, 'ct.bin');
  const tap = new HashTap();
  await pipeline(
    Readable.from((function* () {
      const chunk = randomBytes(1 << 20);
      for (let i = 0; i < 256; i++) yield chunk;
    })()),
    enc,
    tap,
    createWriteStream(file),
  );
  const desc = { digest: tap.digest, size: tap.bytes };
  let best = Infinity;
  for (let r = 0; r < 3; r++) {
    const t0 = process.hrtime.bigint();
    await verifyLayerHmac(openVerifiedFile(file, desc, 'bench', chunkBytes), { symkey: key, hmac: enc.hmac });
    await pipeline(
      openVerifiedFile(file, desc, 'bench', chunkBytes),
      new LayerDecryptStream(key, nonce, enc.hmac),
      new Writable({
        write(_c, _e, cb) {
          cb();
        },
      }),
    );
    best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1e6);
  }
  await rm(file, { force: true });
  return 256 / (best / 1000);
}

/** In-process decrypt throughput (LayerDecryptStream over 256 MiB of 64 KiB chunks), best of 3. */
async function inProcessDecryptMiBps(): Promise<number> {
  const key = randomBytes(32);
  const nonce = randomBytes(16);
  const chunk = randomBytes(64 * 1024);
  const n = 4096;
  const enc = new LayerEncryptStream(key, nonce);
  const cts: Buffer[] = [];
  await pipeline(
    Readable.from((function* () {
      for (let i = 0; i < n; i++) yield chunk;
    })()),
    enc,
    new Writable({
      write(c: Buffer, _e, cb) {
        cts.push(c);
        cb();
      },
    }),
  );
  let best = Infinity;
  for (let r = 0; r < 3; r++) {
    const t0 = process.hrtime.bigint();
    await pipeline(
      Readable.from(cts),
      new LayerDecryptStream(key, nonce, enc.hmac),
      new Writable({
        write(_c, _e, cb) {
          cb();
        },
      }),
    );
    best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1e6);
  }
  return (n * 64 * 1024) / MIB / (best / 1000);
}

async function main(): Promise<void> {
  if (!existsSync(cli)) throw new Error('dist/cli.mjs is missing: run `node scripts/build.mjs` first');
  await run('skopeo', ['--version']).catch(() => {
    throw new Error('skopeo is not installed (scripts/setup.sh installs it)');
  });
  const dir = await mkdtemp(join(tmpdir(), 'cocoon-bench-enc-'));
  try {
    const src = join(dir, 'src');
    const t0 = Date.now();
    const bytes = await makeImage(src);
    const { publicKey, privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    await writeFile(join(dir, 'pub.pem'), publicKey.export({ type: 'spki', format: 'pem' }));
    await writeFile(join(dir, 'priv.pem'), privateKey.export({ type: 'pkcs8', format: 'pem' }));
    if (!json) process.stderr.write(`generated ${(bytes / MIB).toFixed(0)} MiB image (4 gzip layers) in ${Date.now() - t0} ms\n`);

    const enc = { cocoon: [] as number[], skopeo: [] as number[] };
    const dec = { cocoon: [] as number[], skopeo: [] as number[] };
    for (let i = 0; i < runs; i++) {
      for (const d of ['c-enc', 's-enc', 'c-dec', 's-dec']) await rm(join(dir, d), { recursive: true, force: true });
      enc.skopeo.push(await timed('skopeo', ['copy', '--quiet', '--encryption-key', `jwe:${join(dir, 'pub.pem')}`, `oci:${src}:bench`, `oci:${join(dir, 's-enc')}:bench`]));
      enc.cocoon.push(await timed(process.execPath, [cli, 'image', 'encrypt', `oci:${src}:bench`, `oci:${join(dir, 'c-enc')}:bench`, '--recipient', `jwe:${join(dir, 'pub.pem')}`, '--quiet']));
      dec.skopeo.push(await timed('skopeo', ['copy', '--quiet', '--decryption-key', join(dir, 'priv.pem'), `oci:${join(dir, 'c-enc')}:bench`, `oci:${join(dir, 's-dec')}:bench`]));
      dec.cocoon.push(await timed(process.execPath, [cli, 'image', 'decrypt', `oci:${join(dir, 's-enc')}:bench`, `oci:${join(dir, 'c-dec')}:bench`, '--key', join(dir, 'priv.pem'), '--quiet']));
      if (!json) process.stderr.write(`run ${i + 1}/${runs}: encrypt cocoon ${enc.cocoon.at(-1)?.toFixed(0)} ms, skopeo ${enc.skopeo.at(-1)?.toFixed(0)} ms; decrypt cocoon ${dec.cocoon.at(-1)?.toFixed(0)} ms, skopeo ${dec.skopeo.at(-1)?.toFixed(0)} ms\n`);
    }
    const min = (a: number[]) => Math.min(...a);
    const mib = bytes / MIB;
    const inProc = await inProcessDecryptMiBps();
    const launcherPath64k = await launcherPathMiBps(dir, 64 * 1024);
    const launcherPath = await launcherPathMiBps(dir, BLOB_READ_CHUNK);
    const openssl = opensslMBps();
    const result = {
      imageMiB: Math.round(mib),
      runs,
      encrypt: { cocoonMs: Math.round(min(enc.cocoon)), skopeoMs: Math.round(min(enc.skopeo)), ratio: Number((min(enc.cocoon) / min(enc.skopeo)).toFixed(2)) },
      decrypt: {
        cocoonMs: Math.round(min(dec.cocoon)),
        skopeoMs: Math.round(min(dec.skopeo)),
        ratio: Number((min(dec.cocoon) / min(dec.skopeo)).toFixed(2)),
        cocoonMiBps: Math.round(mib / (min(dec.cocoon) / 1000)),
        inProcessMiBps: Math.round(inProc),
        launcherPathFromFileMiBps: Math.round(launcherPath),
        launcherPathFromFile64KiBReadsMiBps: Math.round(launcherPath64k),
      },
      opensslAes256CtrMiBps: Math.round(openssl),
      decryptVsOpenssl: Number((inProc / openssl).toFixed(3)),
      node: process.version,
    };
    if (json) process.stdout.write(JSON.stringify(result, null, 2) + '\n');
    else {
      const rows = [
        ['image', `${result.imageMiB} MiB, 4 gzip layers`],
        ['encrypt: cocoon image encrypt (best of runs)', `${result.encrypt.cocoonMs} ms`],
        ['encrypt: skopeo copy --encryption-key (baseline)', `${result.encrypt.skopeoMs} ms`],
        ['ratio encrypt cocoon / skopeo', `${result.encrypt.ratio}×`],
        ['decrypt: cocoon image decrypt', `${result.decrypt.cocoonMs} ms (${result.decrypt.cocoonMiBps} MiB/s)`],
        ['decrypt: skopeo copy --decryption-key', `${result.decrypt.skopeoMs} ms`],
        ['ratio decrypt cocoon / skopeo', `${result.decrypt.ratio}×`],
        ['decrypt in-process (LayerDecryptStream, 64 KiB)', `${result.decrypt.inProcessMiBps} MiB/s`],
        ['launcher path from a file, 1 MiB reads (now)', `${result.decrypt.launcherPathFromFileMiBps} MiB/s`],
        ['launcher path from a file, 64 KiB reads (before)', `${result.decrypt.launcherPathFromFile64KiBReadsMiBps} MiB/s`],
        ['openssl speed -evp aes-256-ctr (16 KiB)', `${result.opensslAes256CtrMiBps} MiB/s`],
        ['ratio in-process decrypt / openssl', `${result.decryptVsOpenssl}`],
      ];
      for (const [k, v] of rows) process.stdout.write(`${(k ?? '').padEnd(52)} ${v}\n`);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

await main();

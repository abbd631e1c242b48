/**
 * Layer decryption throughput: ocicrypt AES_256_CTR_HMAC_SHA256 as the launcher runs it
 * (LayerDecryptStream: AES-256-CTR + HMAC-SHA256, 64 KiB chunks), next to
 * `openssl speed -evp aes-256-ctr` at 16 KiB measured in the same run, as a ratio.
 *
 *   node --import tsx bench/layer-crypto.ts [MiB]
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { LayerDecryptStream, LayerEncryptStream, verifyLayerHmac } from '../src/image/ocicrypt.js';

const MIB = 1024 * 1024;
const CHUNK = Number(process.env.CHUNK_KIB ?? 64) * 1024;
const total = Number(process.argv[2] ?? 512) * MIB;
const rounds = 5;

function sink(): Writable {
  return new Writable({
    write(_c, _e, cb) {
      cb();
    },
  });
}

async function makeCiphertext(key: Buffer, nonce: Buffer): Promise<{ chunks: Buffer[]; hmac: Buffer }> {
  const plain = randomBytes(CHUNK);
  const enc = new LayerEncryptStream(key, nonce);
  const chunks: Buffer[] = [];
  const collect = new Writable({
    write(c: Buffer, _e, cb) {
      chunks.push(c);
      cb();
    },
  });
  const n = total / CHUNK;
  await pipeline(
    Readable.from((function* () {
      for (let i = 0; i < n; i++) yield plain;
    })()),
    enc,
    collect,
  );
  return { chunks, hmac: enc.hmac };
}

async function best(fn: () => Promise<void>): Promise<number> {
  let bestMs = Infinity;
  for (let i = 0; i < rounds; i++) {
    const t0 = process.hrtime.bigint();
    await fn();
    bestMs = Math.min(bestMs, Number(process.hrtime.bigint() - t0) / 1e6);
  }
  return (total / MIB) / (bestMs / 1000);
}

function opensslMBps(alg: 'aes-256-ctr' | 'sha256'): number {
  const out = execFileSync('openssl', ['speed', '-evp', alg, '-bytes', '16384', '-seconds', '3'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  const m = new RegExp(`${alg}\\s+([\\d.]+)k`, 'i').exec(out);
  if (!m?.[1]) throw new Error(`cannot parse openssl speed output:\n${out}`);
  return (Number(m[1]) * 1000) / MIB;
}

async function main(): Promise<void> {
  const key = randomBytes(32);
  const nonce = randomBytes(16);
  const { chunks, hmac } = await makeCiphertext(key, nonce);
  const decrypt = await best(() => pipeline(Readable.from(chunks), new LayerDecryptStream(key, nonce, hmac), sink()));
  const verify = await best(() => verifyLayerHmac(Readable.from(chunks), { symkey: key, hmac }));
  const launcher = 1 / (1 / decrypt + 1 / verify);
  const openssl = opensslMBps('aes-256-ctr');
  const opensslSha = opensslMBps('sha256');
  const f = (x: number): string => x.toFixed(0).padStart(6);
  console.log(`layer-crypto: ${total / MIB} MiB in ${CHUNK / 1024} KiB chunks, best of ${rounds}, node ${process.version}`);
  console.log(`  ocicrypt decrypt (AES-256-CTR + HMAC-SHA256)  ${f(decrypt)} MiB/s`);
  console.log(`  HMAC verify pass (no plaintext)               ${f(verify)} MiB/s`);
  console.log(`  launcher path (verify pass + decrypt pass)    ${f(launcher)} MiB/s`);
  console.log(`  openssl speed -evp aes-256-ctr (16 KiB)       ${f(openssl)} MiB/s`);
  console.log(`  openssl speed -evp sha256 (16 KiB, context)   ${f(opensslSha)} MiB/s`);
  console.log(`  ratio decrypt / openssl aes-256-ctr           ${(decrypt / openssl).toFixed(2)}`);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});

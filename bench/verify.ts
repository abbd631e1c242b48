/**
 * Evidence verification throughput, one core, collateral cached (parsed certificate chains
 * and collateral signature checks are memoized by content hash; every quote / report / TPM
 * signature is verified on every iteration). Printed next to raw crypto.verify rates measured
 * in the same run, interleaved with it in 25 ms batches (the machine may be shared): ratio = verifications/s ÷ the rate of the signature primitive that
 * dominates that TEE's per-evidence cost.
 *
 *   npx tsx bench/verify.ts [--seconds N] [--json]
 */
import { constants, generateKeyPairSync, sign, verify } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { verifyEvidence, type TrustInput } from '../src/attestation/index.js';
import { collateralFromJson } from '../src/attestation/dcap/collateral.js';
import type { TeeKind, VerifyOptions } from '../src/attestation/types.js';
import { makeDcapWorld } from '../test/attestation/fixtures/dcap.js';
import { makeSnpWorld } from '../test/attestation/fixtures/snp.js';

const seconds = Number(process.argv[process.argv.indexOf('--seconds') + 1]) || 1.5;
const asJson = process.argv.includes('--json');
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const sets = path.resolve(root, '../shared/vectors/sets');

async function rate(fn: () => unknown | Promise<unknown>): Promise<number> {
  return (await paired(fn, () => undefined))[0];
}

/**
 * Interleaves batches of `a` and `b` for the measurement time so that both see the same
 * machine load (this machine is shared), and returns both rates.
 */
async function paired(a: () => unknown | Promise<unknown>, b: () => unknown | Promise<unknown>): Promise<[number, number]> {
  for (let i = 0; i < 50; i++) {
    await a(); // warm-up (fills caches)
    await b();
  }
  const n = [0, 0];
  const t = [0n, 0n];
  const fns = [a, b];
  const end = process.hrtime.bigint() + BigInt(Math.round(seconds * 1e9));
  while (process.hrtime.bigint() < end) {
    for (let k = 0; k < 2; k++) {
      const t0 = process.hrtime.bigint();
      const stop = t0 + 25_000_000n;
      let now = t0;
      while (now < stop) {
        for (let i = 0; i < 5; i++) await fns[k]!();
        n[k]! += 5;
        now = process.hrtime.bigint();
      }
      t[k]! += now - t0;
    }
  }
  return [n[0]! / (Number(t[0]) / 1e9), n[1]! / (Number(t[1]) / 1e9)];
}

function baseline(kind: 'p256' | 'p384' | 'rsa2048' | 'rsa4096-pss'): () => boolean {
  const data = Buffer.alloc(432, 7);
  if (kind === 'p256' || kind === 'p384') {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: kind === 'p256' ? 'prime256v1' : 'secp384r1' });
    const h = kind === 'p256' ? 'sha256' : 'sha384';
    const s = sign(h, data, privateKey);
    return () => verify(h, data, publicKey, s);
  }
  const bits = kind === 'rsa2048' ? 2048 : 4096;
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: bits });
  const pad = kind === 'rsa2048' ? { padding: constants.RSA_PKCS1_PADDING } : { padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 48 };
  const s = sign('sha384', data, { key: privateKey, ...pad });
  return () => verify('sha384', data, { key: publicKey, ...pad }, s);
}

interface Case {
  tee: TeeKind;
  source: string;
  evidence: Buffer;
  trust: TrustInput;
  options: VerifyOptions;
  primitive: 'p256' | 'p384' | 'rsa2048';
}

function vectorCase(id: string, primitive: Case['primitive']): Case | undefined {
  const d = path.join(sets, id);
  if (!existsSync(d)) return undefined;
  const e = JSON.parse(readFileSync(path.join(d, 'expected.json'), 'utf8')) as { tee: TeeKind; at: string; reportData?: string; nonce?: string };
  const f = (n: string): Buffer | undefined => (existsSync(path.join(d, n)) ? readFileSync(path.join(d, n)) : undefined);
  const coll = f('collateral.json');
  const rd = e.reportData ?? e.nonce;
  return {
    tee: e.tee,
    source: `vectors/${id}`,
    evidence: (f('evidence.bin') ?? f('evidence.json'))!,
    trust: {
      ...(coll ? { collateral: collateralFromJson(JSON.parse(coll.toString('utf8'))) } : {}),
      ...(f('certs.pem') ? { certs: f('certs.pem')!.toString('utf8') } : {}),
      ...(f('ak.pem') ? { ak: f('ak.pem')!.toString('utf8') } : {}),
    },
    options: { at: new Date(e.at), ...(rd !== undefined ? { reportData: Buffer.from(rd, 'hex') } : {}) },
    primitive,
  };
}

function generatedCases(): Case[] {
  const sgx = makeDcapWorld();
  const tdx = makeDcapWorld({ tee: 'tdx', version: 4 });
  const snp = makeSnpWorld();
  return [
    { tee: 'sgx', source: 'generated', evidence: sgx.quote, trust: { anchors: sgx.anchors, collateral: sgx.collateral }, options: { at: sgx.at }, primitive: 'p256' },
    { tee: 'tdx', source: 'generated', evidence: tdx.quote, trust: { anchors: tdx.anchors, collateral: tdx.collateral }, options: { at: tdx.at }, primitive: 'p256' },
    { tee: 'snp', source: 'generated', evidence: snp.report, trust: { anchors: snp.anchors, certs: snp.certs }, options: { at: snp.at }, primitive: 'p384' },
  ];
}

const vec = [vectorCase('sgx-1', 'p256'), vectorCase('tdx-4', 'p256'), vectorCase('snp-2', 'p384'), vectorCase('tpm-1', 'rsa2048'), vectorCase('az-snp-2', 'p384'), vectorCase('az-tdx-1', 'p256')].filter((c): c is Case => c !== undefined);
const cases = vec.length ? vec : generatedCases();

const base: Record<string, number> = {};
const baseFns = { p256: baseline('p256'), p384: baseline('p384'), rsa2048: baseline('rsa2048'), 'rsa4096-pss': baseline('rsa4096-pss') };
for (const k of ['p256', 'p384', 'rsa2048', 'rsa4096-pss'] as const) base[k] = await rate(baseFns[k]);

const rows: { tee: string; source: string; perSec: number; baseline: string; baselinePerSec: number; ratio: number }[] = [];
for (const c of cases) {
  const first = await verifyEvidence(c.tee, c.evidence, c.trust, c.options);
  if (!first.verified) throw new Error(`${c.source} does not verify: ${JSON.stringify(first.errors)}`);
  const [perSec, basePerSec] = await paired(() => verifyEvidence(c.tee, c.evidence, c.trust, c.options), baseFns[c.primitive]);
  rows.push({ tee: c.tee, source: c.source, perSec, baseline: `${c.primitive} verify`, baselinePerSec: basePerSec, ratio: perSec / basePerSec });
}

if (asJson) console.log(JSON.stringify({ seconds, baselines: base, rows }, null, 2));
else {
  console.log(`node ${process.version}, one core, ${seconds}s per measurement, collateral cached`);
  console.log('baselines alone (crypto.verify/s): ' + Object.entries(base).map(([k, v]) => `${k} ${v.toFixed(0)}`).join(', '));
  console.log('| TEE | evidence | verifications/s | baseline | baseline/s | ratio |');
  console.log('|---|---|---:|---|---:|---:|');
  for (const r of rows) console.log(`| ${r.tee} | ${r.source} | ${r.perSec.toFixed(0)} | ${r.baseline} | ${r.baselinePerSec.toFixed(0)} | ${r.ratio.toFixed(2)} |`);
}

/**
 * `cocoon verify`: offline (or cached-online) verification of one piece of TEE evidence.
 * Exit codes: 0 verified, 1 rejected, 2 bad usage / unreadable input.
 */
import { Option, type Command } from 'commander';
import Table from 'cli-table3';
import pc from 'picocolors';
import { CocoonError, asCocoonError } from '../errors.js';
import { readArgFile } from './flags.js';
import { TEE_KINDS, isTeeKind, type ClaimValue, type TeeKind, type VerificationResult } from '../attestation/types.js';
import type { CollateralSource } from '../attestation/collateral/source.js';
import type { QuoteCollateralV3 } from '../attestation/dcap/collateral.js';

export interface VerifyCliOptions {
  tee: string;
  evidence: string;
  collateral?: string;
  certs?: string;
  ak?: string;
  reportData?: string;
  at?: string;
  offline?: boolean;
  json?: boolean;
  expect?: string[];
  denyDebug?: boolean;
}

const HELP_AFTER = `
Evidence formats (--evidence):
  sgx, tdx      DCAP quote (v3 / v4 / v5) as raw bytes, hex or base64
  snp           1184-byte SEV-SNP report as raw bytes, hex or base64
  tpm           CoCo Trustee TPM JSON {ak_public, tpm_quote:{message, signature, pcrs}}
  az-snp-vtpm   CoCo Trustee Azure SNP vTPM JSON (versions 0, 1, 2)
  az-tdx-vtpm   CoCo Trustee Azure TDX vTPM JSON (versions 0, 1, 2)
  sim           Cocoon simulated evidence JSON (insecure; --certs names the sim root PEM)

Collateral: --collateral is a QuoteCollateralV3 JSON (sgx, tdx, az-tdx-vtpm); --certs is a PEM
chain VCEK/VLEK, ASK/ASVK, ARK (snp; for az-snp-vtpm the VCEK comes with the evidence).
Without --offline and without these files, collateral is fetched from Intel PCS v4
(COCOON_PCS_URL) or AMD KDS (COCOON_KDS_URL) and cached under ~/.cache/cocoon/collateral
(COCOON_CACHE_DIR) until its nextUpdate.

Trust anchors: the Intel SGX Root CA and AMD ARKs pinned by SHA-256 fingerprint in the code.

Exit codes: 0 verified, 1 rejected, 2 bad usage or unreadable input.
See docs/verify.md.`;

function usage(message: string): never {
  throw new CocoonError('BAD_USAGE', message);
}

/** Evidence, collateral and event logs are far below this (a TDX quote with its collateral is tens of KiB). */
const MAX_INPUT_FILE = 16 * 1024 * 1024;

function readInput(file: string, what: string): Promise<Buffer> {
  return readArgFile(file, MAX_INPUT_FILE, what);
}

function parseExpect(list: string[] | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const item of list ?? []) {
    const m = /^([A-Za-z0-9_.-]+)=(?:0x)?([0-9a-fA-F]*)$/.exec(item);
    if (!m || m[2]!.length % 2 !== 0) usage(`--expect wants NAME=HEX, got ${item}`);
    out[m[1]!] = m[2]!.toLowerCase();
  }
  return out;
}

function claimText(v: ClaimValue): string {
  return typeof v === 'object' ? Object.entries(v).map(([k, x]) => `${k}=${x}`).join(' ') : String(v);
}

const TABLE_STYLE = { head: pc.isColorSupported ? ['cyan'] : [], border: pc.isColorSupported ? ['grey'] : [] };

export function renderHuman(r: VerificationResult): string {
  const lines: string[] = [];
  const verdict = r.verified ? pc.green('VERIFIED') : pc.red('REJECTED');
  lines.push(`${verdict}  tee=${r.tee}${r.tcbStatus ? `  tcb=${r.tcbStatus}` : ''}${r.insecure ? pc.red('  INSECURE: simulated TEE') : ''}`);
  if (r.advisories.length) lines.push(`advisories: ${r.advisories.join(', ')}`);
  if (r.errors.length) {
    const t = new Table({ head: ['stage', 'code', 'message'], wordWrap: true, colWidths: [26, 30, 60], style: TABLE_STYLE });
    for (const e of r.errors) t.push([e.stage ?? '', pc.red(e.code), e.message]);
    lines.push(t.toString());
  }
  const t = new Table({ head: ['claim', 'value'], wordWrap: true, wrapOnWordBoundary: false, colWidths: [26, 70], style: TABLE_STYLE });
  for (const [k, v] of Object.entries(r.claims)) t.push([k, claimText(v)]);
  lines.push(t.toString());
  return lines.join('\n');
}

/** The JSON document printed with --json. */
export function jsonView(r: VerificationResult): Record<string, unknown> {
  return {
    verified: r.verified,
    tee: r.tee,
    tcbStatus: r.tcbStatus ?? null,
    advisories: r.advisories,
    claims: r.claims,
    errors: r.errors.map((e) => ({ code: e.code, message: e.message, ...(e.stage ? { stage: e.stage } : {}) })),
    ...(r.insecure ? { insecure: true } : {}),
  };
}

async function onlineSource(): Promise<CollateralSource> {
  const { DiskCache, defaultCacheDir } = await import('../attestation/collateral/cache.js');
  const { IntelPcsClient } = await import('../attestation/collateral/pcs.js');
  const { AmdKdsClient } = await import('../attestation/collateral/kds.js');
  const cache = new DiskCache(process.env.COCOON_CACHE_DIR ?? defaultCacheDir());
  const pcs = new IntelPcsClient({ cache, ...(process.env.COCOON_PCS_URL ? { baseUrl: process.env.COCOON_PCS_URL } : {}), ...(process.env.COCOON_ROOT_CRL_URL ? { rootCrlUrl: process.env.COCOON_ROOT_CRL_URL } : {}) });
  const kds = new AmdKdsClient({ cache, ...(process.env.COCOON_KDS_URL ? { baseUrl: process.env.COCOON_KDS_URL } : {}) });
  return { dcap: (r) => pcs.dcap(r), snp: (r) => kds.snp(r) };
}

/** The collateral flags `cocoon verify` and `cocoon attest` share. */
export interface CollateralCliOptions {
  collateral?: string;
  certs?: string;
  offline?: boolean;
}

/** Adds --collateral, --certs and --offline (`certsHelp` describes --certs for the command). */
export function addCollateralOptions(cmd: Command, certsHelp = 'PEM chain: VCEK/VLEK, ASK/ASVK, ARK (snp); ASK, ARK (az-snp-vtpm); sim root (sim)'): Command {
  return cmd
    .option('--collateral <file>', 'DCAP collateral (QuoteCollateralV3 JSON) for sgx, tdx, az-tdx-vtpm')
    .option('--certs <file>', certsHelp)
    .option('--offline', 'never fetch collateral from Intel PCS / AMD KDS');
}

/**
 * Trust inputs from the collateral flags for evidence of kind `tee`: the files given, else
 * (unless --offline) the cached online source (Intel PCS / AMD KDS) where the TEE needs one.
 * `certs` is the PEM text of --certs (the caller decides what it means for `sim`).
 */
export async function collateralTrust(tee: TeeKind, o: CollateralCliOptions): Promise<{ collateral?: QuoteCollateralV3 | CollateralSource; certs?: string }> {
  const { collateralFromJson } = await import('../attestation/dcap/collateral.js');
  let collateral: QuoteCollateralV3 | CollateralSource | undefined;
  if (o.collateral !== undefined) {
    const text = (await readInput(o.collateral, 'collateral')).toString('utf8');
    try {
      collateral = collateralFromJson(JSON.parse(text));
    } catch (e) {
      usage(`collateral ${o.collateral} is not a QuoteCollateralV3 JSON: ${asCocoonError(e).message}`);
    }
  }
  const certsText = o.certs !== undefined ? (await readInput(o.certs, 'certificates')).toString('utf8') : undefined;
  const needsDcap = tee === 'sgx' || tee === 'tdx' || tee === 'az-tdx-vtpm';
  const needsSnp = tee === 'snp';
  if (!collateral && !o.offline && (needsDcap || (needsSnp && certsText === undefined))) collateral = await onlineSource();
  return { ...(collateral ? { collateral } : {}), ...(certsText !== undefined ? { certs: certsText } : {}) };
}

/** Runs the command; returns the exit code (throws CocoonError BAD_USAGE for usage errors). */
export async function runVerify(o: VerifyCliOptions, out: (s: string) => void = (s) => process.stdout.write(s + '\n')): Promise<number> {
  if (!isTeeKind(o.tee)) usage(`--tee must be one of ${TEE_KINDS.join(', ')}`);
  const tee: TeeKind = o.tee;
  let at = new Date();
  if (o.at !== undefined) {
    if (!/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/.test(o.at) || Number.isNaN(Date.parse(o.at))) usage(`--at must be an RFC 3339 time, got ${o.at}`);
    at = new Date(o.at);
  }
  let reportData: Buffer | undefined;
  if (o.reportData !== undefined) {
    const h = o.reportData.replace(/^0x/, '');
    if (!/^(?:[0-9a-fA-F]{2})*$/.test(h) || h.length > 128) usage('--report-data must be hex (at most 64 bytes)');
    reportData = Buffer.from(h, 'hex');
  }
  const expect = parseExpect(o.expect);
  const evidence = await readInput(o.evidence, 'evidence');
  const { verifyEvidence } = await import('../attestation/index.js');
  const extra = await collateralTrust(tee, o);
  const akBytes = o.ak !== undefined ? await readInput(o.ak, 'attestation key') : undefined;
  const trust = {
    ...(tee === 'sim' ? (extra.certs !== undefined ? { simRoots: [extra.certs] } : {}) : extra),
    ...(akBytes ? { ak: akBytes.toString('latin1').includes('-----BEGIN') ? akBytes.toString('utf8') : akBytes } : {}),
  };
  const result = await verifyEvidence(tee, evidence, trust, {
    at,
    ...(reportData ? { reportData } : {}),
    ...(Object.keys(expect).length ? { expect } : {}),
    ...(o.denyDebug ? { allowDebug: false } : {}),
  });
  out(o.json ? JSON.stringify(jsonView(result), null, 2) : renderHuman(result));
  return result.verified ? 0 : 1;
}

export function registerVerify(program: Command): void {
  const cmd = program
    .command('verify')
    .summary('verify TEE evidence (SGX, TDX, SNP, TPM, Azure vTPM) offline')
    .description('Verify one piece of TEE evidence against the pinned Intel / AMD roots and print its claims.')
    .addOption(new Option('--tee <kind>', 'TEE kind of the evidence').choices([...TEE_KINDS]).makeOptionMandatory())
    .requiredOption('--evidence <file>', 'evidence file: raw binary, hex or base64 quote/report, or the evidence JSON');
  addCollateralOptions(cmd)
    .option('--ak <file>', 'TPM: the trusted attestation key (SPKI PEM/DER or TPM2B_PUBLIC); evidence with another AK is rejected')
    .option('--report-data <hex>', 'expected report data (prefix of report_data) / TPM nonce (extraData), hex')
    .option('--at <rfc3339>', 'verification time for certificate, CRL and collateral windows (default: now)')
    .option('--json', 'print {verified, tee, tcbStatus, advisories, claims, errors} as JSON')
    .option('--expect <name=hex...>', 'require claim NAME to equal HEX (repeatable)', (v: string, prev: string[] | undefined) => [...(prev ?? []), v])
    .option('--deny-debug', 'reject debug enclaves / TDs / SNP guests (DEBUG_NOT_ALLOWED)')
    .addHelpText('after', HELP_AFTER)
    .action(async (opts: VerifyCliOptions) => {
      try {
        process.exitCode = await runVerify(opts);
      } catch (e) {
        const ce = asCocoonError(e);
        if (opts.json) process.stdout.write(JSON.stringify({ verified: false, tee: opts.tee, tcbStatus: null, advisories: [], claims: {}, errors: [{ code: ce.code, message: ce.message }] }, null, 2) + '\n');
        else process.stderr.write(`${pc.red('error')} [${ce.code}]: ${ce.message}\n`);
        process.exitCode = ce.code === 'BAD_USAGE' || ce.code === 'INPUT_TOO_LARGE' ? 2 : ce.code === 'INTERNAL' ? 70 : 1;
      }
    });
}

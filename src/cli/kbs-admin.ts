import { Option, type Command } from 'commander';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import Table from 'cli-table3';
import { action, createOutput } from './output.js';
import { ownerClient, withOwnerOptions, type OwnerOptions } from './owner-options.js';
import { CocoonError } from '../errors.js';
import { MAX_JWK_FILE } from '../crypto/jwk-file.js';
import { readArgFile } from './flags.js';
import type { JWK } from 'jose';
import type { AuditEntry } from '../kbs/client/owner.js';
import { REVOCATION_REASONS, isRevocationReason } from '../kbs/revocation-reasons.js';


function limitOf(v: string): number {
  if (!/^[1-9]\d{0,2}$|^1000$/.test(v)) throw new CocoonError('BAD_USAGE', '--limit must be 1–1000');
  return Number(v);
}

const short = (s: string, n: number) => (s.length > n ? `${s.slice(0, n - 1)}…` : s);

/** `cocoon audit …` and `cocoon ca …`: the KBS's tamper-evident log and its deployment CA. */
export function registerKbsAdmin(program: Command): void {
  const audit = program.command('audit').description('the KBS audit log: hash-chained entries signed by the KBS key (docs/audit.md)');

  withOwnerOptions(
    audit
      .command('list')
      .description('list audit entries in chain order')
      .option('--policy <name>', 'only entries of this policy (what a policy owner may see)')
      .option('--after <seq>', 'start after this sequence number', '0')
      .option('--limit <n>', 'at most this many entries (1–1000)', '100'),
  ).action(
    action(async (opts: OwnerOptions & { policy?: string; after: string; limit: string }) => {
      if (!/^\d{1,15}$/.test(opts.after)) throw new CocoonError('BAD_USAGE', '--after must be a sequence number');
      const { entries } = await (await ownerClient(opts)).audit({ after: Number(opts.after), limit: limitOf(opts.limit), ...(opts.policy ? { policy: opts.policy } : {}) });
      createOutput(opts).result(() => {
        const table = new Table({ head: ['SEQ', 'TIME', 'ACTOR', 'ACTION', 'POLICY', 'DETAIL'], style: { head: [] } });
        for (const e of entries) table.push([e.seq, new Date(e.at).toISOString(), short(e.actor, 18), e.action, e.policy ?? '', short(e.detail, 70)]);
        process.stdout.write(table.toString() + '\n');
      }, entries);
    }),
  );

  withOwnerOptions(
    audit
      .command('verify')
      .description('verify the whole chain (sequence, links, hashes, KBS signatures) and report the first broken link; exit 1 when broken')
      .option('--data-dir <dir>', 'verify a local SQLite store offline (the KBS data dir) instead of asking the KBS')
      .option('--postgres <url>', 'verify a PostgreSQL store offline (needs --data-dir for the KBS public key)'),
  ).action(
    action(async (opts: OwnerOptions & { dataDir?: string; postgres?: string }) => {
      const { auditPublicKey, verifyAuditChain, verifyStoreAudit, AUDIT_GENESIS } = await import('../kbs/audit.js');
      let verdict;
      let source: string;
      if (opts.dataDir || opts.postgres) {
        if (!opts.dataDir) throw new CocoonError('BAD_USAGE', '--postgres needs --data-dir (where kbs-identity.jwk is)');
        const { IDENTITY_FILE } = await import('../kbs/identity.js');
        const file = join(opts.dataDir, IDENTITY_FILE);
        const text = (await readArgFile(file, MAX_JWK_FILE, 'the KBS identity')).toString('utf8');
        let key;
        try {
          key = auditPublicKey(JSON.parse(text) as JWK);
        } catch (err) {
          throw new CocoonError('INPUT_MALFORMED', `${file} is not the KBS identity JWK`, { cause: err });
        }
        const store = await openStore({ dataDir: opts.dataDir, ...(opts.postgres ? { postgres: opts.postgres } : {}) });
        try {
          verdict = await verifyStoreAudit(store, key);
        } finally {
          await store.close();
        }
        source = opts.postgres ? 'PostgreSQL store' : `${opts.dataDir}/kbs.sqlite`;
      } else {
        const client = await ownerClient(opts);
        const identity = await client.identity();
        const key = auditPublicKey(identity.publicKey);
        let from = { seq: 0, hash: AUDIT_GENESIS };
        let count = 0;
        for (;;) {
          const page: AuditEntry[] = (await client.audit({ after: from.seq, limit: 1000 })).entries;
          const v = verifyAuditChain(page, key, from);
          count += v.count;
          verdict = { ...v, count };
          if (!v.ok || page.length < 1000) break;
          from = { seq: v.lastSeq, hash: v.lastHash };
        }
        source = `KBS ${identity.id}`;
      }
      const out = createOutput(opts);
      if (verdict.ok) {
        out.result(`audit chain OK: ${verdict.count} entries verified (${source}), head ${verdict.lastHash.slice(0, 16)}…`, verdict);
        return 0;
      }
      const b = verdict.firstBroken;
      out.result(`audit chain BROKEN at entry ${b?.seq ?? '?'} (${b?.reason ?? '?'}): ${b?.message ?? ''}\n${verdict.count} entries before it verify (${source})`, verdict);
      return 1;
    }),
  );

  const ca = program.command('ca').description('the deployment CA of the KBS: root (pin it), rotating intermediate, CRL, revocation');

  withOwnerOptions(ca.command('show').description('print the root and current intermediate (subject, serial, validity, SHA-256 fingerprint)')).action(
    action(async (opts: OwnerOptions) => {
      const info = await (await ownerClient(opts)).caCertificates();
      const { x509, certFingerprint } = await import('../crypto/x509.js');
      const describe = (pem: string) => {
        const c = new x509.X509Certificate(pem);
        return { subject: c.subject, serial: c.serialNumber, notBefore: c.notBefore.toISOString(), notAfter: c.notAfter.toISOString(), sha256: certFingerprint(c) };
      };
      const data = { root: describe(info.root), intermediate: describe(info.intermediate), workloadIdentityOid: info.workloadIdentityOid };
      createOutput(opts).result(
        () => {
          for (const [k, v] of Object.entries({ root: data.root, intermediate: data.intermediate })) {
            process.stdout.write(`${k}:\n  subject   ${v.subject}\n  serial    ${v.serial}\n  valid     ${v.notBefore} … ${v.notAfter}\n  sha256    ${v.sha256}\n`);
          }
          process.stdout.write(`workload identity extension OID: ${data.workloadIdentityOid}\n`);
        },
        data,
      );
    }),
  );

  withOwnerOptions(
    ca
      .command('export')
      .description('write the CA certificates (PEM) for clients to pin, or the current CRL')
      .option('--what <which>', 'root | intermediate | chain | crl', 'root')
      .option('--out <file>', 'write to this file instead of stdout'),
  ).action(
    action(async (opts: OwnerOptions & { what: string; out?: string }) => {
      if (!['root', 'intermediate', 'chain', 'crl'].includes(opts.what)) throw new CocoonError('BAD_USAGE', '--what must be root, intermediate, chain or crl');
      const client = await ownerClient(opts);
      const pem = opts.what === 'crl' ? await client.crl() : (await client.caCertificates())[opts.what as 'root' | 'intermediate' | 'chain'];
      if (opts.out) {
        await writeFile(opts.out, pem, { mode: 0o644 });
        createOutput(opts).result(`wrote ${opts.what} to ${opts.out}`, { what: opts.what, file: opts.out });
      } else createOutput(opts).result(pem.trimEnd(), { what: opts.what, pem });
    }),
  );

  withOwnerOptions(
    ca
      .command('revoke')
      .description('revoke a deployment-CA certificate by serial, or every current workload certificate of a workload; listed in the CRL (launcher proxies refuse it after their next CRL refresh). Revoking again is a no-op')
      .option('--serial <hex>', 'serial number of the certificate (hex, as `openssl x509 -serial` or the audit log print it)')
      .option('--workload <org/app#name>', 'instead of --serial: all still-valid workload certificates issued to this workload')
      .option('--reason <code>', `RFC 5280 reason: ${REVOCATION_REASONS.join(' | ')}`, 'unspecified')
      .option('--force', 'administrators: revoke a serial the KBS has no issuance record of (an x509 secret certificate, or one issued before this version)'),
  ).action(
    action(async (opts: OwnerOptions & { serial?: string; workload?: string; reason: string; force?: boolean }) => {
      if ((opts.serial === undefined) === (opts.workload === undefined)) throw new CocoonError('BAD_USAGE', 'pass exactly one of --serial or --workload');
      // checked as normalized: what the KBS accepts (2–64 hex digits), so "::" or 65 digits fail here
      const serial = opts.serial?.replace(/^0x/i, '').replace(/:/g, '').toLowerCase();
      if (serial !== undefined && !/^[0-9a-f]{2,64}$/.test(serial)) throw new CocoonError('BAD_USAGE', '--serial must be a hex serial number');
      if (opts.workload !== undefined && !/^[a-z0-9][a-z0-9._-]{0,62}\/[a-z0-9][a-z0-9._-]{0,62}#[a-z0-9][a-z0-9._-]{0,62}$/.test(opts.workload)) throw new CocoonError('BAD_USAGE', '--workload must be org/app#name');
      if (!isRevocationReason(opts.reason)) throw new CocoonError('BAD_USAGE', `--reason must be one of ${REVOCATION_REASONS.join(', ')}`);
      const r = await (await ownerClient(opts)).revoke({ ...(serial !== undefined ? { serial } : { workload: opts.workload }), reason: opts.reason, ...(opts.force ? { force: true } : {}) });
      const lines = r.certificates.map((c) => `${c.alreadyRevoked ? 'already revoked' : 'revoked'} ${c.serial}${c.workload ? ` (${c.policy ?? '?'}#${c.workload})` : ''}`);
      createOutput(opts).result(lines.length > 0 ? `${lines.join('\n')}\nreason ${r.reason}; the CRL lists it from now on` : `no current certificates of ${opts.workload ?? '?'}`, r);
    }),
  );

  const recover = program
    .command('recover')
    .description('recover the sealed data key from m-of-n owner shares (after losing the TPM or seal.key); run on the KBS host with the KBS stopped');

  const storeOptions = (cmd: Command) =>
    cmd
      .requiredOption('--data-dir <dir>', 'the KBS data dir')
      .option('--postgres <url>', 'the KBS store is this PostgreSQL database')
      .option('--json', 'print JSON');

  storeOptions(
    recover
      .command('share')
      .description('decrypt this owner\'s recovery share with the owner private key, or the private key of its recovery recipient, and write it to a file (0600)')
      .option('--owner-key <file>', 'owner private key (P-256 JWK) whose share is encrypted to the owner key itself')
      .option('--recipient-key <file>', 'instead of --owner-key: private key (P-256, P-384 or X25519 JWK, e.g. from `cocoon recover keygen`) of the recovery recipient the KBS was given for this owner (serve --recovery-recipient; Ed25519 owners)')
      .requiredOption('--out <file>', 'share file to write (hand it to whoever runs `recover apply`)'),
  ).action(
    action(async (opts: { dataDir: string; postgres?: string; ownerKey?: string; recipientKey?: string; out: string; json?: boolean }) => {
      if ((opts.ownerKey === undefined) === (opts.recipientKey === undefined)) throw new CocoonError('BAD_USAGE', 'pass exactly one of --owner-key or --recipient-key');
      const { decryptShare, loadRecovery, readRecoveryPrivateJwk } = await import('../kbs/recovery.js');
      const key = await readRecoveryPrivateJwk((opts.ownerKey ?? opts.recipientKey) as string);
      const store = await openStore(opts);
      try {
        const share = await decryptShare(await loadRecovery(store), key);
        await writeFile(opts.out, JSON.stringify(share) + '\n', { mode: 0o600, flag: 'wx' });
        createOutput(opts).result(`wrote recovery share ${share.x} to ${opts.out} (keep it secret; delete it after use)`, { x: share.x, kid: share.kid, file: opts.out });
      } finally {
        await store.close();
      }
    }),
  );

  recover
    .command('keygen')
    .description('create a recovery recipient key pair (private JWK 0600 + public .pub.jwk) for an owner whose signing key cannot receive shares (Ed25519); give the public file to the KBS operator for `serve --recovery-recipient OWNER_KID=FILE`')
    .requiredOption('--out <file>', 'private key file to create (never overwritten); the public key goes next to it as <name>.pub.jwk')
    .addOption(new Option('--curve <crv>', 'key type').choices(['X25519', 'P-256', 'P-384']).default('X25519'))
    .option('--json', 'print JSON')
    .action(
      action(async (opts: { out: string; curve: 'X25519' | 'P-256' | 'P-384'; json?: boolean }) => {
        const { createRecoveryKey } = await import('../kbs/recovery.js');
        const publicFile = `${opts.out.replace(/\.jwk$/, '')}.pub.jwk`;
        const r = await createRecoveryKey(opts.out, publicFile, opts.curve);
        createOutput(opts).result(`created recovery recipient key ${opts.out} (0600; keep it offline) and ${publicFile} (${opts.curve}, thumbprint ${r.thumbprint})`, { privateKey: opts.out, publicKey: publicFile, curve: opts.curve, thumbprint: r.thumbprint });
      }),
    );

  storeOptions(
    recover
      .command('apply')
      .description('combine at least m share files, check them against the store, and re-seal the data key with a new sealer')
      .requiredOption('--share <file>', 'share file from `cocoon recover share`; repeat m times', (v: string, prev: string[]) => [...prev, v], [] as string[])
      .option('--tpm <tcti>', 're-seal to this TPM (default: the file sealer, <data-dir>/seal.key)'),
  ).action(
    action(async (opts: { dataDir: string; postgres?: string; share: string[]; tpm?: string; json?: boolean }) => {
      const { parseShareFile, recoverDataKey } = await import('../kbs/recovery.js');
      const shares = [];
      for (const f of opts.share) {
        shares.push(parseShareFile((await readArgFile(f, 4096, 'share')).toString('utf8'), f));
      }
      const sealer = opts.tpm ? new (await import('../kbs/tpm-sealer.js')).TpmSealer({ tcti: opts.tpm }) : await (await import('../kbs/sealer.js')).FileSealer.open(opts.dataDir);
      const store = await openStore(opts);
      try {
        const r = await recoverDataKey(store, shares, sealer);
        createOutput(opts).result(`data key recovered from ${r.used} share(s) (threshold ${r.threshold}) and re-sealed with the ${sealer.kind} sealer; start the KBS again`, { ...r, sealer: sealer.kind });
      } finally {
        await store.close();
      }
    }),
  );
}

async function openStore(opts: { dataDir: string; postgres?: string }) {
  if (opts.postgres) return (await import('../kbs/store/postgres.js')).openPostgresStore(opts.postgres, { maxConnections: 2 });
  return (await import('../kbs/store/sqlite.js')).openSqliteStore(opts.dataDir, { walCheckpoints: 'inline' });
}

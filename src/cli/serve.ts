import { Option, type Command } from 'commander';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { action, createOutput } from './output.js';
import { configDir, configPaths } from './config.js';
import { CocoonError } from '../errors.js';
import { KBS_TEE_CHOICES, type KbsTeeChoice } from '../kbs/self-attester.js';
import { MAX_PEM_FILE, collect, readArgFile } from './flags.js';

export function parseListen(listen: string): { host: string; port: number } {
  const m = listen.match(/^(?:\[([0-9a-fA-F:]+)\]|([^:[\]]+)):(\d{1,5})$/) ?? listen.match(/^()()(\d{1,5})$/);
  const port = Number(m?.[3]);
  if (!m || port > 65535) throw new CocoonError('BAD_USAGE', `--listen must be HOST:PORT or PORT, got "${listen}"`);
  return { host: m[1] || m[2] || '127.0.0.1', port };
}

const UNIT_MS = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const;
export const WORKLOAD_CERT_VALIDITY_MIN_MS = 5 * 60_000;
export const WORKLOAD_CERT_VALIDITY_MAX_MS = 30 * 86_400_000;

/** `--workload-cert-validity`: one whole number and one unit (s, m, h, d), 5m–30d; anything else BAD_USAGE. */
export function parseWorkloadCertValidity(text: string): number {
  const m = /^([1-9]\d{0,6})([smhd])$/.exec(text);
  const ms = m ? Number(m[1]) * UNIT_MS[m[2] as keyof typeof UNIT_MS] : NaN;
  if (!(ms >= WORKLOAD_CERT_VALIDITY_MIN_MS && ms <= WORKLOAD_CERT_VALIDITY_MAX_MS)) {
    throw new CocoonError('BAD_USAGE', `--workload-cert-validity must be a duration from 5m to 30d such as 90m, 24h or 7d (a whole number and one of s, m, h, d), got "${text}"`);
  }
  return ms;
}

export function registerServe(program: Command): void {
  program
    .command('serve')
    .description('run the Key Broker Service (RCAR attestation, policies, secrets, owner API)')
    .option('--data-dir <dir>', 'state directory: identity key, sealed data key, SQLite store', join(homedir(), '.local', 'share', 'cocoon', 'kbs'))
    .option('--listen <host:port>', 'address to listen on', '127.0.0.1:8080')
    .option('--owner <file>', 'owner public key (JWK, from `cocoon init`) allowed to use the owner API; repeatable', collect, [])
    .option('--allow-sim', 'accept INSECURE simulated-TEE evidence where a policy rule names `sim` (development only)')
    .option('--sim-root <file>', 'PEM root of the simulated TEE to trust with --allow-sim (default: <config-dir>/sim/root.pem)')
    .option('--sim-platform <dir>', 'with --allow-sim: simulated platform the KBS signs its own evidence with, served at GET /cocoon/v1/attestation for `cocoon attest` (default: <config-dir>/sim/platform)')
    .addOption(new Option('--tee <kind>', "attester for the KBS's own evidence (GET /cocoon/v1/attestation, `cocoon attest`): auto (probe the hardware as the launcher does; none found → no endpoint), a hardware kind, or sim (with --allow-sim); default: sim with --allow-sim and a sim platform, else none").choices([...KBS_TEE_CHOICES]))
    .option('--tpm-tcti <tcti>', 'TPM of the KBS self-attestation with --tee tpm|az-snp-vtpm|az-tdx-vtpm|auto: swtpm:host=127.0.0.1,port=N or device:/dev/tpmrm0 (default; the data-key sealer is --tpm)')
    .option('--trusted-ak <pem>', 'PEM public key of a TPM attestation key whose quotes `tpm` evidence may carry; repeatable', collect, [])
    .option('--config-dir <dir>', 'config directory (default owner key and sim root)')
    .option('--log-level <level>', 'fatal|error|warn|info|debug', 'info')
    .option('--postgres <url>', 'use PostgreSQL (postgres://user@host:port/db) instead of SQLite; several replicas may share it')
    .option('--tpm <tcti>', 'seal the data key with a TPM 2.0 via tpm2-tools, e.g. swtpm:host=127.0.0.1,port=2321 or device:/dev/tpmrm0 (default: file sealer)')
    .option('--recovery-threshold <m>', 'split the data key m-of-n among the admin owners with P-256 keys or a --recovery-recipient (see `cocoon recover`)')
    .option('--recovery-recipient <kid=file>', "encrypt this admin owner's recovery share to another public key: OWNER_KID=FILE, FILE a public JWK of kty EC (P-256/P-384) or OKP (X25519), e.g. from `cocoon recover keygen` — how Ed25519 owners get a share; the owner's kid is in its .pub.jwk; repeatable, needs --recovery-threshold", collect, [])
    .option('--workload-cert-validity <duration>', 'lifetime of the workload certificates issued to attested workloads: 5m–30d, a whole number with s, m, h or d (capped at the intermediate CA\'s own expiry)', '24h')
    .option('--tls', 'serve HTTPS with a self-signed certificate kept in the data dir (kbs-tls.crt/.key)')
    .option('--tls-cert <file>', 'serve HTTPS with this PEM certificate chain (with --tls-key)')
    .option('--tls-key <file>', 'PEM private key of --tls-cert')
    .option('--rate-limit <n>', 'requests per second per client address (burst 2n; 0 disables)', '100')
    .option('--body-limit <bytes>', 'largest request body accepted', String(1024 * 1024))
    .option('--workers <n|auto>', 'worker processes serving requests: 1–64, or auto (one per CPU); above 1 a primary process does the startup once, then forks and supervises the workers (docs/kbs.md); --rate-limit applies per worker', '1')
    .addHelpText('after', '\nWithout --owner, the owner public key of the config directory is registered if it exists.\nEndpoints: /kbs/v0/* (CoCo KBS protocol 0.4.0), /cocoon/v1/* (owner API, OpenAPI at /cocoon/v1/openapi.json),\n/ui/ (dashboard: sign in with `cocoon ui login`), /healthz, /readyz, /metrics.\nSee docs/kbs.md.')
    .action(
      action(async (opts: {
        dataDir: string;
        listen: string;
        owner: string[];
        allowSim?: boolean;
        simRoot?: string;
        simPlatform?: string;
        tee?: KbsTeeChoice;
        tpmTcti?: string;
        trustedAk: string[];
        configDir?: string;
        logLevel: string;
        postgres?: string;
        tpm?: string;
        recoveryThreshold?: string;
        recoveryRecipient: string[];
        workloadCertValidity: string;
        tls?: boolean;
        tlsCert?: string;
        tlsKey?: string;
        rateLimit: string;
        bodyLimit: string;
        workers: string;
      }) => {
        // a `--workers` worker: everything it needs comes from the primary over IPC
        const kbsCluster = await import('../kbs/cluster.js');
        if (kbsCluster.isKbsWorker()) return kbsCluster.runKbsWorker();
        const out = createOutput();
        const { host, port } = parseListen(opts.listen);
        if (!['fatal', 'error', 'warn', 'info', 'debug'].includes(opts.logLevel)) throw new CocoonError('BAD_USAGE', '--log-level must be fatal|error|warn|info|debug');
        const dir = configDir(opts.configDir);
        const { loadOwnerPublicJwk } = await import('../kbs/owner-key.js');
        const ownerFiles = opts.owner.length > 0 ? opts.owner : [configPaths(dir).ownerPublicKey];
        const owners = [];
        for (const file of ownerFiles) {
          try {
            owners.push(await loadOwnerPublicJwk(file));
          } catch (err) {
            if (opts.owner.length > 0) throw err;
          }
        }
        const simRoots: string[] = [];
        if (opts.allowSim) {
          const file = opts.simRoot ?? configPaths(dir).simRoot;
          simRoots.push((await readArgFile(file, MAX_PEM_FILE, '--allow-sim: the sim root (run `cocoon init` or pass --sim-root)')).toString('utf8'));
          out.warn('INSECURE: --allow-sim: simulated-TEE evidence is accepted where a policy names `sim`');
        }
        if (opts.simPlatform && !opts.allowSim) throw new CocoonError('BAD_USAGE', '--sim-platform needs --allow-sim');
        const { readTrustedAkFiles } = await import('../kbs/verifier.js');
        const trustedAks = await readTrustedAkFiles(opts.trustedAk);
        if (!/^\d{1,6}$/.test(opts.rateLimit)) throw new CocoonError('BAD_USAGE', '--rate-limit must be a number of requests per second');
        if (!/^\d{4,9}$/.test(opts.bodyLimit)) throw new CocoonError('BAD_USAGE', '--body-limit must be 1000–999999999 bytes');
        if (opts.recoveryThreshold !== undefined && !/^[1-9]\d?$/.test(opts.recoveryThreshold)) throw new CocoonError('BAD_USAGE', '--recovery-threshold must be 1–99');
        const workloadCertValidMs = parseWorkloadCertValidity(opts.workloadCertValidity);
        const workers = kbsCluster.parseWorkers(opts.workers);
        if (opts.recoveryRecipient.length > 0 && opts.recoveryThreshold === undefined) throw new CocoonError('BAD_USAGE', '--recovery-recipient needs --recovery-threshold');
        const { readRecoveryRecipients } = await import('../kbs/recovery.js');
        const recoveryRecipients = await readRecoveryRecipients(opts.recoveryRecipient);
        if (Boolean(opts.tlsCert) !== Boolean(opts.tlsKey)) throw new CocoonError('BAD_USAGE', '--tls-cert and --tls-key go together');
        let tls: { cert: string; key: string } | undefined;
        if (opts.tlsCert && opts.tlsKey) {
          const readPem = async (flag: string, file: string) => (await readArgFile(file, MAX_PEM_FILE, flag)).toString('utf8');
          tls = { cert: await readPem('--tls-cert', opts.tlsCert), key: await readPem('--tls-key', opts.tlsKey) };
        } else if (opts.tls) {
          const { loadOrCreateSelfSignedTls } = await import('../kbs/tls.js');
          const self = await loadOrCreateSelfSignedTls(opts.dataDir, host === '0.0.0.0' || host === '::' ? [] : [host]);
          if (self.created) out.info(`created a self-signed KBS certificate in ${opts.dataDir}/kbs-tls.crt (clients: NODE_EXTRA_CA_CERTS=<that file>)`);
          tls = { cert: self.cert, key: self.key };
        }
        const { startKbs } = await import('../kbs/app.js');
        const { createBrokerVerifier } = await import('../kbs/verifier.js');
        const store = opts.postgres ? await (await import('../kbs/store/postgres.js')).openPostgresStore(opts.postgres) : undefined;
        const sealer = opts.tpm ? new (await import('../kbs/tpm-sealer.js')).TpmSealer({ tcti: opts.tpm }) : undefined;
        const rate = Number(opts.rateLimit);
        const { createSelfAttestation } = await import('../kbs/self-attester.js');
        const selfAtt = await createSelfAttestation({
          tee: opts.tee,
          allowSim: Boolean(opts.allowSim),
          simPlatformDir: opts.simPlatform ?? configPaths(dir).simPlatform,
          simPlatformExplicit: opts.simPlatform !== undefined,
          ...(opts.tpmTcti !== undefined ? { tpmTcti: opts.tpmTcti } : {}),
          log: { info: (m) => out.info(m), warn: (m) => out.warn(m) },
        }).catch(async (err: unknown) => {
          await store?.close();
          throw err;
        });
        const describe = (url: string) =>
          `cocoon KBS listening on ${url} (data ${opts.dataDir}, ${opts.postgres ? 'PostgreSQL' : 'SQLite'}, ${sealer ? 'TPM' : 'file'} sealer, ${owners.length} owner key(s)${opts.allowSim ? ', sim allowed' : ''}, self-attestation ${selfAtt.self ? selfAtt.self.attester.tee : 'none'}${workers > 1 ? `, ${workers} workers` : ''})\n`;
        const stopSignal = new Promise<void>((resolve) => {
          const stop = () => resolve();
          process.once('SIGINT', stop);
          process.once('SIGTERM', stop);
        });
        // Built once for both paths, so a new flag cannot reach one and miss the other.
        const bootstrap = {
          dataDir: opts.dataDir,
          owners,
          ...(sealer ? { sealer } : {}),
          ...(opts.recoveryThreshold ? { recoveryThreshold: Number(opts.recoveryThreshold) } : {}),
          ...(opts.recoveryRecipient.length > 0 ? { recoveryRecipients } : {}),
        };
        const serving = {
          host,
          port,
          allowSim: Boolean(opts.allowSim),
          bodyLimit: Number(opts.bodyLimit),
          rateLimit: { perSecond: rate, burst: rate * 2 },
          workloadCertValidMs,
          ...(tls ? { tls } : {}),
          ...(selfAtt.reason ? { selfAttestationUnavailable: selfAtt.reason } : {}),
        };
        if (workers > 1) {
          // the primary: every startup side effect once, then the workers (src/kbs/cluster.ts)
          return kbsCluster.serveKbsCluster({
            workers,
            bootstrap,
            ...(store ? { store } : {}),
            ...(selfAtt.self ? { selfAttestation: selfAtt.self } : {}),
            settings: { ...serving, dataDir: opts.dataDir, ...(opts.postgres ? { postgres: opts.postgres } : {}), simRoots, trustedAks, logLevel: opts.logLevel },
            stop: stopSignal,
            listening: (url) => process.stderr.write(describe(url)),
          });
        }
        const kbs = await startKbs({
          ...bootstrap,
          ...serving,
          verifier: createBrokerVerifier({ simRoots, trustedAks }),
          logger: { level: opts.logLevel },
          ...(store ? { store } : {}),
          ...(selfAtt.self ? { selfAttestation: selfAtt.self } : {}),
        }).catch(async (err: unknown) => {
          await store?.close();
          throw err;
        });
        process.stderr.write(describe(kbs.url));
        await stopSignal;
        await kbs.close();
        await store?.close();
      }),
    );
}

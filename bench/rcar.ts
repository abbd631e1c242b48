/**
 * Full RCAR round trips per second (auth + attest with `sim` evidence + one JWE resource)
 * against a real `cocoon serve` process (test/kbs/fixtures/serve-main.ts: the CLI's serve
 * command, bundled with esbuild like dist/cli.mjs) over loopback, with SQLite and with
 * PostgreSQL (a throwaway Debian PostgreSQL 15 cluster, skipped when absent). The load client
 * is this process: C concurrent loops, each round trip a complete launcher exchange — a fresh
 * ephemeral P-256 key, sim evidence (ES256 platform key) bound to nonce and key, the resource's
 * JWE decrypted and its plaintext checked. Baseline, measured in the same run with the same
 * client kind and printed as a ratio: a bare fastify server answering the same three requests
 * (POST, POST, GET) with constant JSON — the cost of HTTP and Node alone. CPU per round trip is
 * reported for the client (this process) and the server (its whole process tree, so workers count).
 *
 *   npx tsx bench/rcar.ts [--seconds N] [--concurrency C] [--json] [--no-postgres] [--client raw|http|fetch]
 *                         [--server-workers N|auto] [--server-cpus LIST] [--server-log-level LEVEL] [--profile DIR]
 *
 * --client raw|http|fetch: the load client.
 *   raw (default): bench/lib/rcar-load.ts — one keep-alive TCP connection per loop, each request
 *   written as one string, a minimal strict HTTP/1.1 response parser, and the protocol through
 *   the product's own code (the launcher client's body builders, rcarReportData, the ECDH-ES
 *   JWE decryption). The HTTP layer is hand-rolled on purpose, as autocannon does it: on two
 *   shared cores the load generator must cost far less CPU than the system under test, or the
 *   benchmark measures the client: every client millisecond is taken from the KBS. Through
 *   node:http and Response/Headers objects the launcher's client costs ~0.6–0.9 ms CPU per round
 *   trip (~1.1 ms when it still used jose), a large fraction of the KBS's ~1 ms; the raw client
 *   ~0.3 ms, much of it the protocol's own crypto (key generation, evidence signature, JWE).
 *   The protocol crypto is deliberately not stubbed: it is the product's code and part of a
 *   real round trip.
 *   http: node:http with a keep-alive agent passed as fetch implementation to the launcher's
 *   real attestAndFetch (src/kbs/client/rcar.ts) — exactly a launcher's code, minus undici.
 *   fetch: attestAndFetch with the global fetch, as a launcher runs it.
 * --server-workers N|auto passes `--workers N|auto` to `cocoon serve` (its worker processes count in
 * the server CPU column).
 * --server-cpus LIST pins the servers to these CPUs (taskset), e.g. `--server-cpus 1` with the
 * bench itself under `taskset -c 0`.
 * --server-log-level error|warn|info|debug is the KBS's --log-level (default error; the product's
 * default, info, writes two request lines per HTTP request).
 * --profile DIR writes a V8 CPU profile of each KBS server process into DIR (open it in
 * Chrome DevTools or summarise it with `node bench/prof-top.mjs FILE`).
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { createPrivateKey, createPublicKey, createSign } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { cpus, loadavg, tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import { createSimPlatform } from '../src/attester/sim-platform.js';
import { SIM_PLATFORM_FILES } from '../src/attester/sim.js';
import { canonicalJson } from '../src/crypto/canonical-json.js';
import { simSignatureHash, verifySimEvidence } from '../src/attestation/sim/index.js';
import { attestAndFetch, rcarAuthBody } from '../src/kbs/client/rcar.js';
import { OwnerClient } from '../src/kbs/client/owner.js';
import { ownerSigningKey } from '../src/kbs/owner-key.js';
import { exportJWK, generateKeyPair } from 'jose';
import { createDatabase, startTempPostgres } from '../test/kbs/pg-harness.js';
import { freePort } from '../src/util/net.js';
import { baselineRoundTrip, RawHttpConnection, rcarRoundTrip } from './lib/rcar-load.js';

const arg = (name: string, dflt: number): number => {
  if (!process.argv.includes(name)) return dflt;
  const v = Number(process.argv[process.argv.indexOf(name) + 1]);
  if (!Number.isInteger(v) || v < 1 || v > 3600) throw new Error(`${name} must be a whole number from 1 to 3600`);
  return v;
};
const seconds = arg('--seconds', 5);
const concurrency = arg('--concurrency', 16);
const asJson = process.argv.includes('--json');
const clientKind = process.argv.includes('--client') ? process.argv[process.argv.indexOf('--client') + 1] : 'raw';
if (clientKind !== 'raw' && clientKind !== 'http' && clientKind !== 'fetch') throw new Error('--client must be raw, http or fetch');
const serverWorkers = process.argv.includes('--server-workers') ? process.argv[process.argv.indexOf('--server-workers') + 1] : undefined;
if (serverWorkers !== undefined && !/^([1-9]\d?|auto)$/.test(serverWorkers)) throw new Error('--server-workers must be a number of workers or auto');
/** --server-cpus LIST: pin the KBS to these CPUs (taskset), e.g. `--server-cpus 1` with the bench itself under `taskset -c 0`. */
const serverCpus = process.argv.includes('--server-cpus') ? process.argv[process.argv.indexOf('--server-cpus') + 1] : undefined;
/** --server-log-level LEVEL: the KBS's `--log-level` (default error; `info`, the product's default, logs two lines per request). */
const serverLogLevel = process.argv.includes('--server-log-level') ? (process.argv[process.argv.indexOf('--server-log-level') + 1] ?? '') : 'error';
if (!['error', 'warn', 'info', 'debug'].includes(serverLogLevel)) throw new Error('--server-log-level must be error, warn, info or debug');
const profileDir = process.argv.includes('--profile') ? path.resolve(process.argv[process.argv.indexOf('--profile') + 1] ?? '.') : undefined;
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const SERVE_TS = path.join(root, 'test', 'kbs', 'fixtures', 'serve-main.ts');
// The server runs bundled, as the product does (dist/cli.mjs), not under tsx's loader hooks.
const SERVE = path.join(root, 'node_modules', '.cache', 'cocoon-bench', 'serve.mjs');
const MEASUREMENT = 'ab'.repeat(48);

if (process.argv.includes('--hello-server')) {
  // Baseline server (child process): the same three requests, constant answers.
  const { default: Fastify } = await import('fastify');
  const app = Fastify({ logger: false });
  app.post('/kbs/v0/auth', async (_req, reply) => {
    void reply.header('set-cookie', 'kbs-session-id=hello; Path=/kbs/v0; HttpOnly');
    return { nonce: 'aGVsbG8=', 'extra-params': '' };
  });
  app.post('/kbs/v0/attest', async () => ({ token: 'x.y.z' }));
  app.get('/kbs/v0/resource/*', async () => ({ protected: 'e30', encrypted_key: '', iv: '', ciphertext: '', tag: '' }));
  await app.listen({ host: '127.0.0.1', port: Number(process.argv[process.argv.indexOf('--hello-server') + 1]) });
  process.stdout.write('ready\n');
  await new Promise(() => undefined);
}

/**
 * A minimal fetch over node:http with keep-alive sockets: enough for the RCAR client
 * (method, headers, string body, status, headers incl. set-cookie, body bytes).
 */
function httpFetch(maxSockets: number): typeof fetch {
  const agent = new http.Agent({ keepAlive: true, maxSockets });
  return (async (input: string | URL | Request, init?: RequestInit): Promise<Response> => {
    const url = new URL(String(input));
    const body = typeof init?.body === 'string' ? init.body : undefined;
    const headers = { ...(init?.headers as Record<string, string> | undefined), ...(body !== undefined ? { 'content-length': String(Buffer.byteLength(body)) } : {}) };
    return new Promise<Response>((resolve, reject) => {
      const req = http.request({ agent, host: url.hostname, port: url.port, path: url.pathname + url.search, method: init?.method ?? 'GET', headers }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () => {
          const h = new Headers();
          for (const [k, v] of Object.entries(res.headers)) for (const one of Array.isArray(v) ? v : v === undefined ? [] : [v]) h.append(k, one);
          resolve(new Response(Buffer.concat(chunks), { status: res.statusCode ?? 0, headers: h }));
        });
      });
      req.on('error', reject);
      req.end(body);
    });
  }) as typeof fetch;
}
const clientFetch: typeof fetch = clientKind === 'http' ? httpFetch(concurrency) : fetch;

/**
 * The per-loop round trip for the chosen client kind: `raw` gives each loop its own
 * connection (closed by the returned `close`); `http`/`fetch` share clientFetch.
 */
function perLoop(url: string, raw: (conn: RawHttpConnection) => Promise<void>, viaFetch: () => Promise<void>): { one: (loop: number) => Promise<void>; close: () => void } {
  if (clientKind !== 'raw') return { one: viaFetch, close: () => undefined };
  const { hostname, port } = new URL(url);
  const conns = Array.from({ length: concurrency }, () => new RawHttpConnection(hostname, Number(port)));
  return { one: (loop) => raw(conns[loop] as RawHttpConnection), close: () => conns.forEach((c) => c.close()) };
}

async function waitReady(url: string, child: ChildProcess): Promise<void> {
  let err = '';
  child.stderr?.on('data', (d: Buffer) => (err += d.toString()));
  for (let i = 0; i < 300; i++) {
    if (child.exitCode !== null) throw new Error(`server exited: ${err}`);
    try {
      const r = await fetch(`${url}/readyz`).catch(() => fetch(`${url}/kbs/v0/resource/x`));
      if (r.status < 500) return;
    } catch {
      // not yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`server not ready: ${err}`);
}

interface Result {
  name: string;
  /** CPU time per round trip, ms: this client process / the server process. */
  clientCpuMs?: number;
  serverCpuMs?: number;
  roundTrips: number;
  perSecond: number;
  p50ms: number;
  p99ms: number;
  errors: number;
  firstError?: string;
}

/**
 * CPU of a process and all its descendants, ms (Linux /proc): utime + stime + cutime + cstime
 * of each, so worker processes count, also those that exit between two samples.
 */
function procCpuMs(pid: number | undefined): number {
  if (pid === undefined) return NaN;
  const stats = new Map<number, { ppid: number; ms: number }>();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const f = readFileSync(`/proc/${name}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? [];
      stats.set(Number(name), { ppid: Number(f[1]), ms: ((Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])) * 1000) / 100 });
    } catch {
      // exited meanwhile
    }
  }
  if (!stats.has(pid)) return NaN;
  let total = 0;
  for (const [p, s] of stats) {
    for (let q: number | undefined = p, depth = 0; q !== undefined && q > 1 && depth < 16; q = stats.get(q)?.ppid, depth++) {
      if (q === pid) {
        total += s.ms;
        break;
      }
    }
  }
  return total;
}

/** Runs `one` in `concurrency` loops (each given its index) for `seconds` (after a 1 s warm-up). */
async function drive(name: string, one: (loop: number) => Promise<void>, server?: ChildProcess): Promise<Result> {
  const warmUntil = performance.now() + 1000;
  const loops = Array.from({ length: concurrency }, async (_, i) => {
    while (performance.now() < warmUntil) await one(i).catch(() => undefined);
  });
  await Promise.all(loops);
  const lat: number[] = [];
  let errors = 0;
  let firstError: string | undefined;
  const cpu0 = process.cpuUsage();
  const srv0 = procCpuMs(server?.pid);
  const start = performance.now();
  const end = start + seconds * 1000;
  await Promise.all(
    Array.from({ length: concurrency }, async (_, i) => {
      while (performance.now() < end) {
        const t0 = performance.now();
        try {
          await one(i);
          lat.push(performance.now() - t0);
        } catch (err) {
          errors++;
          firstError ??= (err as Error).message;
        }
      }
    }),
  );
  const elapsed = (performance.now() - start) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const srv = procCpuMs(server?.pid) - srv0;
  lat.sort((a, b) => a - b);
  const q = (p: number) => lat[Math.min(lat.length - 1, Math.floor(p * lat.length))] ?? NaN;
  return { name, roundTrips: lat.length, perSecond: lat.length / elapsed, p50ms: q(0.5), p99ms: q(0.99), errors, ...(firstError !== undefined ? { firstError } : {}), clientCpuMs: (cpu.user + cpu.system) / 1000 / lat.length, serverCpuMs: srv / lat.length };
}

await build({ entryPoints: [SERVE_TS], outfile: SERVE, bundle: true, platform: 'node', format: 'esm', target: 'node20', packages: 'external', logLevel: 'warning' });
const dir = mkdtempSync(path.join(tmpdir(), 'cocoon-bench-rcar-'));
const children: ChildProcess[] = [];
let simVerifyCpuMs = NaN;
const results: Result[] = [];
try {
  const { rootPem, platformDir } = await createSimPlatform(path.join(dir, 'sim'));
  writeFileSync(path.join(dir, 'root.pem'), rootPem);
  const platformKey = createPrivateKey(readFileSync(path.join(platformDir, SIM_PLATFORM_FILES.key), 'utf8'));
  const platformCert = readFileSync(path.join(platformDir, SIM_PLATFORM_FILES.cert), 'utf8');
  const platformHash = simSignatureHash(createPublicKey(platformKey));
  /** Sim evidence as src/attester/sim.ts makes it, with the platform key kept in memory. */
  const evidence = (rd: Uint8Array) => {
    const report = Buffer.from(canonicalJson({ v: 1, tee: 'sim', measurement: MEASUREMENT, report_data: Buffer.from(rd).toString('hex'), debug: false, platform: 'cocoon-sim' }));
    const signature = createSign(platformHash).update(report).sign({ key: platformKey, dsaEncoding: 'ieee-p1363' });
    return Promise.resolve({ report: report.toString('base64'), signature: signature.toString('base64'), certs: [platformCert] });
  };
  // What the evidence alone costs the server: sim verification (report signature,
  // platform certificate parse + chain) on this machine, in this run.
  const sample = await evidence(Buffer.alloc(64, 1));
  for (let i = 0; i < 20; i++) await verifySimEvidence(sample, { roots: [rootPem] }, { at: new Date(), reportData: Buffer.alloc(64, 1) });
  const v0 = process.cpuUsage();
  for (let i = 0; i < 200; i++) await verifySimEvidence(sample, { roots: [rootPem] }, { at: new Date(), reportData: Buffer.alloc(64, 1) });
  const vc = process.cpuUsage(v0);
  simVerifyCpuMs = (vc.user + vc.system) / 1000 / 200;
  const owner = await ownerSigningKey(await exportJWK((await generateKeyPair('ES256', { extractable: true })).privateKey));
  writeFileSync(path.join(dir, 'owner.pub.jwk'), JSON.stringify(owner.publicJwk));

  // baseline
  const helloPort = await freePort();
  const helloArgs = ['--import', 'tsx', fileURLToPath(import.meta.url), '--hello-server', String(helloPort)];
  const hello = spawn(serverCpus ? 'taskset' : process.execPath, serverCpus ? ['-c', serverCpus, process.execPath, ...helloArgs] : helloArgs, { stdio: ['ignore', 'ignore', 'pipe'] });
  children.push(hello);
  const helloUrl = `http://127.0.0.1:${helloPort}`;
  await waitReady(helloUrl, hello);
  const helloLoop = perLoop(helloUrl, baselineRoundTrip, async () => {
    const a = await clientFetch(`${helloUrl}/kbs/v0/auth`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(rcarAuthBody('sim')) });
    await a.json();
    const b = await clientFetch(`${helloUrl}/kbs/v0/attest`, { method: 'POST', headers: { 'content-type': 'application/json', cookie: 'kbs-session-id=hello' }, body: '{}' });
    await b.json();
    const c = await clientFetch(`${helloUrl}/kbs/v0/resource/demo/app/x`, { headers: { cookie: 'kbs-session-id=hello' } });
    await c.json();
  });
  const baseline = await drive('baseline: bare fastify, same 3 requests', helloLoop.one, hello);
  helloLoop.close();
  results.push(baseline);
  hello.kill('SIGTERM');

  const pgi = process.argv.includes('--no-postgres') ? 'skipped (--no-postgres)' : await startTempPostgres();
  const stores: [string, string[]][] = [['SQLite', []]];
  if (typeof pgi !== 'string') {
    stores.push(['PostgreSQL', ['--postgres', await createDatabase(pgi, 'bench')]]);
  } else if (!asJson) process.stderr.write(`PostgreSQL: ${pgi}\n`);
  try {
    for (const [label, extra] of stores) {
      const port = await freePort();
      const data = path.join(dir, `data-${label}`);
      const nodeArgs = [...(profileDir ? ['--cpu-prof', '--cpu-prof-dir', profileDir] : []), SERVE, 'serve'];
      const kbs = spawn(
        serverCpus ? 'taskset' : process.execPath,
        [...(serverCpus ? ['-c', serverCpus, process.execPath] : []), ...nodeArgs, '--data-dir', data, '--listen', `127.0.0.1:${port}`, '--owner', path.join(dir, 'owner.pub.jwk'), '--allow-sim', '--sim-root', path.join(dir, 'root.pem'), '--rate-limit', '0', '--log-level', serverLogLevel, ...(serverWorkers !== undefined ? ['--workers', serverWorkers] : []), ...extra],
        { stdio: ['ignore', 'ignore', 'pipe'] },
      );
      children.push(kbs);
      const url = `http://127.0.0.1:${port}`;
      await waitReady(url, kbs);
      const client = await OwnerClient.create({ kbsUrl: url, ownerKey: owner });
      await client.applyPolicy(
        `name: bench/app\nsecrets:\n  pw: { kind: random, size: 32, encoding: hex }\nworkloads:\n  w:\n    accept: [{ tee: [sim], measurement: "${MEASUREMENT}" }]\n    secrets: [pw]\n`,
      );
      const initData = { policy: 'bench/app', workload: 'w' };
      const checkSecret = (pt: Buffer | undefined) => {
        if (pt?.length !== 64 || !/^[0-9a-f]{64}$/.test(pt.toString('latin1'))) throw new Error('bad resource');
      };
      const kbsLoop = perLoop(
        url,
        (conn) => rcarRoundTrip(conn, { tee: 'sim', initData, resource: 'bench/app/pw', evidence, check: checkSecret }),
        async () => {
          const r = await attestAndFetch({ kbsUrl: url, tee: 'sim', initData, resources: ['bench/app/pw'], evidenceProvider: evidence, retry: { attempts: 1, baseDelayMs: 1, maxDelayMs: 1 }, fetchImpl: clientFetch });
          checkSecret(r.resources['bench/app/pw']);
        },
      );
      results.push(await drive(`RCAR round trip, ${label}`, kbsLoop.one, kbs));
      kbsLoop.close();
      kbs.kill('SIGTERM');
      await new Promise((r) => kbs.once('exit', r));
    }
  } finally {
    if (typeof pgi !== 'string') await pgi.stop();
  }
} finally {
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
}

const base = results[0] as Result;
const rows = results.map((r) => ({ ...r, ratio: r.perSecond / base.perSecond }));
const context = { client: clientKind, serverWorkers: serverWorkers ?? 'default', node: process.version, cpus: cpus().length, cpu: cpus()[0]?.model ?? '?', load: loadavg().map((l) => l.toFixed(1)).join(' '), seconds, concurrency, simVerifyCpuMs };
if (asJson) {
  process.stdout.write(JSON.stringify({ context, results: rows }, null, 2) + '\n');
} else {
  process.stdout.write(`Node ${context.node}, ${context.cpus} × ${context.cpu}, load ${context.load}; ${seconds} s per run, ${concurrency} concurrent clients, client: ${clientKind}, server workers: ${context.serverWorkers}, server log level: ${serverLogLevel}\n\n`);
  process.stdout.write('| run | round trips/s | p50 ms | p99 ms | errors | CPU ms/round trip client / server | ratio to baseline |\n|---|---:|---:|---:|---:|---:|---:|\n');
  for (const r of rows) process.stdout.write(`| ${r.name} | ${r.perSecond.toFixed(0)} | ${r.p50ms.toFixed(1)} | ${r.p99ms.toFixed(1)} | ${r.errors} | ${(r.clientCpuMs ?? NaN).toFixed(2)} / ${(r.serverCpuMs ?? NaN).toFixed(2)} | ${r.ratio.toFixed(2)} |\n`);
  for (const r of rows) if (r.firstError !== undefined) process.stdout.write(`\nfirst error of "${r.name}": ${r.firstError}\n`);
  process.stdout.write(`\nsim evidence verification alone: ${simVerifyCpuMs.toFixed(2)} ms CPU per evidence (part of the server column)\n`);
}

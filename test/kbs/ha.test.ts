import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createSimPlatform } from '../../src/attester/sim-platform.js';
import { SimAttester } from '../../src/attester/sim.js';
import { CocoonError } from '../../src/errors.js';
import { auditPublicKey, verifyStoreAudit } from '../../src/kbs/audit.js';
import { attestAndFetch } from '../../src/kbs/client/rcar.js';
import { OwnerClient } from '../../src/kbs/client/owner.js';
import { loadOrCreateIdentity } from '../../src/kbs/identity.js';
import { FileSealer } from '../../src/kbs/sealer.js';
import { openPostgresStore } from '../../src/kbs/store/postgres.js';
import { MEASUREMENT, makeOwnerKey } from './helpers.js';
import { createDatabase, withTempPostgres } from './pg-harness.js';
import { freePort } from '../../src/util/net.js';

const SERVE = join(import.meta.dirname, 'fixtures', 'serve-main.ts');

export function startServe(args: string[]): ChildProcess {
  return spawn(process.execPath, ['--import', 'tsx', SERVE, 'serve', ...args], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, NODE_ENV: 'production' } });
}

async function waitReady(url: string, child: ChildProcess, timeoutMs = 20_000): Promise<void> {
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    if (child.exitCode !== null) throw new Error(`serve exited ${child.exitCode}: ${stderr}`);
    try {
      if ((await fetch(`${url}/readyz`)).status === 200) return;
    } catch {
      // not yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`serve not ready: ${stderr}`);
}

const policy = (n: number) => `name: ha/app
secrets:
  layer-key: { kind: layer-key }
  pw: { kind: random, size: 16, encoding: hex }
workloads:
  w:
    accept: [{ tee: [sim], measurement: "${MEASUREMENT}" }]
    secrets: [pw]
    env: { PW: "{{ secret.pw }}", WRITE: "${n}" }
`;

test('HA: two `cocoon serve` replicas on one PostgreSQL; SIGKILL one under load; no lost writes, every request succeeds on the other', async (t) => {
  await withTempPostgres(t, async (pgi) => {
    const dir = mkdtempSync(join(tmpdir(), 'cocoon-ha-'));
    const children: ChildProcess[] = [];
    try {
      const dbUrl = await createDatabase(pgi, 'ha');
      // shared state of the replicas besides the database: identity key and seal key (a k8s Secret)
      await loadOrCreateIdentity(join(dir, 'data'));
      await FileSealer.open(join(dir, 'data'));
      const { rootPem, platformDir } = await createSimPlatform(join(dir, 'sim'));
      writeFileSync(join(dir, 'root.pem'), rootPem);
      const owner = await makeOwnerKey();
      writeFileSync(join(dir, 'owner.pub.jwk'), JSON.stringify(owner.publicJwk));
      const urls: string[] = [];
      for (let i = 0; i < 2; i++) {
        const port = await freePort();
        const child = startServe(['--data-dir', join(dir, 'data'), '--listen', `127.0.0.1:${port}`, '--postgres', dbUrl, '--owner', join(dir, 'owner.pub.jwk'), '--allow-sim', '--sim-root', join(dir, 'root.pem'), '--rate-limit', '0', '--log-level', 'error']);
        children.push(child);
        urls.push(`http://127.0.0.1:${port}`);
        await waitReady(urls[i] as string, child);
      }
      const clients = await Promise.all(urls.map((u) => OwnerClient.create({ kbsUrl: u, ownerKey: owner, timeoutMs: 5000 })));
      const down = new Set<number>();
      let rr = 0;
      /** Round robin; a replica that does not answer is retried on the other one. */
      async function onAny<T>(fn: (i: number) => Promise<T>): Promise<T> {
        for (let attempt = 0; attempt < 20; attempt++) {
          const i = rr++ % urls.length;
          if (down.has(i) && down.size < urls.length) continue;
          try {
            return await fn(i);
          } catch (err) {
            if (err instanceof CocoonError && err.code === 'KBS_UNREACHABLE') {
              down.add(i);
              continue;
            }
            throw err;
          }
        }
        throw new Error('no replica answered');
      }

      let head = await clients[0]!.applyPolicy(policy(0), { predecessor: null });
      await clients[1]!.putSecret('ha/app', 'layer-key', Buffer.alloc(32, 9));
      const acknowledged: number[] = [];
      const attester = new SimAttester(platformDir);
      let attestations = 0;
      let stop = false;

      const writer = async () => {
        for (let n = 1; !stop; n++) {
          const yaml = policy(n);
          const ref = await onAny(async (i) => {
            try {
              return await clients[i]!.applyPolicy(yaml, { predecessor: head.hash });
            } catch (err) {
              // the killed replica may have committed before dying: then the head is our write
              if (err instanceof CocoonError && err.code === 'PREDECESSOR_MISMATCH') {
                const current = await clients[(i + 1) % 2]!.getPolicy('ha/app').catch(() => clients[i]!.getPolicy('ha/app'));
                if (current.yaml === yaml) return current;
              }
              throw err;
            }
          });
          head = ref;
          acknowledged.push(n);
        }
      };
      const attesterLoop = async () => {
        while (!stop) {
          const res = await onAny((i) =>
            attestAndFetch({
              kbsUrl: urls[i] as string,
              tee: 'sim',
              initData: { policy: 'ha/app', workload: 'w' },
              resources: ['ha/app/launch-plan'],
              evidenceProvider: (rd) => attester.getEvidence(rd, MEASUREMENT),
              retry: { attempts: 1, baseDelayMs: 10, maxDelayMs: 10 },
              timeoutMs: 5000,
            }),
          );
          assert.ok(res.resources['ha/app/launch-plan']);
          attestations++;
        }
      };
      const loops = [writer(), attesterLoop(), attesterLoop(), attesterLoop()];
      await new Promise((r) => setTimeout(r, 2500));
      const before = { writes: acknowledged.length, attestations };
      children[1]!.kill('SIGKILL');
      await new Promise((r) => setTimeout(r, 2500));
      stop = true;
      await Promise.all(loops);
      assert.ok(acknowledged.length > before.writes, 'writes continued after the kill');
      assert.ok(attestations > before.attestations + 5, 'attestations continued after the kill');

      // zero lost writes: every acknowledged version is in the history, in order
      const history = await clients[0]!.policyHistory('ha/app', 1000);
      const store = await openPostgresStore(dbUrl, { maxConnections: 2 });
      try {
        const versions = await store.listPolicyVersions('ha/app', 10_000);
        const writes = versions.map((v) => Number(/WRITE: "(\d+)"/.exec(v.yaml)?.[1])).reverse();
        assert.deepEqual(writes, [0, ...acknowledged]);
        assert.equal(history[0]?.hash, head.hash);
        const identity = await loadOrCreateIdentity(join(dir, 'data'));
        const verdict = await verifyStoreAudit(store, auditPublicKey(identity.publicJwk));
        assert.equal(verdict.ok, true, JSON.stringify(verdict.firstBroken));
        t.diagnostic(`${acknowledged.length} policy writes, ${attestations} attestations, ${verdict.count} audit entries; replica 2 killed after ${before.writes} writes / ${before.attestations} attestations`);
      } finally {
        await store.close();
      }
    } finally {
      for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

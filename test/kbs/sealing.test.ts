import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, unlinkSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exportJWK, generateKeyPair } from 'jose';
import type { JWK } from 'jose';
import { CocoonError } from '../../src/errors.js';
import { buildKbsApp } from '../../src/kbs/app.js';
import { ownerSigningKey } from '../../src/kbs/owner-key.js';
import { decryptShare, loadRecovery, recoverDataKey } from '../../src/kbs/recovery.js';
import { FileSealer, SEAL_KEY_FILE } from '../../src/kbs/sealer.js';
import { openSqliteStore } from '../../src/kbs/store/sqlite.js';
import { TpmSealer } from '../../src/kbs/tpm-sealer.js';
import { POLICY_YAML, fakeVerifier } from './helpers.js';
import type { TestKbs } from './helpers.js';
import { ownerRequest } from './helpers.js';

async function freePorts(): Promise<[number, number]> {
  for (;;) {
    const srv = createServer();
    await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
    const port = (srv.address() as { port: number }).port;
    await new Promise<void>((resolve) => srv.close(() => resolve()));
    if (port < 65000) {
      const probe = createServer();
      const ok = await new Promise<boolean>((resolve) => {
        probe.once('error', () => resolve(false));
        probe.listen(port + 1, '127.0.0.1', () => resolve(true));
      });
      if (ok) {
        await new Promise<void>((resolve) => probe.close(() => resolve()));
        return [port, port + 1];
      }
    }
  }
}

interface Swtpm {
  tcti: string;
  stop(): Promise<void>;
}

const SWTPM = '/usr/bin/swtpm';
const TOOLS = '/usr/bin/tpm2_createprimary';

async function startSwtpm(): Promise<Swtpm> {
  const dir = mkdtempSync(join(tmpdir(), 'cocoon-swtpm-'));
  const [port, ctrl] = await freePorts();
  const child: ChildProcess = spawn(SWTPM, ['socket', '--tpm2', '--server', `type=tcp,port=${port},bindaddr=127.0.0.1`, '--ctrl', `type=tcp,port=${ctrl},bindaddr=127.0.0.1`, '--tpmstate', `dir=${dir}`, '--flags', 'not-need-init,startup-clear'], { stdio: 'ignore' });
  // wait until the TPM port accepts connections
  for (let i = 0; i < 50; i++) {
    const up = await new Promise<boolean>((resolve) => {
      const s = createServer();
      s.once('error', () => resolve(true));
      s.listen(port, '127.0.0.1', () => s.close(() => resolve(false)));
    });
    if (up) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    tcti: `swtpm:host=127.0.0.1,port=${port}`,
    async stop() {
      if (child.exitCode === null) {
        child.kill('SIGTERM');
        await new Promise((r) => child.once('exit', r));
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

const have = existsSync(SWTPM) && existsSync(TOOLS);

test('TPM sealer (swtpm + tpm2-tools): seal/unseal, a KBS restarts on the same TPM, another TPM cannot unseal', { skip: have ? false : 'swtpm or tpm2-tools not installed (apt-get install swtpm tpm2-tools)' }, async () => {
  const tpm = await startSwtpm();
  const other = await startSwtpm();
  const dir = mkdtempSync(join(tmpdir(), 'cocoon-kbs-tpm-'));
  try {
    const sealer = new TpmSealer({ tcti: tpm.tcti });
    const key = Buffer.alloc(32, 7);
    const blob = await sealer.seal(key);
    assert.match(blob, /^tpm2:v1\./);
    assert.deepEqual(Buffer.from(await sealer.unseal(blob)), key);
    await assert.rejects(new TpmSealer({ tcti: other.tcti }).unseal(blob), (e: unknown) => e instanceof CocoonError && e.code === 'SEAL_FAILED');
    await assert.rejects(sealer.unseal(blob.replace(/\.([A-Za-z0-9+/]{8})/, '.AAAAAAAA')), (e: unknown) => e instanceof CocoonError && e.code === 'SEAL_FAILED');
    await assert.rejects(sealer.unseal('v1.not-a-tpm-blob'), (e: unknown) => e instanceof CocoonError && e.code === 'SEAL_FAILED');
    assert.throws(() => new TpmSealer({ tcti: 'swtpm:host=1.2.3.4,port=1;rm -rf /' }), (e: unknown) => e instanceof CocoonError && e.code === 'BAD_USAGE');

    const owner = await ownerSigningKey(await exportJWK((await generateKeyPair('ES256', { extractable: true })).privateKey));
    const start = () => buildKbsApp({ dataDir: dir, verifier: fakeVerifier, allowSim: true, owners: [owner.publicJwk], logger: false, sealer: new TpmSealer({ tcti: tpm.tcti }) });
    let app = await start();
    const kbs: TestKbs = { app, dir, owner, kbsId: (await app.inject({ method: 'GET', url: '/cocoon/v1/identity' })).json<{ id: string }>().id, cleanup: async () => undefined };
    assert.equal((await ownerRequest(kbs, 'PUT', '/cocoon/v1/policies/demo/redis', { yaml: POLICY_YAML })).statusCode, 200);
    const before = (await ownerRequest(kbs, 'GET', '/cocoon/v1/secrets/demo/redis/redis-password')).json<{ value: string }>().value;
    await app.close();
    app = await start();
    kbs.app = app;
    assert.equal((await ownerRequest(kbs, 'GET', '/cocoon/v1/secrets/demo/redis/redis-password')).json<{ value: string }>().value, before);
    await app.close();
    await assert.rejects(buildKbsApp({ dataDir: dir, verifier: fakeVerifier, logger: false, sealer: new TpmSealer({ tcti: other.tcti }) }));
  } finally {
    rmSync(dir, { recursive: true, force: true });
    await tpm.stop();
    await other.stop();
  }
});

async function ownerKeyPair(alg: 'ES256' | 'EdDSA' = 'ES256'): Promise<{ jwk: JWK; signing: Awaited<ReturnType<typeof ownerSigningKey>> }> {
  const jwk = await exportJWK((await generateKeyPair(alg, { extractable: true, ...(alg === 'EdDSA' ? { crv: 'Ed25519' } : {}) })).privateKey);
  return { jwk, signing: await ownerSigningKey(jwk) };
}

test('recovery: 2-of-3 owner shares rebuild the data key after the seal key is lost', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'cocoon-kbs-recover-'));
  try {
    const [a, b, c, ed] = [await ownerKeyPair(), await ownerKeyPair(), await ownerKeyPair(), await ownerKeyPair('EdDSA')];
    const owners = [a, b, c, ed].map((o) => o.signing.publicJwk);
    const start = () => buildKbsApp({ dataDir: dir, verifier: fakeVerifier, allowSim: true, owners, logger: false, recoveryThreshold: 2 });
    const app = await start();
    const kbs: TestKbs = { app, dir, owner: a.signing, kbsId: (await app.inject({ method: 'GET', url: '/cocoon/v1/identity' })).json<{ id: string }>().id, cleanup: async () => undefined };
    assert.equal((await ownerRequest(kbs, 'PUT', '/cocoon/v1/policies/demo/redis', { yaml: POLICY_YAML })).statusCode, 200);
    const before = (await ownerRequest(kbs, 'GET', '/cocoon/v1/secrets/demo/redis/redis-password')).json<{ value: string }>().value;
    await app.close();

    unlinkSync(join(dir, SEAL_KEY_FILE));
    await assert.rejects(start(), 'a new seal key cannot open the old data key');

    const store = await openSqliteStore(dir);
    try {
      const record = await loadRecovery(store);
      assert.equal(record.threshold, 2);
      assert.equal(record.shares.length, 3, 'the Ed25519 owner gets no share');
      const sa = await decryptShare(record, a.jwk);
      const sb = await decryptShare(record, b.jwk);
      await assert.rejects(decryptShare(record, ed.jwk), (e: unknown) => e instanceof CocoonError && e.code === 'FORBIDDEN');
      const stranger = await ownerKeyPair();
      await assert.rejects(decryptShare(record, stranger.jwk), (e: unknown) => e instanceof CocoonError && e.code === 'FORBIDDEN');
      const sealer = await FileSealer.open(dir);
      await assert.rejects(recoverDataKey(store, [sa], sealer), (e: unknown) => e instanceof CocoonError && e.code === 'BAD_USAGE');
      await assert.rejects(recoverDataKey(store, [sa, { ...sb, y: Buffer.alloc(32, 1).toString('base64') }], sealer), (e: unknown) => e instanceof CocoonError && e.code === 'AUTH_INVALID');
      const r = await recoverDataKey(store, [sa, sb], sealer);
      assert.deepEqual(r, { threshold: 2, used: 2 });
    } finally {
      await store.close();
    }
    const again = await start();
    kbs.app = again;
    assert.equal((await ownerRequest(kbs, 'GET', '/cocoon/v1/secrets/demo/redis/redis-password')).json<{ value: string }>().value, before);
    await again.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

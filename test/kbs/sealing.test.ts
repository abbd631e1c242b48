import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { calculateJwkThumbprint, exportJWK, generateKeyPair } from 'jose';
import type { JWK } from 'jose';
import { CocoonError } from '../../src/errors.js';
import { buildKbsApp } from '../../src/kbs/app.js';
import { ownerSigningKey } from '../../src/kbs/owner-key.js';
import type { OwnerSigningKey } from '../../src/kbs/owner-key.js';
import { decryptShare, loadRecovery, recoverDataKey } from '../../src/kbs/recovery.js';
import { FileSealer, SEAL_KEY_FILE } from '../../src/kbs/sealer.js';
import { openSqliteStore } from '../../src/kbs/store/sqlite.js';
import { TpmSealer } from '../../src/kbs/tpm-sealer.js';
import { startSwtpm, swtpmMissing } from '../attester/swtpm-helper.js';
import { POLICY_YAML, fakeVerifier } from './helpers.js';
import type { TestKbs } from './helpers.js';
import { ownerRequest } from './helpers.js';

const TOOLS = '/usr/bin/tpm2_createprimary';

const have = !swtpmMissing && existsSync(TOOLS);

type KbsApp = Awaited<ReturnType<typeof buildKbsApp>>;

const demoSecret = async (kbs: TestKbs): Promise<string> => (await ownerRequest(kbs, 'GET', '/cocoon/v1/secrets/demo/redis/redis-password')).json<{ value: string }>().value;

/** Applies the demo policy on a fresh KBS and returns its generated secret, which every restart must still read. */
async function seedDemoSecret(app: KbsApp, dir: string, owner: OwnerSigningKey): Promise<{ kbs: TestKbs; before: string }> {
  const kbs: TestKbs = { app, dir, owner, kbsId: (await app.inject({ method: 'GET', url: '/cocoon/v1/identity' })).json<{ id: string }>().id, cleanup: async () => undefined };
  assert.equal((await ownerRequest(kbs, 'PUT', '/cocoon/v1/policies/demo/redis', { yaml: POLICY_YAML })).statusCode, 200);
  return { kbs, before: await demoSecret(kbs) };
}

/** The restarted KBS `app` opens the data key again: the demo secret reads as before. Closes `app`. */
async function assertSecretKept(kbs: TestKbs, app: KbsApp, before: string): Promise<void> {
  kbs.app = app;
  try {
    assert.equal(await demoSecret(kbs), before);
  } finally {
    await app.close();
  }
}

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
    const app = await start();
    const { kbs, before } = await seedDemoSecret(app, dir, owner);
    await app.close();
    await assertSecretKept(kbs, await start(), before);
    await assert.rejects(buildKbsApp({ dataDir: dir, verifier: fakeVerifier, logger: false, sealer: new TpmSealer({ tcti: other.tcti }) }), (e: unknown) => e instanceof CocoonError && e.code === 'SEAL_FAILED');
  } finally {
    rmSync(dir, { recursive: true, force: true });
    await tpm.stop();
    await other.stop();
  }
});

async function ownerKeyPair(alg: 'ES256' | 'EdDSA' = 'ES256'): Promise<{ jwk: JWK; signing: OwnerSigningKey }> {
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
    const { kbs, before } = await seedDemoSecret(app, dir, a.signing);
    await app.close();

    unlinkSync(join(dir, SEAL_KEY_FILE));
    await assert.rejects(start(), (e: unknown) => e instanceof CocoonError && e.code === 'IO_ERROR' && /failed authentication/.test(e.message), 'a new seal key cannot open the old data key');

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
    await assertSecretKept(kbs, await start(), before);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('recovery recipients: an Ed25519 owner recovers through its X25519 recipient together with a P-256 owner (2-of-2); wrong keys refused; owners without a usable key reported', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'cocoon-kbs-recipient-'));
  try {
    const [a, ed, lone] = [await ownerKeyPair(), await ownerKeyPair('EdDSA'), await ownerKeyPair('EdDSA')];
    const x25519 = await generateKeyPair('ECDH-ES+A256KW', { crv: 'X25519', extractable: true });
    const [recipientPub, recipientPriv] = [await exportJWK(x25519.publicKey), await exportJWK(x25519.privateKey)];
    const owners = [a, ed, lone].map((o) => o.signing.publicJwk);
    const recipients = { [ed.signing.kid]: recipientPub };
    const start = (o: Partial<Parameters<typeof buildKbsApp>[0]> = {}) => buildKbsApp({ dataDir: dir, verifier: fakeVerifier, allowSim: true, owners, logger: false, recoveryThreshold: 2, recoveryRecipients: recipients, ...o });

    // usage: recipients of unknown owners, private or unsuitable recipient keys, too high a threshold
    const stranger = await ownerKeyPair();
    const badUsage = (re: RegExp) => (e: unknown) => e instanceof CocoonError && e.code === 'BAD_USAGE' && re.test(e.message);
    await assert.rejects(start({ recoveryRecipients: { ...recipients, [stranger.signing.kid]: recipientPub } }), badUsage(/no such admin owner/));
    await assert.rejects(start({ recoveryRecipients: { [ed.signing.kid]: recipientPriv } }), badUsage(/private key/));
    await assert.rejects(start({ recoveryRecipients: { [ed.signing.kid]: ed.signing.publicJwk } }), badUsage(/Ed25519 is a signing key/));
    await assert.rejects(start({ recoveryThreshold: 3 }), badUsage(new RegExp(`threshold must be 1–2 .*without a share: ${lone.signing.kid}`)));
    await assert.rejects(buildKbsApp({ dataDir: join(dir, 'lone'), verifier: fakeVerifier, owners: [lone.signing.publicJwk], logger: false, recoveryThreshold: 1 }), badUsage(new RegExp(`none of 1: ${lone.signing.kid}: OKP Ed25519 key and no recovery recipient`)));
    await assert.rejects(buildKbsApp({ dataDir: join(dir, 'lone'), verifier: fakeVerifier, logger: false, recoveryRecipients: recipients }), badUsage(/need a recovery threshold/));

    const app = await start();
    const { kbs, before } = await seedDemoSecret(app, dir, a.signing);
    const audit = (await ownerRequest(kbs, 'GET', '/cocoon/v1/audit')).json<{ entries: { action: string; detail: string }[] }>().entries;
    const setup = audit.filter((e) => e.action === 'recovery.setup').map((e) => JSON.parse(e.detail) as Record<string, unknown>);
    assert.deepEqual(setup, [{ threshold: 2, owners: [a.signing.kid, ed.signing.kid].sort(), recipients: { [ed.signing.kid]: await calculateJwkThumbprint(recipientPub, 'sha256') }, withoutShare: [lone.signing.kid] }]);
    await app.close();
    // a restart with the same owners and recipients keeps the shares (no new recovery.setup)
    const record0 = await (async () => {
      const s = await openSqliteStore(dir);
      try {
        return await loadRecovery(s);
      } finally {
        await s.close();
      }
    })();
    await (await start()).close();

    unlinkSync(join(dir, SEAL_KEY_FILE));
    const store = await openSqliteStore(dir);
    try {
      const record = await loadRecovery(store);
      assert.equal(record.createdAt, record0.createdAt, 'unchanged setup: shares kept across restarts');
      assert.deepEqual(record.shares.map((s) => [s.kid, s.recipient ?? null]).sort(), [[a.signing.kid, null], [ed.signing.kid, await calculateJwkThumbprint(recipientPub, 'sha256')]].sort());
      const sa = await decryptShare(record, a.jwk);
      const se = await decryptShare(record, recipientPriv);
      assert.equal(se.kid, ed.signing.kid, 'the share file names the owner it belongs to');
      // wrong keys: the Ed25519 owner key itself, another X25519 key, the lone owner
      const forbidden = (e: unknown) => e instanceof CocoonError && e.code === 'FORBIDDEN';
      await assert.rejects(decryptShare(record, ed.jwk), forbidden);
      await assert.rejects(decryptShare(record, lone.jwk), forbidden);
      await assert.rejects(decryptShare(record, await exportJWK((await generateKeyPair('ECDH-ES+A256KW', { crv: 'X25519', extractable: true })).privateKey)), forbidden);
      // a key with the recipient's public part but another private scalar does not decrypt
      const other = await exportJWK((await generateKeyPair('ECDH-ES+A256KW', { crv: 'X25519', extractable: true })).privateKey);
      await assert.rejects(decryptShare(record, { ...recipientPriv, d: other.d }), (e: unknown) => e instanceof CocoonError && e.code === 'AUTH_INVALID');
      const sealer = await FileSealer.open(dir);
      await assert.rejects(recoverDataKey(store, [se], sealer), (e: unknown) => e instanceof CocoonError && e.code === 'BAD_USAGE');
      assert.deepEqual(await recoverDataKey(store, [sa, se], sealer), { threshold: 2, used: 2 });
    } finally {
      await store.close();
    }
    await assertSecretKept(kbs, await start(), before);

    // a P-256 owner may have a recipient too: its share moves there, and the owner key is told so
    const p384 = await generateKeyPair('ECDH-ES+A256KW', { crv: 'P-384', extractable: true });
    const moved = await start({ recoveryRecipients: { ...recipients, [a.signing.kid]: await exportJWK(p384.publicKey) } });
    await moved.close();
    const store2 = await openSqliteStore(dir);
    try {
      const record = await loadRecovery(store2);
      await assert.rejects(decryptShare(record, a.jwk), (e: unknown) => e instanceof CocoonError && e.code === 'FORBIDDEN' && /encrypted to its recovery recipient/.test(e.message));
      assert.equal((await decryptShare(record, await exportJWK(p384.privateKey))).kid, a.signing.kid);
    } finally {
      await store2.close();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

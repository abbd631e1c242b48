/** Housekeeping of the deployment CA's records: expired issuance records and revocations leave the store and the CRL. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { x509 } from '../../src/crypto/x509.js';
import { PURGE_INTERVAL_MS } from '../../src/kbs/app.js';
import { CERT_RECORD_GRACE_MS, DeploymentCa, UNRECORDED_REVOCATION_RETENTION_MS, pruneCaRecords } from '../../src/kbs/ca.js';
import { openSqliteStore } from '../../src/kbs/store/sqlite.js';
import { makeKbs } from './helpers.js';

const DAY = 86_400_000;
const T0 = Date.parse('2030-01-01T00:00:00Z');

const crlSerials = (pem: string) => new x509.X509Crl(pem).entries.map((e) => e.serialNumber.toLowerCase()).sort();

test('pruneCaRecords: a revoked serial leaves the CRL only after its certificate expired (+ grace); forced revocations after the retention', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'cocoon-ca-prune-'));
  const store = await openSqliteStore(dir);
  let now = T0;
  try {
    // the retention covers the longest deployment-CA leaf (x509 secrets: validityDays ≤ 825)
    assert.ok(UNRECORDED_REVOCATION_RETENTION_MS > 825 * DAY);
    assert.ok(CERT_RECORD_GRACE_MS > 0);
    const ca = new DeploymentCa(store, randomBytes(32), () => new Date(now));
    await store.recordCert({ serial: 'aa01', policy: 'demo/app', workload: 'w', issuedAt: T0, notAfter: T0 + DAY });
    await store.recordCert({ serial: 'aa02', policy: 'demo/app', workload: 'w', issuedAt: T0, notAfter: T0 + 30 * DAY });
    await store.recordCert({ serial: 'aa03', policy: 'demo/app', workload: 'w', issuedAt: T0, notAfter: T0 + DAY });
    await store.revokeSerial('aa01', T0 + 1000, 'keyCompromise');
    await store.revokeSerial('aa02', T0 + 1000, 'superseded');
    await store.revokeSerial('ff01', T0 + 1000, 'cessationOfOperation'); // forced: no issuance record
    assert.deepEqual(crlSerials(await ca.crlPem()), ['aa01', 'aa02', 'ff01']);

    now = T0 + DAY + CERT_RECORD_GRACE_MS - 1;
    assert.deepEqual(await pruneCaRecords(store, now), { certs: 0, revoked: 0 }, 'within the grace after notAfter nothing goes');
    now = T0 + DAY + CERT_RECORD_GRACE_MS;
    assert.deepEqual(await pruneCaRecords(store, now), { certs: 2, revoked: 1 });
    assert.deepEqual(crlSerials(await ca.crlPem()), ['aa02', 'ff01'], 'the CRL (cache keyed by the list) drops aa01 at once');
    assert.equal(await store.getCert('aa03'), undefined, 'unrevoked expired records go too');

    now = T0 + 30 * DAY + CERT_RECORD_GRACE_MS;
    assert.deepEqual(await pruneCaRecords(store, now), { certs: 1, revoked: 1 });
    assert.deepEqual(crlSerials(await ca.crlPem()), ['ff01'], 'a forced revocation outlives every recorded certificate');

    now = T0 + 1000 + UNRECORDED_REVOCATION_RETENTION_MS - 1;
    assert.deepEqual(await pruneCaRecords(store, now), { certs: 0, revoked: 0 });
    now += 1;
    assert.deepEqual(await pruneCaRecords(store, now), { certs: 0, revoked: 1 });
    assert.deepEqual(crlSerials(await ca.crlPem()), []);
  } finally {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the KBS prunes in its periodic purge: an expired revoked certificate leaves GET /cocoon/v1/ca/crl', async (t) => {
  t.mock.timers.enable({ apis: ['setInterval'] });
  const dir = mkdtempSync(join(tmpdir(), 'cocoon-ca-prune-app-'));
  const store = await openSqliteStore(dir);
  let now = T0;
  const kbs = await makeKbs({ store, now: () => new Date(now) });
  try {
    await store.recordCert({ serial: 'bb01', policy: 'demo/app', workload: 'w', issuedAt: T0, notAfter: T0 + DAY });
    await store.recordCert({ serial: 'bb02', policy: 'demo/app', workload: 'w', issuedAt: T0, notAfter: T0 + 10 * DAY });
    await store.revokeSerial('bb01', T0, 'keyCompromise');
    await store.revokeSerial('bb02', T0, 'keyCompromise');
    const crl = async () => crlSerials((await kbs.app.inject({ method: 'GET', url: '/cocoon/v1/ca/crl' })).body);
    assert.deepEqual(await crl(), ['bb01', 'bb02']);
    now = T0 + DAY + CERT_RECORD_GRACE_MS + 60_001; // past bb01's notAfter + grace and the CRL cache minute
    t.mock.timers.tick(PURGE_INTERVAL_MS);
    for (let i = 0; i < 100 && (await store.listRevoked()).length > 1; i++) await new Promise((r) => setImmediate(r));
    assert.deepEqual((await store.listRevoked()).map((r) => r.serial), ['bb02']);
    assert.equal(await store.getCert('bb01'), undefined);
    assert.deepEqual(await crl(), ['bb02']);
  } finally {
    await kbs.cleanup();
    await store.close();
  }
});

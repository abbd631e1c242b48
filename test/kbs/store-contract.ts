import assert from 'node:assert/strict';
import { CocoonError } from '../../src/errors.js';
import type { PolicyVersionRecord, Store } from '../../src/kbs/store/types.js';

const rec = (version: number, hash: string, predecessor: string | null): PolicyVersionRecord => ({
  name: 'demo/app',
  version,
  hash,
  predecessor,
  yaml: 'x',
  createdAt: 1,
  createdBy: 'owner',
});

/** The Store contract, run against every implementation (postgres.test.ts reuses it). */
export async function storeContract(store: Store): Promise<void> {
    await store.applyPolicy({ record: rec(1, 'h1', null), expectedHead: null, newSecrets: [{ policy: 'demo/app', name: 's', kind: 'random', sealed: 'A', createdAt: 1, updatedAt: 1 }] });
    // two writers based on the same head: exactly one wins
    const results = await Promise.allSettled([
      store.applyPolicy({ record: rec(2, 'h2a', 'h1'), expectedHead: 'h1', newSecrets: [] }),
      store.applyPolicy({ record: rec(2, 'h2b', 'h1'), expectedHead: 'h1', newSecrets: [] }),
    ]);
    assert.equal(results.filter((r) => r.status === 'fulfilled').length, 1);
    const rejected = results.find((r) => r.status === 'rejected') as PromiseRejectedResult;
    assert.ok(rejected.reason instanceof CocoonError && rejected.reason.code === 'PREDECESSOR_MISMATCH', String(rejected.reason));
    const head = await store.getPolicyHead('demo/app');
    assert.equal(head?.version, 2);
    // a random secret present already is not replaced by a later apply
    await store.applyPolicy({ record: rec(3, 'h3', head!.hash), expectedHead: head!.hash, newSecrets: [{ policy: 'demo/app', name: 's', kind: 'random', sealed: 'B', createdAt: 2, updatedAt: 2 }] });
    assert.equal((await store.getSecret('demo/app', 's'))?.sealed, 'A');
    assert.deepEqual((await store.listPolicyVersions('demo/app', 10)).map((v) => v.version), [3, 2, 1]);
    assert.deepEqual(await store.getPolicyHeadRef('demo/app'), { version: 3, hash: 'h3' });
    assert.equal(await store.getPolicyHeadRef('no/such'), undefined);

    // A challenge is spent by inserting its session: of concurrent inserts of one id exactly one wins, and the first row stays.
    const session = (attestation: string | null) => ({ id: 'sess', tee: 'sim', nonce: 'n', createdAt: 0, expiresAt: 10_000, teePubkey: attestation && '{}', attestation });
    const inserted = await Promise.all([store.insertSession(session('a')), store.insertSession(session('b')), store.insertSession(session(null))]);
    assert.equal(inserted.filter(Boolean).length, 1);
    const winner = ['a', 'b', null][inserted.indexOf(true)];
    assert.equal((await store.getSession('sess'))?.attestation, winner);
    assert.equal(await store.insertSession(session('c')), false);
    assert.deepEqual(await store.transaction(async (tx) => [await tx.insertSession(session('d')), await tx.sessionExists('sess')]), [false, true], 'inside a transaction too, without aborting it');
    assert.equal((await store.getSession('sess'))?.attestation, winner);
    assert.equal(await store.insertSession({ ...session(null), id: 'old', expiresAt: 10 }), true);
    await store.purgeExpired(20);
    assert.equal(await store.getSession('old'), undefined);
    assert.equal(await store.sessionExists('old'), false, 'purged');
    assert.ok(await store.getSession('sess'));
    assert.equal(await store.sessionExists('sess'), true);
    assert.equal(await store.sessionExists('never'), false);

    assert.equal(await store.rememberJti('j1', 100, 0), true);
    assert.equal(await store.rememberJti('j1', 100, 50), false);
    assert.equal(await store.rememberJti('j1', 300, 150), true, 'an expired entry no longer blocks');

    for (let i = 0; i < 5; i++) {
      await store.addEvent({ id: `e${i}`, at: i, kind: 'attest', status: 'affirming', tee: 'sim', policy: i % 2 ? 'demo/app' : 'x/y', workload: 'w', resource: null, code: null, detail: 'd', insecure: true, sessionId: null });
    }
    assert.deepEqual((await store.listEvents({ limit: 3 })).map((e) => e.id), ['e4', 'e3', 'e2']);
    assert.deepEqual((await store.listEvents({ limit: 10, policy: 'demo/app' })).map((e) => e.id), ['e3', 'e1']);
    assert.equal(await store.putMetaIfAbsent('k', 'first'), 'first');
    assert.equal(await store.putMetaIfAbsent('k', 'second'), 'first');
    await store.putMeta('k', 'third');
    assert.equal(await store.getMeta('k'), 'third');

    // governance rows: one decision per owner; compare-and-set of the status
    await store.createPending({ id: 'p1', policy: 'demo/app', baseHash: 'h3', baseVersion: 3, yaml: 'y', threshold: 2, proposedBy: 'o1', createdAt: 5, status: 'pending', decidedAt: null });
    assert.equal(await store.addApproval({ pendingId: 'p1', owner: 'o1', decision: 'approve', at: 5 }), true);
    assert.equal(await store.addApproval({ pendingId: 'p1', owner: 'o1', decision: 'reject', at: 6 }), false);
    assert.deepEqual((await store.listApprovals('p1')).map((a) => a.decision), ['approve']);
    assert.deepEqual((await store.listPending('demo/app', 'pending')).map((p) => p.id), ['p1']);
    const cas = await Promise.all([store.setPendingStatus('p1', 'pending', 'applied', 7), store.setPendingStatus('p1', 'pending', 'rejected', 7)]);
    assert.equal(cas.filter(Boolean).length, 1);

    // audit: seq is the primary key, so two writers cannot both append entry n
    const entry = (seq: number) => ({ seq, at: seq, actor: 'a', action: 'x', policy: null, detail: '{}', prev: 'p', hash: `h${seq}`, sig: 's' });
    await store.insertAudit(entry(1));
    await assert.rejects(store.insertAudit(entry(1)));
    await store.transaction(async (tx) => {
      await tx.insertAudit(entry(2));
    });
    await assert.rejects(
      store.transaction(async (tx) => {
        await tx.insertAudit(entry(3));
        throw new Error('rollback');
      }),
    );
    assert.equal((await store.auditHead())?.seq, 2, 'a failed transaction leaves no entry');
    assert.deepEqual((await store.listAudit({ afterSeq: 1, limit: 10 })).map((e) => e.seq), [2]);

    // CA rows and revocations
    const ca = { id: 'root', kind: 'root' as const, serial: '01', cert: 'c', sealedKey: 'k', createdAt: 1, notAfter: 2 };
    assert.equal((await store.putCaIfAbsent(ca)).serial, '01');
    assert.equal((await store.putCaIfAbsent({ ...ca, serial: '02' })).serial, '01');
    await store.insertCa({ ...ca, id: 'i1', kind: 'intermediate', createdAt: 3 });
    await store.insertCa({ ...ca, id: 'i2', kind: 'intermediate', createdAt: 4 });
    assert.equal((await store.latestCa('intermediate'))?.id, 'i2');
    assert.equal(await store.revokeSerial('ab', 1, 'x'), true);
    assert.equal(await store.revokeSerial('ab', 2, 'x'), false);
    assert.deepEqual((await store.listRevoked()).map((r) => r.serial), ['ab']);
    assert.deepEqual(await store.getRevoked('ab'), { serial: 'ab', at: 1, reason: 'x' });
    assert.equal(await store.getRevoked('cd'), undefined);
    // issued workload certificates (migration 0004)
    await store.recordCert({ serial: 'c1', policy: 'demo/app', workload: 'w', issuedAt: 10, notAfter: 100 });
    await store.recordCert({ serial: 'c2', policy: 'demo/app', workload: 'w', issuedAt: 20, notAfter: 200 });
    await store.recordCert({ serial: 'c3', policy: 'demo/app', workload: 'other', issuedAt: 30, notAfter: 300 });
    await store.recordCert({ serial: 'c1', policy: 'x/y', workload: 'z', issuedAt: 40, notAfter: 400 });
    assert.deepEqual(await store.getCert('c1'), { serial: 'c1', policy: 'demo/app', workload: 'w', issuedAt: 10, notAfter: 100 });
    assert.equal(await store.getCert('nope'), undefined);
    assert.deepEqual((await store.listCerts('demo/app', 'w', 50, 10)).map((c) => c.serial), ['c2', 'c1']);
    assert.deepEqual((await store.listCerts('demo/app', 'w', 150, 10)).map((c) => c.serial), ['c2']);

    // housekeeping (pruneCertificates): expired issuance records leave with their revocations; a
    // revocation of a still-valid recorded certificate stays however old it is; revocations of
    // unrecorded serials (forced) stay until their own retention cutoff
    await store.revokeSerial('c1', 60, 'keyCompromise');
    await store.revokeSerial('c2', 1, 'superseded');
    await store.revokeSerial('f1', 5, 'unspecified');
    await store.revokeSerial('f2', 900, 'unspecified');
    const revokedNow = async () => (await store.listRevoked()).map((r) => r.serial).sort();
    assert.deepEqual(await revokedNow(), ['ab', 'c1', 'c2', 'f1', 'f2']);
    assert.deepEqual(await store.pruneCertificates(99, 0), { certs: 0, revoked: 0 }, 'nothing expired yet');
    assert.deepEqual(await store.pruneCertificates(100, 0), { certs: 1, revoked: 1 }, 'c1 expired at its notAfter: record and revocation go');
    assert.equal(await store.getCert('c1'), undefined);
    assert.deepEqual(await revokedNow(), ['ab', 'c2', 'f1', 'f2']);
    assert.deepEqual(await store.pruneCertificates(150, 10), { certs: 0, revoked: 2 }, 'forced revocations at ≤ 10 go; c2 (revoked at 1, valid until 200) stays');
    assert.deepEqual(await revokedNow(), ['c2', 'f2']);
    assert.ok(await store.getCert('c2'));
    await store.transaction(async (tx) => {
      assert.deepEqual(await tx.pruneCertificates(300, 10), { certs: 2, revoked: 1 }, 'joins an open transaction');
    });
    assert.deepEqual(await revokedNow(), ['f2']);
    assert.deepEqual(await store.listCerts('demo/app', 'other', 0, 10), []);
    assert.deepEqual(await store.pruneCertificates(300, 10), { certs: 0, revoked: 0 }, 'idempotent');
    assert.equal(await store.revokeSerial('c1', 901, 'x'), true, 'a pruned serial can be revoked again (forced)');
    assert.deepEqual(await store.pruneCertificates(10_000, 900), { certs: 0, revoked: 1 }, 'f2 revoked at 900 reaches its cutoff');
    assert.deepEqual(await revokedNow(), ['c1']);

    // per-instance secret values (migration 0005): first writer wins, also under concurrency; purged at expiry
    const inst = { instance: 'session:s1', policy: 'demo/app', name: 'pw', expiresAt: 500 };
    assert.equal(await store.getInstanceSecret('session:s1', 'demo/app', 'pw'), undefined);
    const writers = await Promise.all(['v1.a', 'v1.b', 'v1.c'].map((sealed) => store.putInstanceSecretIfAbsent({ ...inst, sealed })));
    assert.equal(new Set(writers).size, 1, `every writer sees the winner: ${writers.join(',')}`);
    assert.equal(await store.getInstanceSecret('session:s1', 'demo/app', 'pw'), writers[0]);
    assert.equal(await store.putInstanceSecretIfAbsent({ ...inst, instance: 'session:s2', sealed: 'v1.z' }), 'v1.z', 'other instances are independent');
    await store.purgeExpired(499);
    assert.equal(await store.getInstanceSecret('session:s1', 'demo/app', 'pw'), writers[0]);
    await store.purgeExpired(500);
    assert.equal(await store.getInstanceSecret('session:s1', 'demo/app', 'pw'), undefined);

    // activations: atomic counting against a maximum, also under concurrency
    const counts = await Promise.all(Array.from({ length: 6 }, () => store.countActivation('demo/app', 'w', 4)));
    assert.equal(counts.filter((c) => c !== false).length, 4);
    assert.equal(await store.countActivation('demo/app', 'other', undefined), 1);

    // protected volumes: first writer wins; the counter is compare-and-set, forward only, also under concurrency
    const vol = { policy: 'demo/app', workload: 'w', volume: 'data', version: 0, sealedKey: 'k1', createdAt: 1, updatedAt: 1 };
    assert.equal((await store.putVolumeIfAbsent(vol)).sealedKey, 'k1');
    assert.equal((await store.putVolumeIfAbsent({ ...vol, sealedKey: 'k2', version: 9 })).version, 0);
    assert.equal(await store.advanceVolume('demo/app', 'w', 'data', 0, 2 ** 40, 5), true, 'counters beyond 2^31');
    assert.equal(await store.advanceVolume('demo/app', 'w', 'data', 0, 3, 5), false);
    assert.equal(await store.advanceVolume('demo/app', 'w', 'data', 2 ** 40, 2 ** 40 - 1, 5), false);
    const raced = await Promise.all([1, 2, 3, 4].map((i) => store.advanceVolume('demo/app', 'w', 'data', 2 ** 40, 2 ** 40 + i, 6)));
    assert.equal(raced.filter(Boolean).length, 1);
    assert.deepEqual((await store.listVolumes('demo/app')).map((v) => v.volume), ['data']);
    assert.equal(await store.getVolume('demo/app', 'w', 'none'), undefined);
    await store.ping();
}

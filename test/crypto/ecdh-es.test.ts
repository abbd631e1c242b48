import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createECDH, randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { FlattenedEncrypt, exportJWK, flattenedDecrypt, generateKeyPair, importJWK } from 'jose';
import { CocoonError } from '../../src/errors.js';
import { decryptEcdhEs, encryptEcdhEs, generateEcdhKeyPair, isEcCurve } from '../../src/crypto/ecdh-es.js';
import type { EcCurve, EcPublicJwk, EcdhKeyPair, FlattenedJweObject } from '../../src/crypto/ecdh-es.js';

const CURVES: EcCurve[] = ['P-256', 'P-384', 'P-521'];
const COORD: Record<EcCurve, number> = { 'P-256': 32, 'P-384': 48, 'P-521': 66 };
const JOSE_OPTS = { keyManagementAlgorithms: ['ECDH-ES+A256KW'], contentEncryptionAlgorithms: ['A256GCM'] };

const b64u = (b: Uint8Array | string): string => Buffer.from(b).toString('base64url');
const unb64u = (s: string): Buffer => Buffer.from(s, 'base64url');
const header = (jwe: FlattenedJweObject): Record<string, unknown> => JSON.parse(unb64u(jwe.protected).toString('utf8')) as Record<string, unknown>;
const withHeader = (jwe: FlattenedJweObject, h: unknown): FlattenedJweObject => ({ ...jwe, protected: b64u(JSON.stringify(h)) });
/** Flips one bit of a base64url field's decoded bytes (not of its text: a final character's padding bits do not decode). */
const flip = (s: string, index = 0, bit = 0): string => {
  const b = unb64u(s);
  const i = index % b.length;
  b[i] = (b[i] as number) ^ (1 << bit % 8);
  return b64u(b);
};

/** Every representation of the secret material of a key pair, plus the plaintext: none may appear in an error. */
function secretsOf(key: EcdhKeyPair, plaintext?: Uint8Array): string[] {
  const d = key.ecdh.getPrivateKey();
  const out = [d.toString('hex'), d.toString('base64'), d.toString('base64url'), d.toString('latin1')];
  if (plaintext && plaintext.length >= 8) out.push(Buffer.from(plaintext).toString('hex'), Buffer.from(plaintext).toString('utf8'), b64u(plaintext));
  return out;
}

/** Asserts INPUT_MALFORMED with a message matching `reason`, free of key bytes (also along the cause chain). */
function assertMalformed(fn: () => unknown, reason: RegExp, secrets: string[] = []): CocoonError {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof CocoonError, `expected a CocoonError, got ${String(caught)}`);
  assert.equal(caught.code, 'INPUT_MALFORMED');
  assert.match(caught.message, reason);
  const texts: string[] = [];
  for (let e: unknown = caught, depth = 0; e instanceof Error && depth < 8; e = e.cause, depth++) texts.push(e.message, String(e.stack ?? ''));
  texts.push(JSON.stringify(caught.toJSON()));
  for (const s of secrets) for (const t of texts) assert.ok(!t.includes(s), `error text contains secret material: ${t}`);
  return caught;
}

async function joseRecipient(crv: EcCurve) {
  const { privateKey, publicKey } = await generateKeyPair('ECDH-ES+A256KW', { crv, extractable: true });
  const jwk = await exportJWK(publicKey);
  return { privateKey, publicJwk: { kty: 'EC', crv, x: jwk.x as string, y: jwk.y as string, alg: 'ECDH-ES+A256KW' } satisfies EcPublicJwk };
}

async function joseEncrypt(to: EcPublicJwk, plaintext: Uint8Array, params?: { apu?: Uint8Array; apv?: Uint8Array }): Promise<FlattenedJweObject> {
  const key = await importJWK({ kty: 'EC', crv: to.crv, x: to.x, y: to.y }, 'ECDH-ES+A256KW');
  const enc = new FlattenedEncrypt(plaintext).setProtectedHeader({ alg: 'ECDH-ES+A256KW', enc: 'A256GCM' });
  if (params) enc.setKeyManagementParameters(params);
  return (await enc.encrypt(key)) as FlattenedJweObject;
}

test('generateEcdhKeyPair: public JWK on each curve with full-length coordinates', () => {
  for (const crv of CURVES) {
    const k = generateEcdhKeyPair(crv);
    assert.equal(k.crv, crv);
    assert.deepEqual(Object.keys(k.publicJwk).sort(), ['crv', 'kty', 'x', 'y']);
    assert.equal(k.publicJwk.kty, 'EC');
    assert.equal(unb64u(k.publicJwk.x).length, COORD[crv]);
    assert.equal(unb64u(k.publicJwk.y).length, COORD[crv]);
    assert.equal(Buffer.concat([Buffer.from([4]), unb64u(k.publicJwk.x), unb64u(k.publicJwk.y)]).equals(k.ecdh.getPublicKey()), true);
  }
  assert.equal(generateEcdhKeyPair().crv, 'P-256');
  assert.equal(isEcCurve('P-256') && isEcCurve('P-521') && !isEcCurve('P-192') && !isEcCurve('secp256k1') && !isEcCurve(undefined), true);
});

for (const crv of CURVES) {
  test(`${crv}: our JWE decrypts with jose flattenedDecrypt, and with ours`, async () => {
    const { privateKey, publicJwk } = await joseRecipient(crv);
    for (const plaintext of [Buffer.alloc(0), Buffer.from('a'), randomBytes(64), randomBytes(70_000)]) {
      const jwe = encryptEcdhEs(publicJwk, plaintext);
      assert.deepEqual(Object.keys(jwe).sort(), ['ciphertext', 'encrypted_key', 'iv', 'protected', 'tag']);
      const h = header(jwe);
      assert.equal(h.alg, 'ECDH-ES+A256KW');
      assert.equal(h.enc, 'A256GCM');
      assert.equal((h.epk as Record<string, unknown>).crv, crv);
      const out = await flattenedDecrypt(jwe, privateKey, JOSE_OPTS);
      assert.equal(Buffer.from(out.plaintext).equals(plaintext), true);
    }
    const own = generateEcdhKeyPair(crv);
    const pt = randomBytes(33);
    assert.equal(decryptEcdhEs(encryptEcdhEs(own.publicJwk, pt), own).equals(pt), true);
  });

  test(`${crv}: jose FlattenedEncrypt output decrypts with ours`, async () => {
    const own = generateEcdhKeyPair(crv);
    for (const plaintext of [Buffer.alloc(0), randomBytes(1), randomBytes(64), randomBytes(70_000)]) {
      const jwe = await joseEncrypt(own.publicJwk, plaintext);
      assert.equal(decryptEcdhEs(jwe, own).equals(plaintext), true);
    }
  });
}

test('jose JWE with apu/apv (RFC 7518 §4.6.1.2-3) decrypts with ours; the KDF binds them', async () => {
  const own = generateEcdhKeyPair('P-256');
  const pt = randomBytes(40);
  const jwe = await joseEncrypt(own.publicJwk, pt, { apu: Buffer.from('Alice'), apv: Buffer.from('Bob') });
  assert.equal(header(jwe).apu, b64u('Alice'));
  assert.equal(decryptEcdhEs(jwe, own).equals(pt), true);
  // apu is authenticated as part of the protected header; and it enters the KEK derivation.
  assertMalformed(() => decryptEcdhEs(withHeader(jwe, { ...header(jwe), apu: b64u('Mallory') }), own), /key unwrap failed/);
  assertMalformed(() => decryptEcdhEs(withHeader(jwe, { ...header(jwe), apv: 'not+base64url' }), own), /apv must be base64url/);
  assertMalformed(() => decryptEcdhEs(withHeader(jwe, { ...header(jwe), apu: 7 }), own), /apu must be base64url/);
});

test('round trip for any plaintext and curve (property)', () => {
  const keys = Object.fromEntries(CURVES.map((c) => [c, generateEcdhKeyPair(c)])) as Record<EcCurve, EcdhKeyPair>;
  fc.assert(
    fc.property(fc.constantFrom(...CURVES), fc.uint8Array({ maxLength: 2048 }), (crv, pt) => decryptEcdhEs(encryptEcdhEs(keys[crv].publicJwk, pt), keys[crv]).equals(Buffer.from(pt))),
    { numRuns: 60 },
  );
});

test('each JWE has a fresh ephemeral key, CEK and IV', () => {
  const own = generateEcdhKeyPair('P-256');
  const a = encryptEcdhEs(own.publicJwk, Buffer.from('same'));
  const b = encryptEcdhEs(own.publicJwk, Buffer.from('same'));
  assert.notEqual(a.protected, b.protected);
  assert.notEqual(a.iv, b.iv);
  assert.notEqual(a.encrypted_key, b.encrypted_key);
  assert.notEqual(a.ciphertext, b.ciphertext);
});

test('tampered ciphertext, tag or iv: GCM authentication fails', () => {
  const own = generateEcdhKeyPair('P-256');
  const pt = randomBytes(64);
  const jwe = encryptEcdhEs(own.publicJwk, pt);
  const secrets = secretsOf(own, pt);
  for (const field of ['ciphertext', 'tag', 'iv'] as const) {
    for (const index of [0, 5, 1000]) assertMalformed(() => decryptEcdhEs({ ...jwe, [field]: flip(jwe[field], index, index) }, own), /authentication failed/, secrets);
  }
  // Truncated / extended ciphertext.
  assertMalformed(() => decryptEcdhEs({ ...jwe, ciphertext: b64u(unb64u(jwe.ciphertext).subarray(1)) }, own), /authentication failed/, secrets);
  assertMalformed(() => decryptEcdhEs({ ...jwe, ciphertext: b64u(Buffer.concat([unb64u(jwe.ciphertext), Buffer.alloc(1)])) }, own), /authentication failed/, secrets);
  // A swapped tag from another JWE to the same key.
  const other = encryptEcdhEs(own.publicJwk, pt);
  assertMalformed(() => decryptEcdhEs({ ...jwe, tag: other.tag }, own), /authentication failed/, secrets);
});

test('tampered encrypted_key: AES key unwrap fails', () => {
  const own = generateEcdhKeyPair('P-384');
  const pt = randomBytes(64);
  const jwe = encryptEcdhEs(own.publicJwk, pt);
  for (const index of [0, 7, 8, 39]) assertMalformed(() => decryptEcdhEs({ ...jwe, encrypted_key: flip(jwe.encrypted_key, index, 3) }, own), /key unwrap failed/, secretsOf(own, pt));
});

test('tampered protected header: alg/enc changed, epk replaced, a member added', () => {
  const own = generateEcdhKeyPair('P-256');
  const pt = randomBytes(64);
  const jwe = encryptEcdhEs(own.publicJwk, pt);
  const h = header(jwe);
  const secrets = secretsOf(own, pt);
  for (const alg of ['ECDH-ES', 'ECDH-ES+A128KW', 'RSA-OAEP-256', 'dir', undefined, 1]) assertMalformed(() => decryptEcdhEs(withHeader(jwe, { ...h, alg }), own), /must be ECDH-ES\+A256KW with A256GCM/, secrets);
  for (const enc of ['A128GCM', 'A256CBC-HS512', undefined]) assertMalformed(() => decryptEcdhEs(withHeader(jwe, { ...h, enc }), own), /must be ECDH-ES\+A256KW with A256GCM/, secrets);
  // Another valid point on the curve: a different Z, so a different KEK.
  const other = generateEcdhKeyPair('P-256').publicJwk;
  assertMalformed(() => decryptEcdhEs(withHeader(jwe, { ...h, epk: { kty: 'EC', crv: 'P-256', x: other.x, y: other.y } }), own), /key unwrap failed/, secrets);
  // A harmless extra member still changes the AAD.
  assertMalformed(() => decryptEcdhEs(withHeader(jwe, { ...h, kid: 'x' }), own), /authentication failed/, secrets);
  // The same header, re-serialised differently (member order): the AAD is the exact text.
  const reordered = { epk: h.epk, enc: h.enc, alg: h.alg };
  assertMalformed(() => decryptEcdhEs(withHeader(jwe, reordered), own), /authentication failed/, secrets);
  // Not JSON / not an object / not base64url.
  assertMalformed(() => decryptEcdhEs({ ...jwe, protected: b64u('{"alg":') }, own), /protected header is not JSON/, secrets);
  for (const v of [null, [], 'str', 5]) assertMalformed(() => decryptEcdhEs(withHeader(jwe, v), own), /protected header must be an object/, secrets);
  for (const p of [`${jwe.protected}=`, jwe.protected.replace(/^./, '+'), 5, undefined]) assertMalformed(() => decryptEcdhEs({ ...jwe, protected: p as string }, own), /protected header must be base64url/, secrets);
});

test('tampering anywhere fails closed (property)', () => {
  const own = generateEcdhKeyPair('P-256');
  const pt = randomBytes(64);
  const jwe = encryptEcdhEs(own.publicJwk, pt);
  const secrets = secretsOf(own, pt);
  fc.assert(
    fc.property(fc.constantFrom('protected', 'encrypted_key', 'iv', 'ciphertext', 'tag'), fc.nat(), fc.nat(7), (field, index, bit) => {
      const bad = { ...jwe, [field]: flip(jwe[field as keyof FlattenedJweObject], index, bit) };
      assertMalformed(() => decryptEcdhEs(bad, own), /./, secrets);
    }),
    { numRuns: 300 },
  );
});

test('wrong private key: key unwrap fails, no key bytes in the error', () => {
  for (const crv of CURVES) {
    const own = generateEcdhKeyPair(crv);
    const wrong = generateEcdhKeyPair(crv);
    const pt = randomBytes(64);
    const err = assertMalformed(() => decryptEcdhEs(encryptEcdhEs(own.publicJwk, pt), wrong), /does not decrypt with this key \(key unwrap failed\)/, [...secretsOf(own, pt), ...secretsOf(wrong)]);
    assert.doesNotMatch(err.message, /[0-9a-f]{16}|[A-Za-z0-9_-]{32}/);
  }
});

test('epk on another curve than the key is refused before any ECDH', () => {
  const own = generateEcdhKeyPair('P-256');
  for (const crv of ['P-384', 'P-521'] as const) {
    const jwe = encryptEcdhEs(generateEcdhKeyPair(crv).publicJwk, Buffer.from('x'));
    assertMalformed(() => decryptEcdhEs(jwe, own), new RegExp(`epk is on ${crv}, the key is on P-256`), secretsOf(own));
  }
  // A P-384 point labelled P-256: its coordinates have the wrong length for the label.
  const jwe = encryptEcdhEs(own.publicJwk, Buffer.from('x'));
  const p384 = generateEcdhKeyPair('P-384').publicJwk;
  assertMalformed(() => decryptEcdhEs(withHeader(jwe, { ...header(jwe), epk: { kty: 'EC', crv: 'P-256', x: p384.x, y: p384.y } }), own), /32-byte P-256 coordinates/, secretsOf(own));
  for (const crv of ['P-192', 'secp256k1', 'X25519', undefined]) assertMalformed(() => decryptEcdhEs(withHeader(jwe, { ...header(jwe), epk: { ...(header(jwe).epk as object), crv } }), own), /curve must be P-256, P-384 or P-521/);
  for (const epk of [undefined, null, 'epk', { ...(header(jwe).epk as object), kty: 'OKP' }, { ...(header(jwe).epk as object), kty: undefined }]) {
    assertMalformed(() => decryptEcdhEs(withHeader(jwe, { ...header(jwe), epk }), own), /epk must be an EC public key/);
  }
});

test('invalid-curve attack: an epk not on the curve is refused by the ECDH (decrypt), likewise a recipient key (encrypt)', () => {
  for (const crv of CURVES) {
    const own = generateEcdhKeyPair(crv);
    const pt = randomBytes(64);
    const jwe = encryptEcdhEs(own.publicJwk, pt);
    const h = header(jwe);
    const epk = h.epk as { x: string; y: string };
    for (const [c, index] of [['x', 0], ['x', COORD[crv] - 1], ['y', 5], ['y', COORD[crv] - 1]] as const) {
      const bad = { ...epk, [c]: flip(epk[c], index, 0) };
      assertMalformed(() => decryptEcdhEs(withHeader(jwe, { ...h, epk: bad }), own), /JWE epk: not a valid point on the curve/, secretsOf(own, pt));
      assertMalformed(() => encryptEcdhEs({ ...own.publicJwk, [c]: flip(own.publicJwk[c], index, 0) }, pt), /recipient key: not a valid point on the curve/, [b64u(pt)]);
    }
    // Coordinates ≥ p (all 0xff) and the all-zero point.
    for (const fill of [0xff, 0x00]) {
      const v = b64u(Buffer.alloc(COORD[crv], fill));
      assertMalformed(() => decryptEcdhEs(withHeader(jwe, { ...h, epk: { ...epk, x: v } }), own), /not a valid point on the curve/);
      assertMalformed(() => decryptEcdhEs(withHeader(jwe, { ...h, epk: { ...epk, x: v, y: v } }), own), /not a valid point on the curve/);
    }
  }
  // Random coordinate pairs of the right length are (overwhelmingly) not on the curve.
  const own = generateEcdhKeyPair('P-256');
  const jwe = encryptEcdhEs(own.publicJwk, Buffer.from('x'));
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 32, maxLength: 32 }), fc.uint8Array({ minLength: 32, maxLength: 32 }), (x, y) => {
      assertMalformed(() => decryptEcdhEs(withHeader(jwe, { ...header(jwe), epk: { kty: 'EC', crv: 'P-256', x: b64u(x), y: b64u(y) } }), own), /not a valid point on the curve/);
    }),
    { numRuns: 100 },
  );
});

test('a point on the curve, sent in uncompressed form, is what ECDH checks — sanity of the negative test above', () => {
  const own = generateEcdhKeyPair('P-256');
  const e = createECDH('prime256v1');
  e.generateKeys();
  assert.equal(own.ecdh.computeSecret(e.getPublicKey()).length, 32);
  assert.throws(() => own.ecdh.computeSecret(Buffer.concat([Buffer.from([4]), Buffer.alloc(64, 0xff)])));
});

test('wrong coordinate lengths or encodings (epk and recipient key)', () => {
  for (const crv of CURVES) {
    const own = generateEcdhKeyPair(crv);
    const jwe = encryptEcdhEs(own.publicJwk, Buffer.from('x'));
    const h = header(jwe);
    const epk = h.epk as { x: string; y: string };
    const n = COORD[crv];
    const re = new RegExp(`x and y must be ${n}-byte ${crv} coordinates`);
    const variants = [b64u(unb64u(epk.x).subarray(1)), b64u(Buffer.concat([Buffer.alloc(1), unb64u(epk.x)])), '', `${epk.x}=`, epk.x.replace(/^./, '+'), 5, null, undefined];
    for (const v of variants) {
      assertMalformed(() => decryptEcdhEs(withHeader(jwe, { ...h, epk: { ...epk, x: v } }), own), re);
      assertMalformed(() => decryptEcdhEs(withHeader(jwe, { ...h, epk: { ...epk, y: v } }), own), re);
      assertMalformed(() => encryptEcdhEs({ ...own.publicJwk, x: v as string }, Buffer.from('x')), re);
    }
  }
  assertMalformed(() => encryptEcdhEs({ kty: 'EC', crv: 'P-192' as EcCurve, x: b64u(Buffer.alloc(24)), y: b64u(Buffer.alloc(24)) }, Buffer.from('x')), /recipient key: curve must be P-256, P-384 or P-521/);
});

test('wrong encrypted_key, iv or tag lengths; non-base64url fields', () => {
  const own = generateEcdhKeyPair('P-256');
  const jwe = encryptEcdhEs(own.publicJwk, Buffer.from('x'));
  const wrongLength = /encrypted_key, iv or tag has the wrong length/;
  assertMalformed(() => decryptEcdhEs({ ...jwe, encrypted_key: b64u(randomBytes(32)) }, own), wrongLength);
  assertMalformed(() => decryptEcdhEs({ ...jwe, encrypted_key: b64u(randomBytes(48)) }, own), wrongLength);
  assertMalformed(() => decryptEcdhEs({ ...jwe, iv: b64u(randomBytes(16)) }, own), wrongLength);
  assertMalformed(() => decryptEcdhEs({ ...jwe, iv: '' }, own), wrongLength);
  assertMalformed(() => decryptEcdhEs({ ...jwe, tag: b64u(randomBytes(12)) }, own), wrongLength);
  assertMalformed(() => decryptEcdhEs({ ...jwe, tag: b64u(randomBytes(8)) }, own), wrongLength);
  for (const field of ['encrypted_key', 'iv', 'ciphertext', 'tag'] as const) {
    for (const v of [`${jwe[field]}=`, `${jwe[field]}.`, `+${jwe[field]}`, 5, null, undefined, ['a']]) assertMalformed(() => decryptEcdhEs({ ...jwe, [field]: v }, own), new RegExp(`JWE ${field} must be base64url`));
  }
});

test('extra JWE members (aad, header, unprotected, recipients …) are refused', () => {
  const own = generateEcdhKeyPair('P-256');
  const jwe = encryptEcdhEs(own.publicJwk, Buffer.from('x'));
  for (const [k, v] of [['aad', b64u('x')], ['header', { kid: 'a' }], ['unprotected', { kid: 'a' }], ['recipients', []], ['encrypted_key2', '']] as const) {
    assertMalformed(() => decryptEcdhEs({ ...jwe, [k]: v }, own), new RegExp(`JWE member "${k}" is not supported`));
  }
  // An attacker-chosen member name is bounded in the message.
  const err = assertMalformed(() => decryptEcdhEs({ ...jwe, ['z'.repeat(10_000)]: 1 }, own), /is not supported/);
  assert.ok(err.message.length < 200);
  // A missing member is refused too.
  const missing = { ...jwe } as Partial<FlattenedJweObject>;
  delete missing.tag;
  assertMalformed(() => decryptEcdhEs(missing, own), /JWE tag must be base64url/);
});

test('zip and crit in the protected header are refused', () => {
  const own = generateEcdhKeyPair('P-256');
  const jwe = encryptEcdhEs(own.publicJwk, Buffer.from('x'));
  const h = header(jwe);
  assertMalformed(() => decryptEcdhEs(withHeader(jwe, { ...h, zip: 'DEF' }), own), /zip\/crit are not supported/);
  assertMalformed(() => decryptEcdhEs(withHeader(jwe, { ...h, crit: ['exp'], exp: 1 }), own), /zip\/crit are not supported/);
  assertMalformed(() => decryptEcdhEs(withHeader(jwe, { ...h, crit: [] }), own), /zip\/crit are not supported/);
});

test('oversized fields are refused before decoding', () => {
  const own = generateEcdhKeyPair('P-256');
  const jwe = encryptEcdhEs(own.publicJwk, Buffer.from('x'));
  const h = header(jwe);
  assertMalformed(() => decryptEcdhEs(withHeader(jwe, { ...h, kid: 'k'.repeat(1000) }), own), /protected header must be base64url/);
  assertMalformed(() => decryptEcdhEs({ ...jwe, encrypted_key: 'A'.repeat(65) }, own), /encrypted_key must be base64url/);
  assertMalformed(() => decryptEcdhEs({ ...jwe, iv: 'A'.repeat(33) }, own), /iv must be base64url/);
  assertMalformed(() => decryptEcdhEs({ ...jwe, tag: 'A'.repeat(33) }, own), /tag must be base64url/);
  assertMalformed(() => decryptEcdhEs({ ...jwe, ciphertext: 'A'.repeat(64 * 1024 * 1024 + 1) }, own), /ciphertext must be base64url/);
});

test('non-object input', () => {
  const own = generateEcdhKeyPair('P-256');
  for (const v of [null, undefined, 'a.b.c.d.e', 42, true, [], [encryptEcdhEs(own.publicJwk, Buffer.from('x'))]]) assertMalformed(() => decryptEcdhEs(v, own), /JWE must be a JSON object/);
  assertMalformed(() => decryptEcdhEs({}, own), /protected header must be base64url/);
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import {
  ANNOTATION_PROVIDER_COCOON,
  ANNOTATION_PUBOPTS,
  KekWrapper,
  LayerDecryptStream,
  LayerEncryptStream,
  decodePublicOptions,
  decodePrivateOptions,
  deriveLayerKey,
  encodePrivateOptions,
  encryptionAnnotations,
  unwrapPrivateOptions,
  verifyLayerHmac,
  CIPHER_AES_CTR_HMAC,
} from '../../src/image/ocicrypt.js';
import { streamToBuffer } from './helpers.js';

const DIFF = `sha256:${'1'.repeat(64)}`;
const BLOB = `sha256:${'2'.repeat(64)}`;

function chunks(buf: Buffer, size: number): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < buf.length; i += size) out.push(buf.subarray(i, i + size));
  return out;
}

async function encrypt(plain: Buffer, key: Buffer, nonce: Buffer): Promise<{ ct: Buffer; hmac: Buffer }> {
  const enc = new LayerEncryptStream(key, nonce);
  const ct = await streamToBuffer(Readable.from(chunks(plain, 7777)).pipe(enc));
  return { ct, hmac: enc.hmac };
}

test('encrypt/decrypt round trip, HMAC over the ciphertext', async () => {
  const { symkey, nonce } = deriveLayerKey(randomBytes(32), DIFF, BLOB);
  const plain = randomBytes(200_003);
  const { ct, hmac } = await encrypt(plain, symkey, nonce);
  assert.equal(ct.length, plain.length);
  assert.notDeepEqual(ct, plain);
  await verifyLayerHmac(Readable.from(chunks(ct, 1000)), { symkey, hmac });
  const back = await streamToBuffer(Readable.from(chunks(ct, 4096)).pipe(new LayerDecryptStream(symkey, nonce, hmac)));
  assert.deepEqual(back, plain);
});

test('a tampered ciphertext byte fails: LAYER_AUTH_FAILED (verify pass and decrypt stream)', async () => {
  const { symkey, nonce } = deriveLayerKey(randomBytes(32), DIFF, BLOB);
  const { ct, hmac } = await encrypt(randomBytes(50_000), symkey, nonce);
  ct[12345] = (ct[12345] ?? 0) ^ 1;
  await assert.rejects(verifyLayerHmac(Readable.from([ct]), { symkey, hmac }), { code: 'LAYER_AUTH_FAILED' });
  await assert.rejects(streamToBuffer(Readable.from([ct]).pipe(new LayerDecryptStream(symkey, nonce, hmac))), { code: 'LAYER_AUTH_FAILED' });
  const truncated = ct.subarray(0, ct.length - 1);
  await assert.rejects(verifyLayerHmac(Readable.from([truncated]), { symkey, hmac }), { code: 'LAYER_AUTH_FAILED' });
});

test('key derivation is deterministic and distinct per layer and blob', () => {
  const kek = randomBytes(32);
  assert.deepEqual(deriveLayerKey(kek, DIFF, BLOB), deriveLayerKey(kek, DIFF, BLOB));
  assert.notDeepEqual(deriveLayerKey(kek, DIFF, BLOB).symkey, deriveLayerKey(kek, DIFF, DIFF).symkey);
  assert.notDeepEqual(deriveLayerKey(kek, DIFF, BLOB).nonce, deriveLayerKey(randomBytes(32), DIFF, BLOB).nonce);
  assert.throws(() => deriveLayerKey(randomBytes(16), DIFF, BLOB), { code: 'BAD_USAGE' });
});

test('options JSON has ocicrypt field names and order', async () => {
  const symkey = Buffer.alloc(32, 1);
  const nonce = Buffer.alloc(16, 2);
  const priv = encodePrivateOptions({ symkey, nonce, digest: BLOB });
  assert.equal(priv.toString(), `{"symkey":"${symkey.toString('base64')}","digest":"${BLOB}","cipheroptions":{"nonce":"${nonce.toString('base64')}"}}`);
  assert.deepEqual(decodePrivateOptions(priv), { symkey, nonce, digest: BLOB });
  const ann = await encryptionAnnotations([new KekWrapper(Buffer.alloc(32, 3), 'kbs:///demo/redis/layer-key')], { symkey, nonce, digest: BLOB }, { cipher: CIPHER_AES_CTR_HMAC, hmac: Buffer.alloc(32, 4) });
  const pub = JSON.parse(Buffer.from(ann[ANNOTATION_PUBOPTS] ?? '', 'base64').toString()) as Record<string, unknown>;
  assert.deepEqual(Object.keys(pub), ['cipher', 'hmac', 'cipheroptions']);
  assert.deepEqual(pub, { cipher: 'AES_256_CTR_HMAC_SHA256', hmac: Buffer.alloc(32, 4).toString('base64'), cipheroptions: {} });
  assert.deepEqual(decodePublicOptions(ann[ANNOTATION_PUBOPTS] ?? '').hmac, Buffer.alloc(32, 4));
  const prov = JSON.parse(Buffer.from(ann[ANNOTATION_PROVIDER_COCOON] ?? '', 'base64').toString()) as Record<string, string>;
  assert.deepEqual(Object.keys(prov).sort(), ['iv', 'kid', 'wrap_type', 'wrapped_data']);
  assert.equal(prov.kid, 'kbs:///demo/redis/layer-key');
  assert.equal(prov.wrap_type, 'A256GCM');
  assert.equal(Buffer.from(prov.iv ?? '', 'base64').length, 12);
});

test('KEK unwrap: right key opens, wrong key is LAYER_DECRYPT_FAILED', async () => {
  const kek = randomBytes(32);
  const priv = { symkey: randomBytes(32), nonce: randomBytes(16), digest: BLOB };
  const ann = await encryptionAnnotations([new KekWrapper(kek, 'kbs:///a/b/c')], priv, { cipher: CIPHER_AES_CTR_HMAC, hmac: randomBytes(32) });
  assert.deepEqual(await unwrapPrivateOptions(ann, new KekWrapper(kek, 'kbs:///a/b/c')), priv);
  await assert.rejects(unwrapPrivateOptions(ann, new KekWrapper(randomBytes(32), 'kbs:///a/b/c')), { code: 'LAYER_DECRYPT_FAILED' });
  await assert.rejects(unwrapPrivateOptions({}, new KekWrapper(kek, 'kbs:///a/b/c')), { code: 'LAYER_DECRYPT_FAILED' });
  // deterministic: same inputs, same annotation
  const again = await encryptionAnnotations([new KekWrapper(kek, 'kbs:///a/b/c')], priv, { cipher: CIPHER_AES_CTR_HMAC, hmac: Buffer.alloc(32) });
  assert.equal(again[ANNOTATION_PROVIDER_COCOON], ann[ANNOTATION_PROVIDER_COCOON]);
});

test('ciphertext is plain AES-256-CTR with the 16-byte nonce as initial counter block (ocicrypt compatible)', async () => {
  const { createCipheriv, createHmac } = await import('node:crypto');
  const key = randomBytes(32);
  const nonce = Buffer.from('00000000000000000000000000fffffe', 'hex');
  const plain = randomBytes(100);
  const { ct, hmac } = await encrypt(plain, key, nonce);
  const c = createCipheriv('aes-256-ctr', key, nonce);
  const expect = Buffer.concat([c.update(plain), c.final()]);
  assert.deepEqual(ct, expect);
  assert.deepEqual(hmac, createHmac('sha256', key).update(expect).digest());
});

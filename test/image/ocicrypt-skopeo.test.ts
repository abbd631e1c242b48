import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { generateKeyPairSync, randomBytes, type KeyObject } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { promisify } from 'node:util';
import { FlattenedEncrypt, flattenedDecrypt, type FlattenedJWE } from 'jose';
import { LayoutWriter, openBlobStream, readLayout, sink } from '../../src/image/layout.js';
import { MediaType } from '../../src/image/oci.js';
import {
  ANNOTATION_PUBOPTS,
  CIPHER_AES_CTR_HMAC,
  LayerDecryptStream,
  LayerEncryptStream,
  decodePublicOptions,
  encodePrivateOptions,
  encryptionAnnotations,
  unwrapPrivateOptions,
  verifyLayerHmac,
  type KeyWrapper,
} from '../../src/image/ocicrypt.js';
import { HashTap } from '../../src/image/streams.js';
import { makeAppTree, tarOf, tempDir, writeSourceImage } from './helpers.js';

const run = promisify(execFile);

/** Minimal single-recipient JWE wrapper (what skopeo writes for one key), test-local. */
function jweWrapper(pub: KeyObject, priv: KeyObject): KeyWrapper {
  return {
    annotation: 'org.opencontainers.image.enc.keys.jwe',
    async wrap(optsData) {
      const jwe = await new FlattenedEncrypt(optsData).setProtectedHeader({ alg: 'RSA-OAEP', enc: 'A256GCM' }).encrypt(pub);
      return Buffer.from(JSON.stringify(jwe)).toString('base64');
    },
    async unwrap(value) {
      const jwe = JSON.parse(Buffer.from(value, 'base64').toString()) as FlattenedJWE;
      return Buffer.from((await flattenedDecrypt(jwe, priv)).plaintext);
    },
  };
}

async function skopeoAvailable(): Promise<boolean> {
  return run('skopeo', ['--version']).then(
    () => true,
    () => false,
  );
}

test('interop with skopeo (ocicrypt): both directions of the layer cipher and options', async (t) => {
  if (!(await skopeoAvailable())) {
    t.skip('SKIPPED: skopeo is not installed');
    return;
  }
  const dir = await tempDir(t);
  const { publicKey, privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  await writeFile(join(dir, 'pub.pem'), publicKey.export({ type: 'spki', format: 'pem' }));
  await writeFile(join(dir, 'priv.pem'), privateKey.export({ type: 'pkcs8', format: 'pem' }));
  const app = join(dir, 'app');
  await makeAppTree(app);
  const plainLayout = join(dir, 'plain');
  await writeSourceImage(plainLayout, { ref: 'app:1', layers: [{ kind: 'gzip', tar: await tarOf(app) }] });
  const plain = await readLayout(plainLayout, 'app:1');
  const layer = plain.manifest.layers[0];
  assert.ok(layer);
  const wrapper = jweWrapper(publicKey, privateKey);

  // skopeo encrypts → Cocoon decrypts
  await run('skopeo', ['copy', '--quiet', '--encryption-key', `jwe:${join(dir, 'pub.pem')}`, `oci:${plainLayout}:app:1`, `oci:${join(dir, 'sk-enc')}:app:1`]);
  const skEnc = await readLayout(join(dir, 'sk-enc'), 'app:1');
  const encLayer = skEnc.manifest.layers[0];
  assert.ok(encLayer);
  assert.equal(encLayer.mediaType, 'application/vnd.oci.image.layer.v1.tar+gzip+encrypted');
  const priv = await unwrapPrivateOptions(encLayer.annotations, wrapper);
  assert.equal(priv.digest, layer.digest, 'private digest = the unencrypted blob digest');
  const pub = decodePublicOptions(encLayer.annotations?.[ANNOTATION_PUBOPTS] ?? '');
  await verifyLayerHmac(openBlobStream(skEnc.layoutDir, encLayer), { symkey: priv.symkey, hmac: pub.hmac });
  const tap = new HashTap();
  await pipeline(openBlobStream(skEnc.layoutDir, encLayer), new LayerDecryptStream(priv.symkey, priv.nonce, pub.hmac), tap, sink());
  assert.equal(tap.digest, layer.digest);
  assert.equal(encLayer.annotations?.[ANNOTATION_PUBOPTS] !== undefined, true);
  const skPrivJson = await wrapper.unwrap(encLayer.annotations?.['org.opencontainers.image.enc.keys.jwe'] ?? '');
  assert.deepEqual(encodePrivateOptions(priv), skPrivJson, 'byte-identical private options JSON');

  // Cocoon encrypts → skopeo decrypts to the original blob
  const oursDir = join(dir, 'ours');
  const w = await LayoutWriter.open(oursDir);
  const symkey = randomBytes(32);
  const nonce = randomBytes(16);
  const enc = new LayerEncryptStream(symkey, nonce);
  const plainTap = new HashTap();
  const blob = await w.putStream(openBlobStream(plainLayout, layer).pipe(plainTap).pipe(enc));
  const annotations = await encryptionAnnotations([wrapper], { symkey, nonce, digest: plainTap.digest }, { cipher: CIPHER_AES_CTR_HMAC, hmac: enc.hmac });
  const cfg = await w.putBytes(Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: plain.config.rootfs })), MediaType.config);
  const manifest = { schemaVersion: 2, mediaType: MediaType.manifest, config: cfg, layers: [{ mediaType: `${MediaType.layerGzip}+encrypted`, digest: blob.digest, size: blob.size, annotations }] };
  const md = await w.putBytes(Buffer.from(JSON.stringify(manifest)), MediaType.manifest, { 'org.opencontainers.image.ref.name': 'app:1' });
  await w.writeIndex([md]);
  await run('skopeo', ['copy', '--quiet', '--decryption-key', join(dir, 'priv.pem'), `oci:${oursDir}:app:1`, `oci:${join(dir, 'dec')}:app:1`]);
  const dec = await readLayout(join(dir, 'dec'), 'app:1');
  assert.equal(dec.manifest.layers[0]?.digest, layer.digest);
  assert.equal(dec.manifest.layers[0]?.mediaType, MediaType.layerGzip);
});

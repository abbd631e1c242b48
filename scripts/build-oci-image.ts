/**
 * Turns a root filesystem directory into a one-layer OCI image layout, with Cocoon's
 * deterministic tar writer and layout writer. Called by scripts/build-test-image.sh:
 *
 *   node --import tsx scripts/build-oci-image.ts SPEC.json
 *
 * SPEC: {"rootfs","out","ref","architecture"?,"owners"?:{"<rel path>":[uid,gid]},"config":{…OCI config.config…}}
 * Every path is owned by root:root unless listed in `owners`, so the result does not depend
 * on who ran dpkg -x. Prints the manifest digest.
 */
import { readFileSync } from 'node:fs';
import { CocoonError } from '../src/errors.js';
import { LayoutWriter } from '../src/image/layout.js';
import { ANNOTATION_REF_NAME, MediaType, type ContainerConfig, type ImageConfig } from '../src/image/oci.js';
import { HashTap, chain } from '../src/image/streams.js';
import { deterministicGzip, tarDirectory } from '../src/image/tar.js';

interface Spec {
  rootfs: string;
  out: string;
  ref: string;
  architecture: string;
  owners: Record<string, [number, number]>;
  config: ContainerConfig;
}

function parseSpec(raw: unknown): Spec {
  const o = raw as Partial<Spec> | null;
  if (!o || typeof o.rootfs !== 'string' || typeof o.out !== 'string' || typeof o.ref !== 'string' || typeof o.config !== 'object' || o.config === null) {
    throw new CocoonError('BAD_USAGE', 'spec needs rootfs, out, ref and config');
  }
  const owners = o.owners ?? {};
  for (const [k, v] of Object.entries(owners)) {
    if (!Array.isArray(v) || v.length !== 2 || !v.every((n) => Number.isInteger(n) && n >= 0)) throw new CocoonError('BAD_USAGE', `owners.${k} must be [uid, gid]`);
  }
  return { rootfs: o.rootfs, out: o.out, ref: o.ref, architecture: o.architecture ?? 'amd64', owners, config: o.config };
}

async function main(): Promise<void> {
  const specPath = process.argv[2];
  if (!specPath) throw new CocoonError('BAD_USAGE', 'usage: build-oci-image.ts SPEC.json');
  const spec = parseSpec(JSON.parse(readFileSync(specPath, 'utf8')));
  const writer = await LayoutWriter.open(spec.out);
  const diff = new HashTap();
  const tarStream = tarDirectory(spec.rootfs, {
    ownerFor: (rel) => {
      const o = spec.owners[rel];
      return o ? { uid: o[0], gid: o[1] } : { uid: 0, gid: 0 };
    },
  });
  const layer = await writer.putStream(chain(tarStream, diff, deterministicGzip()));
  const config: ImageConfig = { architecture: spec.architecture, os: 'linux', config: spec.config, rootfs: { type: 'layers', diff_ids: [diff.digest] } };
  const configDesc = await writer.putBytes(Buffer.from(JSON.stringify(config)), MediaType.config);
  const manifest = { schemaVersion: 2, mediaType: MediaType.manifest, config: configDesc, layers: [{ mediaType: MediaType.layerGzip, digest: layer.digest, size: layer.size }] };
  const manifestDesc = await writer.putBytes(Buffer.from(JSON.stringify(manifest)), MediaType.manifest);
  await writer.writeIndex([{ ...manifestDesc, platform: { architecture: spec.architecture, os: 'linux' }, annotations: { [ANNOTATION_REF_NAME]: spec.ref } }], { merge: false });
  process.stdout.write(`${manifestDesc.digest}\n`);
}

main().catch((err: unknown) => {
  const e = err instanceof CocoonError ? err : new CocoonError('INTERNAL', (err as Error).message);
  process.stderr.write(`build-oci-image: ${e.code}: ${e.message}\n`);
  process.exit(1);
});

import { link, copyFile } from 'node:fs/promises';
import { LayoutWriter, blobPath, readLayout } from '../../image/layout.js';
import { ANNOTATION_REF_NAME, MediaType } from '../../image/oci.js';

/**
 * Writes a copy of an image whose config differs by one env var: what an attacker who changed
 * the image (or a careless rebuild) would produce. Layers are hard-linked, not copied.
 */
export async function writeModifiedImage(sourceDir: string, sourceRef: string | undefined, destDir: string, extraEnv: string): Promise<void> {
  const img = await readLayout(sourceDir, sourceRef);
  const writer = await LayoutWriter.open(destDir);
  for (const layer of img.manifest.layers) {
    await link(blobPath(sourceDir, layer.digest), blobPath(destDir, layer.digest)).catch(() => copyFile(blobPath(sourceDir, layer.digest), blobPath(destDir, layer.digest)));
  }
  const config = structuredClone(img.config);
  config.config = { ...(config.config ?? {}), Env: [...(config.config?.Env ?? []), extraEnv] };
  const configDesc = await writer.putBytes(Buffer.from(JSON.stringify(config)), MediaType.config);
  const manifest = { ...img.manifest, config: configDesc };
  const manifestDesc = await writer.putBytes(Buffer.from(JSON.stringify(manifest)), MediaType.manifest);
  await writer.writeIndex([{ ...manifestDesc, annotations: { [ANNOTATION_REF_NAME]: 'modified' } }], { merge: false });
}

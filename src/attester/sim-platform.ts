import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ECDSA_P256, createSelfSignedCa, exportPrivateKeyPem, issueLeafCertificate } from '../crypto/x509.js';
import { SIM_PLATFORM_FILES } from './sim.js';

/**
 * Creates a sim root and one platform key under `dir` (root private key is not kept: the
 * "manufacturer" only certifies this one platform). Returns the root PEM the KBS must trust.
 * The platform key is P-256 (reports signed ES256): a P-384 report signature cost both sides
 * about 0.5 ms per attestation, a third of the KBS's CPU per RCAR round trip; P-384 platforms
 * made by earlier versions still verify.
 */
export async function createSimPlatform(dir: string, name = 'cocoon-sim-platform'): Promise<{ rootPem: string; platformDir: string }> {
  const root = await createSelfSignedCa('CN=Cocoon simulated TEE root (INSECURE)', 3650);
  const platform = await issueLeafCertificate(root, `CN=${name} (INSECURE)`, 3650, ECDSA_P256);
  const platformDir = join(dir, 'platform');
  await mkdir(platformDir, { recursive: true, mode: 0o700 });
  const rootPem = root.cert.toString('pem');
  await writeFile(join(dir, SIM_PLATFORM_FILES.root), rootPem, { mode: 0o644 });
  await writeFile(join(platformDir, SIM_PLATFORM_FILES.root), rootPem, { mode: 0o644 });
  await writeFile(join(platformDir, SIM_PLATFORM_FILES.cert), platform.cert.toString('pem'), { mode: 0o644 });
  await writeFile(join(platformDir, SIM_PLATFORM_FILES.key), await exportPrivateKeyPem(platform.keys.privateKey), { mode: 0o600 });
  return { rootPem, platformDir };
}

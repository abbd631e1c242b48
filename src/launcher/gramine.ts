import { randomBytes } from 'node:crypto';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { CocoonError } from '../errors.js';
import { GRAMINE_ROOT_KEY_NAME } from '../image/gramine.js';
import type { TeeKind } from '../attestation/types.js';

/**
 * The launcher's Gramine mode (COCOON_LIBOS=gramine, set only by the manifest that
 * `cocoon wrap --libos gramine` writes): the enclave's measurement (MRENCLAVE) covers the
 * manifest, the manifest fixes the expected workload measurement, and the application root is
 * an `encrypted` mount whose key the launcher chooses inside the enclave.
 */

/** Size of a Gramine encrypted-files key (/dev/attestation/keys/<name>: 16 raw bytes). */
export const GRAMINE_KEY_BYTES = 16;

/**
 * Before attesting: the manifest's measurement must be the one just recomputed from the
 * (trusted-file) payload, and the TEE must be SGX. Refuses with MEASUREMENT_MISMATCH /
 * TEE_UNSUPPORTED.
 */
export function checkGramineLaunch(expected: string | undefined, measurement: string, tee: TeeKind): void {
  if (expected === undefined || !/^[0-9a-f]{96}$/.test(expected)) {
    throw new CocoonError('MEASUREMENT_MISMATCH', 'Gramine mode without COCOON_EXPECTED_MEASUREMENT from the manifest: the manifest was not written by cocoon wrap --libos gramine');
  }
  if (expected !== measurement) {
    throw new CocoonError('MEASUREMENT_MISMATCH', 'the workload measurement differs from the one in the Gramine manifest', { details: { expected, actual: measurement } });
  }
  if (tee !== 'sgx') throw new CocoonError('TEE_UNSUPPORTED', `Gramine mode needs the sgx attester (got ${tee})`);
}

/**
 * Generates the key of the encrypted application-root mount and hands it to Gramine through
 * `<attestationDir>/keys/<name>`. The key never leaves the enclave: Gramine copies it into
 * every child process it forks, and the files on the host are ciphertext. Called after the
 * attestation succeeded and before anything is written to the root. The key file exists only
 * when the manifest declares the key (a mount with this key_name); it is read back to check
 * that Gramine took it.
 */
export async function provisionGramineRootKey(attestationDir: string, keyName: string = GRAMINE_ROOT_KEY_NAME): Promise<void> {
  if (!/^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/.test(keyName)) throw new CocoonError('BAD_USAGE', `bad Gramine key name ${JSON.stringify(keyName)}`);
  const path = join(attestationDir, 'keys', keyName);
  const key = randomBytes(GRAMINE_KEY_BYTES);
  let fh;
  try {
    fh = await open(path, 'r+');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new CocoonError('TEE_NOT_FOUND', `${path} not found: the Gramine manifest declares no encrypted mount with key_name "${keyName}"`, { cause: err });
    throw new CocoonError('ATTESTER_IO_FAILED', `${path}: ${(err as Error).message}`, { cause: err });
  }
  try {
    const { bytesWritten } = await fh.write(key, 0, key.length, 0);
    if (bytesWritten !== key.length) throw new CocoonError('ATTESTER_IO_FAILED', `${path}: short write (${bytesWritten} bytes)`);
    const back = Buffer.alloc(GRAMINE_KEY_BYTES + 1);
    const { bytesRead } = await fh.read(back, 0, back.length, 0);
    if (bytesRead !== GRAMINE_KEY_BYTES || !back.subarray(0, GRAMINE_KEY_BYTES).equals(key)) {
      throw new CocoonError('ATTESTER_IO_FAILED', `${path} does not hold the key just written: Gramine did not accept it`);
    }
  } catch (err) {
    if (err instanceof CocoonError) throw err;
    throw new CocoonError('ATTESTER_IO_FAILED', `${path}: ${(err as Error).message}`, { cause: err });
  } finally {
    key.fill(0);
    await fh.close();
  }
}

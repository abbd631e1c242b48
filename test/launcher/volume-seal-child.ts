/**
 * Child process of test/launcher/volume-commits.test.ts: seals SRC into STORE as the version
 * after the one the store holds, so that the test can SIGKILL it part-way through a commit.
 * argv: STORE SRC KEYHEX
 */
import { readStoreManifest, sealVolume } from '../../src/launcher/volumes/format.js';

const [store, src, keyHex] = process.argv.slice(2) as [string, string, string];
const key = Buffer.from(keyHex, 'hex');
const previous = await readStoreManifest(store, 'data', key);
process.stdout.write('sealing\n');
await sealVolume(store, key, 'data', previous, src, (previous?.version ?? 0) + 1);
process.stdout.write('sealed\n');

/**
 * TCTI strings (the tpm2-tss syntax, the subset Cocoon speaks):
 *   device[:/dev/tpmrm0]                 a TPM character device (resource manager preferred)
 *   swtpm[:host=127.0.0.1,port=2321]     raw TPM 2.0 commands over TCP (swtpm --server type=tcp)
 */
import { CocoonError } from '../../errors.js';

export type Tcti = { kind: 'device'; path: string } | { kind: 'swtpm'; host: string; port: number };

export const DEFAULT_TCTI = 'device:/dev/tpmrm0';

const DEVICE_RE = /^\/dev\/tpm(?:rm)?\d{1,3}$/;
const HOST_RE = /^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}))*|\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-fA-F:]{2,39}\])$/;

export function parseTcti(text: string): Tcti {
  if (text.length > 256) throw new CocoonError('BAD_USAGE', 'TPM TCTI string too long');
  const colon = text.indexOf(':');
  const name = colon < 0 ? text : text.slice(0, colon);
  const conf = colon < 0 ? '' : text.slice(colon + 1);
  if (name === 'device') {
    const path = conf || '/dev/tpmrm0';
    if (!DEVICE_RE.test(path)) throw new CocoonError('BAD_USAGE', `TPM TCTI device path must be /dev/tpmrmN or /dev/tpmN, got "${path}"`);
    return { kind: 'device', path };
  }
  if (name === 'swtpm') {
    let host = '127.0.0.1';
    let port = 2321;
    if (conf) {
      for (const part of conf.split(',')) {
        const eq = part.indexOf('=');
        const key = eq < 0 ? part : part.slice(0, eq);
        const value = eq < 0 ? '' : part.slice(eq + 1);
        if (key === 'host' && HOST_RE.test(value)) host = value.replace(/^\[|\]$/g, '');
        else if (key === 'port' && /^\d{1,5}$/.test(value) && Number(value) > 0 && Number(value) < 65536) port = Number(value);
        else throw new CocoonError('BAD_USAGE', `TPM TCTI swtpm: bad option "${part.slice(0, 64)}" (host=…, port=…)`);
      }
    }
    return { kind: 'swtpm', host, port };
  }
  throw new CocoonError('BAD_USAGE', `TPM TCTI "${name.slice(0, 32)}" is not supported (device:/dev/tpmrm0 or swtpm:host=…,port=…)`);
}

export function tctiToString(t: Tcti): string {
  return t.kind === 'device' ? `device:${t.path}` : `swtpm:host=${t.host},port=${t.port}`;
}

import { CocoonError } from '../../errors.js';
import { errorFromResponse, httpRequest, parseJsonBody, trimBase } from './http.js';

/**
 * Advances a protected volume's counter at the KBS (`POST /kbs/v0/resource/<org>/<app>/volume-commit`,
 * bearer attestation token). CONFLICT when the counter is not `from` any more.
 */
export async function commitVolumeCounter(options: { kbsUrl: string; policy: string; token: string; volume: string; from: number; to: number; timeoutMs: number; fetchImpl?: typeof fetch }): Promise<number> {
  const base = trimBase(options.kbsUrl);
  const res = await httpRequest(`${base}/kbs/v0/resource/${options.policy}/volume-commit`, {
    method: 'POST',
    headers: { authorization: `Bearer ${options.token}` },
    body: { volume: options.volume, from: options.from, to: options.to },
    timeoutMs: options.timeoutMs,
    maxBytes: 4096,
    ...(options.fetchImpl ? { fetchImpl: options.fetchImpl } : {}),
  });
  if (res.status !== 200) throw errorFromResponse(res, `KBS volume commit ${options.volume}`);
  const body = parseJsonBody(res, 'KBS volume commit') as { version?: unknown };
  if (body.version !== options.to) throw new CocoonError('INPUT_MALFORMED', 'KBS volume commit: unexpected answer');
  return options.to;
}

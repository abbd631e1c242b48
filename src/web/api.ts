/** The dashboard's JSON API client: same-origin cookies, CSRF header on state changes. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

let csrfToken = '';

export function setCsrf(token: string): void {
  csrfToken = token;
}

export async function api<T>(path: string, init: { method?: 'GET' | 'POST' | 'DELETE'; body?: unknown } = {}): Promise<T> {
  const method = init.method ?? 'GET';
  const headers: Record<string, string> = { accept: 'application/json', 'x-cocoon-ui': '1' };
  if (method !== 'GET') headers['x-csrf-token'] = csrfToken;
  if (init.body !== undefined) headers['content-type'] = 'application/json';
  let res: Response;
  try {
    res = await fetch(path, { method, headers, credentials: 'same-origin', cache: 'no-store', ...(init.body !== undefined ? { body: JSON.stringify(init.body) } : {}) });
  } catch {
    throw new ApiError(0, 'KBS_UNREACHABLE', 'the KBS is not reachable');
  }
  const text = await res.text();
  let data: unknown = undefined;
  try {
    data = text ? JSON.parse(text) : undefined;
  } catch {
    throw new ApiError(res.status, 'INPUT_MALFORMED', `unexpected answer from ${path}`);
  }
  if (!res.ok) {
    const p = (data ?? {}) as { code?: string; detail?: string };
    throw new ApiError(res.status, p.code ?? 'INTERNAL', p.detail ?? `HTTP ${res.status}`);
  }
  return data as T;
}

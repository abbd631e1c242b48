import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { brotliDecompressSync } from 'node:zlib';
import type { OwnerSigningKey } from '../../src/kbs/owner-key.js';
import { UI_CSP } from '../../src/kbs/routes/ui.js';
import { SELF_ATTESTATION_NOT_CONFIGURED } from '../../src/kbs/self-attest.js';
import { SimAttester } from '../../src/attester/sim.js';
import { EventHub, SseClient, sseFrame } from '../../src/kbs/ui/live.js';
import type { EventRecord, Store } from '../../src/kbs/store/types.js';
import { mintUiLoginToken } from '../../src/kbs/ui/login-token.js';
import { UiSessionStore, readUiCookie } from '../../src/kbs/ui/session.js';
import { packageRoot } from '../../src/util/package-root.js';
import { highlightYamlLine } from '../../src/web/yaml-highlight.js';
import { lineDiff } from '../../src/web/line-diff.js';
import { MEASUREMENT, applyDemoPolicy, makeKbs, makeOwnerKey, ownerRequest, ownerToken, rcarAttest } from '../kbs/helpers.js';
import type { TestKbs } from '../kbs/helpers.js';
import { shopPolicy } from '../kbs/scenarios.js';

type Res = Awaited<ReturnType<TestKbs['app']['inject']>>;
const code = (res: Res): [number, string] => [res.statusCode, (res.json() as { code: string }).code];

async function login(kbs: TestKbs, role: 'owner' | 'auditor' = 'owner', key: OwnerSigningKey = kbs.owner): Promise<{ cookie: string; csrf: string; res: Res }> {
  const token = await mintUiLoginToken(key, kbs.kbsId, { role });
  const res = await kbs.app.inject({ method: 'POST', url: '/ui/api/session', headers: { 'x-cocoon-ui': '1' }, payload: { token } });
  assert.equal(res.statusCode, 200, res.body);
  const raw = res.headers['set-cookie'];
  const line = String(Array.isArray(raw) ? raw[0] : raw);
  return { cookie: line.split(';')[0] as string, csrf: (res.json() as { csrf: string }).csrf, res };
}

/** Reads server-sent events of a dashboard stream: `next(event)` waits for the next frame of that event and returns its data. */
function sseReader(res: Response) {
  const reader = (res.body as ReadableStream<Uint8Array>).getReader();
  let buffer = '';
  const next = async (event: string, ms = 8000): Promise<string> => {
    const deadline = Date.now() + ms;
    for (;;) {
      const at = buffer.indexOf(`event: ${event}\n`);
      if (at >= 0) {
        const end = buffer.indexOf('\n\n', at);
        if (end >= 0) {
          const frame = buffer.slice(at, end);
          buffer = buffer.slice(end + 2);
          return frame.split('data: ')[1] ?? '';
        }
      }
      if (Date.now() > deadline) throw new Error(`no ${event} frame; got ${buffer}`);
      const { value, done } = await reader.read();
      if (done) throw new Error(`stream ended before ${event}; got ${buffer}`);
      buffer += Buffer.from(value).toString('utf8');
    }
  };
  return { reader, next };
}

const GET_ENDPOINTS = ['/ui/api/session', '/ui/api/overview', '/ui/api/policies', '/ui/api/policies/demo/redis', '/ui/api/workloads', '/ui/api/events', '/ui/api/audit', '/ui/api/secrets'];

test('dashboard: signed out gets only the login page; everything under /ui/api is 401', async () => {
  const kbs = await makeKbs();
  try {
    await applyDemoPolicy(kbs);
    const page = await kbs.app.inject({ method: 'GET', url: '/ui/' });
    assert.equal(page.statusCode, 200);
    assert.match(String(page.headers['content-type']), /text\/html/);
    assert.equal(page.headers['content-security-policy'], UI_CSP);
    assert.doesNotMatch(page.body, /demo\/redis|<script>[^<]/, 'the page carries no data and no inline script');
    for (const url of [...GET_ENDPOINTS, '/ui/api/events/stream', '/ui/api/events/abc']) {
      const res = await kbs.app.inject({ method: 'GET', url });
      assert.deepEqual(code(res), [401, 'AUTH_REQUIRED'], url);
      assert.equal(res.headers['content-security-policy'], UI_CSP, url);
      assert.equal(res.headers['cache-control'], 'no-store', url);
    }
    const forged = await kbs.app.inject({ method: 'GET', url: '/ui/api/overview', headers: { cookie: `cocoon-ui=${'A'.repeat(43)}` } });
    assert.deepEqual(code(forged), [401, 'AUTH_REQUIRED']);
    assert.equal((await kbs.app.inject({ method: 'GET', url: '/ui' })).statusCode, 302);
  } finally {
    await kbs.cleanup();
  }
});

test('dashboard: login token is single use, cookie is HttpOnly SameSite=Strict, login needs the ui header', async () => {
  const kbs = await makeKbs();
  try {
    const token = await mintUiLoginToken(kbs.owner, kbs.kbsId, { role: 'owner' });
    assert.deepEqual(code(await kbs.app.inject({ method: 'POST', url: '/ui/api/session', payload: { token } })), [403, 'FORBIDDEN'], 'no x-cocoon-ui header');
    assert.deepEqual(code(await kbs.app.inject({ method: 'POST', url: '/ui/api/session', headers: { 'x-cocoon-ui': '1', origin: 'https://evil.example' }, payload: { token } })), [403, 'FORBIDDEN'], 'cross-origin');
    const ok = await kbs.app.inject({ method: 'POST', url: '/ui/api/session', headers: { 'x-cocoon-ui': '1' }, payload: { token } });
    assert.equal(ok.statusCode, 200, ok.body);
    const cookie = String(ok.headers['set-cookie']);
    assert.match(cookie, /^cocoon-ui=[A-Za-z0-9_-]{43}; Path=\/ui; HttpOnly; SameSite=Strict; Max-Age=\d+$/);
    assert.doesNotMatch(cookie, /Secure/, 'plain HTTP: no Secure flag');
    const body = ok.json() as { role: string; kid: string; csrf: string };
    assert.deepEqual([body.role, body.kid], ['owner', kbs.owner.kid]);
    // behind a TLS-terminating proxy: same host, https page → accepted, cookie Secure
    const proxied = await kbs.app.inject({ method: 'POST', url: '/ui/api/session', headers: { 'x-cocoon-ui': '1', origin: 'https://localhost:80' }, payload: { token: await mintUiLoginToken(kbs.owner, kbs.kbsId, { role: 'auditor' }) } });
    assert.equal(proxied.statusCode, 200, proxied.body);
    assert.match(String(proxied.headers['set-cookie']), /; Secure$/);
    assert.deepEqual(code(await kbs.app.inject({ method: 'POST', url: '/ui/api/session', headers: { 'x-cocoon-ui': '1', origin: 'null' }, payload: { token: await mintUiLoginToken(kbs.owner, kbs.kbsId, { role: 'owner' }) } })), [403, 'FORBIDDEN']);
    // the same token again: replay
    assert.deepEqual(code(await kbs.app.inject({ method: 'POST', url: '/ui/api/session', headers: { 'x-cocoon-ui': '1' }, payload: { token } })), [401, 'TOKEN_REPLAYED']);
    // an ordinary owner API token is not a login token, and a login token is no owner API token
    assert.deepEqual(code(await kbs.app.inject({ method: 'POST', url: '/ui/api/session', headers: { 'x-cocoon-ui': '1' }, payload: { token: await ownerToken(kbs) } })), [401, 'AUTH_INVALID']);
    const loginToken = await mintUiLoginToken(kbs.owner, kbs.kbsId, { role: 'owner' });
    assert.deepEqual(code(await kbs.app.inject({ method: 'GET', url: '/cocoon/v1/events', headers: { authorization: `Bearer ${loginToken}` } })), [401, 'AUTH_INVALID']);
    // a stranger's key and another KBS's audience are refused
    assert.deepEqual(code(await kbs.app.inject({ method: 'POST', url: '/ui/api/session', headers: { 'x-cocoon-ui': '1' }, payload: { token: await mintUiLoginToken(await makeOwnerKey(), kbs.kbsId, { role: 'owner' }) } })), [401, 'AUTH_INVALID']);
    assert.deepEqual(code(await kbs.app.inject({ method: 'POST', url: '/ui/api/session', headers: { 'x-cocoon-ui': '1' }, payload: { token: await mintUiLoginToken(kbs.owner, 'other-kbs', { role: 'owner' }) } })), [401, 'AUTH_INVALID']);
    assert.deepEqual(code(await kbs.app.inject({ method: 'POST', url: '/ui/api/session', headers: { 'x-cocoon-ui': '1' }, payload: { token: 'x'.repeat(5000) } })), [400, 'INPUT_MALFORMED']);
    // the session works, and logout (with CSRF token) ends it
    const sid = cookie.split(';')[0] as string;
    assert.equal((await kbs.app.inject({ method: 'GET', url: '/ui/api/session', headers: { cookie: sid } })).statusCode, 200);
    assert.deepEqual(code(await kbs.app.inject({ method: 'DELETE', url: '/ui/api/session', headers: { cookie: sid } })), [403, 'FORBIDDEN'], 'logout without CSRF token');
    const out = await kbs.app.inject({ method: 'DELETE', url: '/ui/api/session', headers: { cookie: sid, 'x-csrf-token': body.csrf } });
    assert.equal(out.statusCode, 200);
    assert.match(String(out.headers['set-cookie']), /Max-Age=0/);
    assert.deepEqual(code(await kbs.app.inject({ method: 'GET', url: '/ui/api/session', headers: { cookie: sid } })), [401, 'AUTH_REQUIRED']);
    // sign-in and sign-out are in the audit chain
    const audit = (await ownerRequest(kbs, 'GET', '/cocoon/v1/audit')).json() as { entries: { action: string; actor: string }[] };
    assert.deepEqual(audit.entries.filter((e) => e.action.startsWith('ui.')).map((e) => [e.action, e.actor]), [['ui.login', kbs.owner.kid], ['ui.login', kbs.owner.kid], ['ui.logout', kbs.owner.kid]]);
  } finally {
    await kbs.cleanup();
  }
});

const governed = (owners: OwnerSigningKey[], measurement = MEASUREMENT) => shopPolicy(owners, 2, measurement);

test('dashboard: CSRF, auditor read-only, approve a pending update', async () => {
  const kbs = await makeKbs();
  try {
    const [a, b] = [await makeOwnerKey(), await makeOwnerKey()];
    const v1 = (await ownerRequest(kbs, 'PUT', '/cocoon/v1/policies/shop/web', { yaml: governed([a, b]) })).json() as { hash: string };
    const proposed = await ownerRequest(kbs, 'PUT', '/cocoon/v1/policies/shop/web', { yaml: governed([a, b], 'ef'.repeat(48)), predecessor: v1.hash }, { key: a });
    const pendingId = (proposed.json() as { pending: { id: string } }).pending.id;
    const url = `/ui/api/policies/shop/web/pending/${pendingId}/approve`;

    const auditor = await login(kbs, 'auditor', b);
    const detail = (await kbs.app.inject({ method: 'GET', url: '/ui/api/policies/shop/web', headers: { cookie: auditor.cookie } })).json() as { pending: { id: string }[]; current: { version: number } };
    assert.deepEqual([detail.current.version, detail.pending.map((p) => p.id)], [1, [pendingId]]);
    assert.deepEqual(code(await kbs.app.inject({ method: 'POST', url, headers: { cookie: auditor.cookie, 'x-csrf-token': auditor.csrf }, payload: {} })), [403, 'FORBIDDEN'], 'auditor is read-only');

    const owner = await login(kbs, 'owner', b);
    assert.deepEqual(code(await kbs.app.inject({ method: 'POST', url, headers: { cookie: owner.cookie }, payload: {} })), [403, 'FORBIDDEN'], 'no CSRF token');
    assert.deepEqual(code(await kbs.app.inject({ method: 'POST', url, headers: { cookie: owner.cookie, 'x-csrf-token': auditor.csrf }, payload: {} })), [403, 'FORBIDDEN'], "another session's CSRF token");
    assert.deepEqual(code(await kbs.app.inject({ method: 'POST', url, headers: { cookie: owner.cookie, 'x-csrf-token': owner.csrf, origin: 'http://evil.example' }, payload: {} })), [403, 'FORBIDDEN'], 'cross-origin');
    // the admin that created it is not an owner of shop/web: cannot see it
    const admin = await login(kbs);
    assert.deepEqual(code(await kbs.app.inject({ method: 'GET', url: '/ui/api/policies/shop/web', headers: { cookie: admin.cookie } })), [403, 'FORBIDDEN']);
    assert.deepEqual((await kbs.app.inject({ method: 'GET', url: '/ui/api/policies', headers: { cookie: admin.cookie } })).json(), { policies: [] });

    const ok = await kbs.app.inject({ method: 'POST', url, headers: { cookie: owner.cookie, 'x-csrf-token': owner.csrf }, payload: {} });
    assert.equal(ok.statusCode, 200, ok.body);
    assert.deepEqual([(ok.json() as { status: string }).status, (ok.json() as { version: number }).version], ['applied', 2]);
    const after = (await kbs.app.inject({ method: 'GET', url: '/ui/api/policies/shop/web', headers: { cookie: owner.cookie } })).json() as { pending: unknown[]; history: { version: number }[] };
    assert.deepEqual([after.pending.length, after.history.map((h) => h.version)], [0, [2, 1]]);
  } finally {
    await kbs.cleanup();
  }
});

test('dashboard: views carry metadata, events with claims, a verified audit chain — and never a secret value', async () => {
  const kbs = await makeKbs();
  try {
    await applyDemoPolicy(kbs);
    const imported = Buffer.from('imported-secret-value-0123456789');
    assert.equal((await ownerRequest(kbs, 'PUT', '/cocoon/v1/secrets/demo/redis/api-token', { value: imported.toString('base64') })).statusCode, 200);
    const pw = Buffer.from(((await ownerRequest(kbs, 'GET', '/cocoon/v1/secrets/demo/redis/redis-password')).json() as { value: string }).value, 'base64');
    assert.equal((await rcarAttest(kbs)).attest.statusCode, 200);
    assert.equal((await rcarAttest(kbs, { measurement: 'ee'.repeat(48) })).attest.statusCode, 401);

    const { cookie } = await login(kbs);
    const get = async (url: string) => {
      const res = await kbs.app.inject({ method: 'GET', url, headers: { cookie } });
      assert.equal(res.statusCode, 200, `${url}: ${res.body}`);
      return res;
    };
    const bodies: string[] = [];
    for (const url of GET_ENDPOINTS) bodies.push((await get(url)).body);

    const overview = (await get('/ui/api/overview')).json() as { kbs: { allowSim: boolean; warning: string }; counts: Record<string, number>; ca: { available: boolean; root: { sha256: string } } };
    assert.equal(overview.kbs.allowSim, true);
    assert.match(overview.kbs.warning, /INSECURE/);
    assert.deepEqual([overview.counts.policies, overview.counts.workloads, overview.counts.secrets, overview.counts.accepted24h, overview.counts.refused24h], [1, 2, 3, 1, 1]);
    assert.equal(overview.ca.available, true);
    assert.match(overview.ca.root.sha256, /^([0-9A-F]{2}:){31}[0-9A-F]{2}$/);

    const workloads = (await get('/ui/api/workloads')).json() as { workloads: { name: string; lastAttestation: { status: string; tee: string } | null; lastAccepted: { measurement: string } | null }[] };
    const redis = workloads.workloads.find((w) => w.name === 'redis');
    assert.deepEqual([redis?.lastAttestation?.status, redis?.lastAttestation?.tee, redis?.lastAccepted?.measurement], ['contraindicated', 'sim', MEASUREMENT]);

    const refused = (await get('/ui/api/events?status=contraindicated&workload=redis')).json() as { events: { id: string; code: string }[]; codes: string[] };
    assert.deepEqual([refused.events.length, refused.events[0]?.code], [1, 'POLICY_DENIED']);
    assert.ok(refused.codes.includes('POLICY_DENIED'));
    assert.equal(((await get('/ui/api/events?code=none&kind=attest')).json() as { events: unknown[] }).events.length, 1);
    const accepted = (await get('/ui/api/events?status=affirming&kind=attest')).json() as { events: { id: string }[] };
    const detail = (await get(`/ui/api/events/${accepted.events[0]?.id}`)).json() as { attestation: { available: boolean; claims: { measurement: string } } };
    assert.deepEqual([detail.attestation.available, detail.attestation.claims.measurement], [true, MEASUREMENT]);
    bodies.push(JSON.stringify(detail));
    assert.deepEqual(code(await kbs.app.inject({ method: 'GET', url: '/ui/api/events?status=bogus', headers: { cookie } })), [400, 'INPUT_MALFORMED']);

    const audit = (await get('/ui/api/audit?limit=5')).json() as { verdict: { ok: boolean; count: number }; entries: { seq: number }[] };
    assert.equal(audit.verdict.ok, true);
    assert.ok(audit.verdict.count >= 5);
    assert.equal(audit.entries.length, 5);
    assert.ok((audit.entries[0]?.seq ?? 0) > (audit.entries[4]?.seq ?? 0), 'newest first');
    const older = (await get(`/ui/api/audit?limit=2&before=${audit.entries[2]?.seq}`)).json() as { entries: { seq: number }[] };
    assert.deepEqual(older.entries.map((e) => e.seq), [audit.entries[3]?.seq, audit.entries[4]?.seq]);

    const secrets = (await get('/ui/api/secrets')).json() as { secrets: { name: string; kind: string; receivers: string[]; stored: boolean }[] };
    assert.deepEqual(
      secrets.secrets.map((s) => [s.name, s.kind, s.receivers.join(','), s.stored]),
      [
        ['redis-password', 'random', 'redis', true],
        ['layer-key', 'layer-key', 'redis,worker', false],
        ['api-token', 'imported', 'worker', true],
      ],
    );
    for (const body of bodies) {
      for (const needle of [pw.toString('utf8'), pw.toString('base64'), imported.toString('utf8'), imported.toString('base64'), imported.toString('hex')]) {
        assert.ok(!body.includes(needle), 'a secret value reached a /ui/api response');
      }
      assert.doesNotMatch(body, /"sealed"|"nonce"/);
    }
  } finally {
    await kbs.cleanup();
  }
});

test('dashboard: files are served compressed with CSP and no inline code', async (t) => {
  const web = join(packageRoot(), 'dist', 'web');
  if (!existsSync(join(web, 'index.html'))) {
    t.skip('dist/web not built (node scripts/build.mjs)');
    return;
  }
  const kbs = await makeKbs();
  try {
    const html = await kbs.app.inject({ method: 'GET', url: '/ui/', headers: { 'accept-encoding': 'gzip, br' } });
    assert.equal(html.headers['content-encoding'], 'br');
    const text = brotliDecompressSync(html.rawPayload).toString('utf8');
    assert.match(text, /<script type="module" src="\/ui\/assets\/app.js"><\/script>/);
    assert.doesNotMatch(text, /<script>|<style|\sstyle=|\son[a-z]+=/i);
    const js = await kbs.app.inject({ method: 'GET', url: '/ui/assets/app.js', headers: { 'accept-encoding': 'gzip' } });
    assert.deepEqual([js.statusCode, js.headers['content-encoding'], js.headers['content-type']], [200, 'gzip', 'text/javascript; charset=utf-8']);
    assert.equal(js.headers['content-security-policy'], UI_CSP);
    assert.equal(js.headers['x-content-type-options'], 'nosniff');
    const plain = await kbs.app.inject({ method: 'GET', url: '/ui/assets/styles.css' });
    assert.equal(plain.headers['content-encoding'], undefined);
    assert.equal((await kbs.app.inject({ method: 'GET', url: '/ui/assets/styles.css', headers: { 'if-none-match': String(plain.headers.etag) } })).statusCode, 304);
    assert.equal((await kbs.app.inject({ method: 'GET', url: '/ui/assets/..%2Fpackage.json' })).statusCode, 400);
    assert.equal((await kbs.app.inject({ method: 'GET', url: '/ui/assets/app.js.br' })).statusCode, 404);
  } finally {
    await kbs.cleanup();
  }
});

test('event stream client: bounded queue drops the oldest and asks for a refetch', () => {
  const written: string[] = [];
  let drain: (() => void) | undefined;
  let accept = false;
  const sink = {
    writableEnded: false,
    write(chunk: string) {
      written.push(chunk);
      return accept;
    },
    once(_e: 'drain', l: () => void) {
      drain = l;
    },
    end() {
      this.writableEnded = true;
    },
  };
  const client = new SseClient(sink, 3);
  client.push(sseFrame('attestation', { n: 0 })); // written, then the socket is full
  for (let n = 1; n <= 6; n++) client.push(sseFrame('attestation', { n }));
  assert.equal(written.length, 1);
  assert.equal(client.queued, 3);
  assert.equal(client.dropped, 3);
  client.direct(': heartbeat\n\n');
  assert.equal(written.length, 1, 'no heartbeat while blocked');
  accept = true;
  drain?.();
  assert.match(written[1] as string, /^event: resync\n/);
  assert.deepEqual(written.slice(2).map((w) => (JSON.parse(w.split('data: ')[1] as string) as { n: number }).n), [4, 5, 6]);
  client.close(sseFrame('expired', {}));
  assert.equal(sink.writableEnded, true);
});

test('session store: expiry, bounded size, cookie parsing', () => {
  const s = new UiSessionStore(2);
  const one = s.create('k1', 'owner', 1000, 10);
  assert.equal(s.get(one.id, 2000)?.kid, 'k1');
  assert.equal(s.get(one.id, 11_001), undefined, 'expired');
  const ended: string[] = [];
  s.onEnd((k) => ended.push(k));
  const a = s.create('a', 'owner', 0, 100);
  s.create('b', 'auditor', 0, 100);
  s.create('c', 'auditor', 0, 100);
  assert.equal(s.size, 2);
  assert.equal(s.get(a.id, 1), undefined, 'oldest evicted');
  assert.equal(ended.length, 1);
  assert.equal(readUiCookie(`x=1; cocoon-ui=${a.id}`), a.id);
  assert.equal(readUiCookie('cocoon-ui=../../etc'), undefined);
});

test('yaml highlighter and line diff', () => {
  const toks = highlightYamlLine('  redis-password: { kind: random, size: 32, ownerReadable: true } # note');
  assert.equal(toks.map((t) => t.v).join(''), '  redis-password: { kind: random, size: 32, ownerReadable: true } # note');
  assert.deepEqual(
    toks.filter((t) => t.t !== 'plain' && t.t !== 'punct').map((t) => [t.t, t.v.trim()]),
    [
      ['key', 'redis-password'],
      ['key', 'kind'],
      ['str', 'random'],
      ['key', 'size'],
      ['num', '32'],
      ['key', 'ownerReadable'],
      ['bool', 'true'],
      ['comment', '# note'],
    ],
  );
  const tmpl = highlightYamlLine('    env: { PW: "{{ secret.pw }}" }');
  assert.ok(tmpl.some((t) => t.t === 'tmpl' && t.v === '{{ secret.pw }}'));
  assert.deepEqual(highlightYamlLine('    - tee: [sim]').filter((t) => t.t === 'punct').map((t) => t.v), ['-', ':', '[', ']']);
  assert.deepEqual(lineDiff('a\nb\nc\n', 'a\nc\nd\n').map((l) => l.op + l.text), [' a', '-b', ' c', '+d']);
});

test('event stream: hello, live attestation frames, closed with "expired" on sign-out', async () => {
  const kbs = await makeKbs();
  try {
    await applyDemoPolicy(kbs);
    const { cookie, csrf } = await login(kbs);
    await kbs.app.listen({ host: '127.0.0.1', port: 0 });
    const address = kbs.app.server.address();
    const port = typeof address === 'object' && address ? address.port : 0;
    const res = await fetch(`http://127.0.0.1:${port}/ui/api/events/stream`, { headers: { cookie } });
    assert.equal(res.status, 200);
    assert.match(String(res.headers.get('content-type')), /^text\/event-stream/);
    assert.equal(res.headers.get('content-security-policy'), UI_CSP);
    const { reader, next } = sseReader(res);
    await next('hello');
    await new Promise((r) => setTimeout(r, 1200)); // the hub has primed itself with the existing events
    assert.equal((await rcarAttest(kbs)).attest.statusCode, 200);
    const live = JSON.parse(await next('attestation')) as { status: string; workload: string; measurement: string };
    assert.deepEqual([live.status, live.workload, live.measurement], ['affirming', 'redis', MEASUREMENT]);
    assert.equal((await kbs.app.inject({ method: 'DELETE', url: '/ui/api/session', headers: { cookie, 'x-csrf-token': csrf } })).statusCode, 200);
    assert.match(await next('expired'), /signed out/);
    const end = await reader.read();
    assert.equal(end.done, true);
  } finally {
    await kbs.cleanup();
  }
});

test('event stream: closed with "expired" when the session runs out', async () => {
  let offsetMs = 0;
  const kbs = await makeKbs({ now: () => new Date(Date.now() + offsetMs) });
  try {
    const { cookie } = await login(kbs);
    offsetMs = 30 * 60 * 1000 - 1500; // 1.5 s of the 30 min session left
    await kbs.app.listen({ host: '127.0.0.1', port: 0 });
    const address = kbs.app.server.address();
    const port = typeof address === 'object' && address ? address.port : 0;
    const started = Date.now();
    const res = await fetch(`http://127.0.0.1:${port}/ui/api/events/stream`, { headers: { cookie } });
    assert.equal(res.status, 200);
    const text = await res.text(); // ends when the server closes the stream
    assert.match(text, /event: hello\n/);
    assert.match(text, /event: expired\ndata: \{"reason":"session expired; sign in again"\}/);
    assert.ok(Date.now() - started < 5000);
    assert.deepEqual(code(await kbs.app.inject({ method: 'GET', url: '/ui/api/session', headers: { cookie } })), [401, 'AUTH_REQUIRED']);
  } finally {
    await kbs.cleanup();
  }
});

test('event hub: primes on the first poll, forwards new events once, asks for a resync after a gap', async () => {
  const events: EventRecord[] = [];
  const ev = (n: number): EventRecord => ({ id: `e${n}`, at: n, kind: 'attest', status: 'affirming', tee: 'sim', policy: 'a/b', workload: 'w', resource: null, code: null, detail: '', insecure: true, sessionId: null });
  const store = { listEvents: async ({ limit }: { limit: number }) => [...events].reverse().slice(0, limit) } as unknown as Store;
  const hub = new EventHub(store, 60_000, (err) => assert.fail(String(err)), 3);
  const got: string[] = [];
  let resyncs = 0;
  events.push(ev(1));
  const off = hub.subscribe({ events: (es) => got.push(...es.map((e) => e.id)), resync: () => resyncs++ });
  await hub.poll(); // the subscribe() poll may still be running: this one primes or is a no-op
  await new Promise((r) => setTimeout(r, 10));
  events.push(ev(2), ev(3));
  await hub.poll();
  await hub.poll();
  assert.deepEqual(got, ['e2', 'e3']);
  events.push(ev(4), ev(5), ev(6), ev(7));
  await hub.poll();
  assert.equal(resyncs, 1);
  assert.deepEqual(got, ['e2', 'e3']);
  off();
  assert.equal(hub.size, 0);
});

test('overview: KBS self-attestation status (TEE, measurement, insecure, bound) or "not available" with the reason', async () => {
  const overviewOf = async (kbs: TestKbs) => {
    const { cookie } = await login(kbs, 'auditor');
    const res = await kbs.app.inject({ method: 'GET', url: '/ui/api/overview', headers: { cookie } });
    assert.equal(res.statusCode, 200, res.body);
    assert.equal(res.headers['content-security-policy'], UI_CSP);
    return (res.json() as { kbs: { selfAttestation: Record<string, unknown> } }).kbs.selfAttestation;
  };
  const measurement = 'cd'.repeat(48);
  const fakeTpm = { tee: 'tpm' as const, getEvidence: async () => ({}) };
  const cases: Array<[Parameters<typeof makeKbs>[0], Record<string, unknown>]> = [
    [{}, { available: false, reason: SELF_ATTESTATION_NOT_CONFIGURED }],
    [{ selfAttestationUnavailable: '--tee auto: no supported TEE found; probed: TPM at /dev/tpmrm0: absent' }, { available: false, reason: '--tee auto: no supported TEE found; probed: TPM at /dev/tpmrm0: absent' }],
    [{ selfAttestation: { attester: new SimAttester('/nonexistent'), measurement } }, { available: true, tee: 'sim', measurement, insecure: true, measurementBound: true, register: null }],
    [{ selfAttestation: { attester: fakeTpm, measurement, register: 'PCR 23 (sha256)' } }, { available: true, tee: 'tpm', measurement, insecure: false, measurementBound: true, register: 'PCR 23 (sha256)' }],
    [{ selfAttestation: { attester: { ...fakeTpm, tee: 'snp' as const }, measurement } }, { available: true, tee: 'snp', measurement, insecure: false, measurementBound: false, register: null }],
  ];
  for (const [overrides, want] of cases) {
    const kbs = await makeKbs(overrides);
    try {
      assert.deepEqual(await overviewOf(kbs), want);
      // the endpoint itself exists exactly when an attester is configured
      const ep = await kbs.app.inject({ method: 'GET', url: `/cocoon/v1/attestation?nonce=${'ab'.repeat(32)}` });
      if (want.available) assert.notEqual(ep.statusCode, 404);
      else assert.equal(ep.statusCode, 404);
    } finally {
      await kbs.cleanup();
    }
  }
});

test('event stream: one session holds at most 8 streams; another session still gets one', async () => {
  const kbs = await makeKbs();
  const open: ReadableStreamDefaultReader<Uint8Array>[] = [];
  try {
    const first = await login(kbs);
    const second = await login(kbs, 'auditor');
    await kbs.app.listen({ host: '127.0.0.1', port: 0 });
    const address = kbs.app.server.address();
    const port = typeof address === 'object' && address ? address.port : 0;
    const stream = (cookie: string) => fetch(`http://127.0.0.1:${port}/ui/api/events/stream`, { headers: { cookie } });
    for (let i = 0; i < 8; i++) {
      const res = await stream(first.cookie);
      assert.equal(res.status, 200, `stream ${i + 1}`);
      open.push((res.body as ReadableStream<Uint8Array>).getReader());
    }
    const refused = await stream(first.cookie);
    assert.equal(refused.status, 429);
    assert.equal(((await refused.json()) as { code: string }).code, 'RATE_LIMITED');
    const other = await stream(second.cookie);
    assert.equal(other.status, 200);
    open.push((other.body as ReadableStream<Uint8Array>).getReader());
  } finally {
    for (const reader of open) await reader.cancel();
    await kbs.cleanup();
  }
});

test('event stream of a non-admin owner: only its policies, including one created after the stream opened', async () => {
  const kbs = await makeKbs();
  let reader: ReadableStreamDefaultReader<Uint8Array> | undefined;
  try {
    const b = await makeOwnerKey();
    assert.equal((await ownerRequest(kbs, 'PUT', '/cocoon/v1/policies/shop/web', { yaml: shopPolicy([b], 1) })).statusCode, 200);
    const { cookie } = await login(kbs, 'owner', b);
    await kbs.app.listen({ host: '127.0.0.1', port: 0 });
    const address = kbs.app.server.address();
    const port = typeof address === 'object' && address ? address.port : 0;
    const res = await fetch(`http://127.0.0.1:${port}/ui/api/events/stream`, { headers: { cookie } });
    assert.equal(res.status, 200);
    const stream = sseReader(res);
    reader = stream.reader;
    await stream.next('hello');
    await new Promise((r) => setTimeout(r, 1200)); // the hub has primed itself
    await applyDemoPolicy(kbs); // the admin's policy: not readable by b
    const api = await ownerRequest(kbs, 'PUT', '/cocoon/v1/policies/shop/api', { yaml: shopPolicy([b], 1).replace('name: shop/web', 'name: shop/api') });
    assert.equal(api.statusCode, 200, api.body);
    assert.equal((await rcarAttest(kbs)).attest.statusCode, 200);
    assert.equal((await rcarAttest(kbs, { policy: 'shop/api', workload: 'web' })).attest.statusCode, 200);
    const live = JSON.parse(await stream.next('attestation')) as { policy: string; workload: string };
    assert.deepEqual([live.policy, live.workload], ['shop/api', 'web']);
  } finally {
    await reader?.cancel();
    await kbs.cleanup();
  }
});

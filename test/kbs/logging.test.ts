import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { flattenedDecrypt } from 'jose';
import { applyDemoPolicy, makeKbs, ownerRequest, rcarAttest } from './helpers.js';

test('logs are structured, carry the INSECURE notice, and never contain secrets, tokens or cookies', async () => {
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(chunk.toString());
      cb();
    },
  });
  const kbs = await makeKbs({ loggerInstance: pino({ level: 'debug' }, sink) });
  try {
    await applyDemoPolicy(kbs);
    const marker = 'IMPORTED-SECRET-MARKER-0123456789';
    await ownerRequest(kbs, 'PUT', '/cocoon/v1/secrets/demo/redis/api-token', { value: Buffer.from(marker).toString('base64') });
    await ownerRequest(kbs, 'PUT', '/cocoon/v1/secrets/demo/redis/layer-key', { value: Buffer.alloc(32, 0x41).toString('base64') });
    const { attest, cookie, key } = await rcarAttest(kbs);
    const token = (attest.json() as { token: string }).token;
    const res = await kbs.app.inject({ method: 'GET', url: '/kbs/v0/resource/demo/redis/redis-password', headers: { cookie, authorization: `Bearer ${token}` } });
    const pw = Buffer.from((await flattenedDecrypt(res.json(), key.privateKey)).plaintext).toString();
    const pwRead = await ownerRequest(kbs, 'GET', '/cocoon/v1/secrets/demo/redis/redis-password');
    assert.equal(pwRead.statusCode, 200);
    await rcarAttest(kbs, { measurement: 'ef'.repeat(48) });

    const all = lines.join('');
    for (const line of lines) JSON.parse(line);
    for (const secret of [marker, pw, Buffer.from(marker).toString('base64'), Buffer.alloc(32, 0x41).toString('base64'), token, cookie.split('=')[1]!]) {
      assert.ok(!all.includes(secret), `log contains a secret: ${secret.slice(0, 12)}…`);
    }
    assert.match(all, /INSECURE: simulated TEE/);
    assert.match(all, /attestation refused/);
    // One line per request, carrying the request, the status and the time taken.
    const parsed = lines.map((l) => JSON.parse(l) as { msg?: string; req?: { method?: string; url?: string }; res?: { statusCode?: number }; responseTime?: number });
    assert.equal(parsed.filter((l) => l.msg === 'incoming request').length, 0);
    const completed = parsed.filter((l) => l.msg === 'request completed');
    assert.deepEqual(
      completed.filter((l) => l.req?.url === '/kbs/v0/attest').map((l) => [l.req?.method, l.res?.statusCode]),
      [
        ['POST', 200],
        ['POST', 401],
      ],
    );
    assert.ok(completed.length >= 8 && completed.every((l) => typeof l.responseTime === 'number' && typeof l.req?.url === 'string' && typeof l.res?.statusCode === 'number'));
  } finally {
    await kbs.cleanup();
  }
});

import { test, mock } from 'node:test';
import assert from 'node:assert/strict';
import { CertRenewer } from '../../src/launcher/tls/lifecycle.js';
import type { TlsMaterial } from '../../src/launcher/tls/material.js';
import { createLauncherLog } from '../../src/launcher/log.js';

const DAY = 86_400_000;
const log = createLauncherLog({ write: () => true } as unknown as NodeJS.WritableStream);
const material = (validMs: number, now: number): TlsMaterial => ({ keyPem: 'k', certChainPem: 'c', rootPem: 'r', notAfter: new Date(now + validMs) });

test('renewal of a long-lived certificate waits its time (no 32-bit timer overflow), then renews once', async (t) => {
  mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 0 });
  t.after(() => mock.timers.reset());
  let renewed = 0;
  const next = material(60 * DAY, 40 * DAY);
  const renewer = new CertRenewer(material(60 * DAY, 0), { update: () => undefined }, async () => (renewed++, next), { renewAtPercent: 67, renewRetryMs: 1000, renewRetryMaxMs: 60_000 }, log);
  t.after(() => renewer.stop());
  assert.equal(renewer.delayFor(renewer.material), Math.floor(60 * DAY * 0.67), '40.2 days: beyond a 32-bit millisecond timer');
  renewer.start();
  mock.timers.tick(1);
  mock.timers.tick(25 * DAY);
  await Promise.resolve();
  assert.equal(renewed, 0, 'not renewed after 25 days');
  mock.timers.tick(15 * DAY);
  await Promise.resolve();
  assert.equal(renewed, 0, 'not renewed after 40 days');
  mock.timers.tick(1 * DAY);
  for (let i = 0; i < 5; i++) await Promise.resolve();
  assert.equal(renewed, 1, 'renewed at 67 % of the lifetime');
});

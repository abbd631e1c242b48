/** Cocoon event log: replay against the signed register, strict parsing, negative cases. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { applyEventLog, eventDigest, parseEventLog, replayEventLog, replayRegister, workloadEvent, type CocoonEventLog } from '../../src/attestation/eventlog.js';
import { isCocoonError } from '../../src/errors.js';

const measurement = createHash('sha384').update('m').digest('hex');
const event = workloadEvent(measurement, 'test/redis', 'redis');

function logFor(register: string, alg: 'sha256' | 'sha384'): { log: CocoonEventLog; value: string } {
  const digest = eventDigest(alg, event);
  return { log: { v: 1, register, alg, events: [{ digest: digest.toString('hex'), event }] }, value: replayRegister(alg, [digest]).toString('hex') };
}

test('replay: PCR (sha256) and RTMR (sha384) logs expose the measurement only when they match', () => {
  const { log, value } = logFor('pcr23', 'sha256');
  // independent computation of the extend rule
  const expected = createHash('sha256').update(Buffer.alloc(32)).update(createHash('sha256').update(JSON.stringify({ measurement, policy: 'test/redis', type: 'cocoon.workload', workload: 'redis' })).digest()).digest('hex');
  assert.equal(value, expected);
  const r = replayEventLog(log, (reg, alg) => (reg === 'pcr23' && alg === 'sha256' ? value : undefined));
  assert.equal(r.measurement, measurement);
  const claims: Record<string, unknown> = { pcr23: value, pcr_alg: 'sha256' };
  assert.equal(applyEventLog({ cocoon_event_log: log }, claims), true);
  assert.equal(claims.measurement, measurement);
  assert.equal(claims.workload_measurement, measurement);
  assert.equal(applyEventLog({ other: 1 }, {}), false);
  const t = logFor('rtmr3', 'sha384');
  assert.equal(replayEventLog(t.log, () => t.value).measurement, measurement);
});

test('replay: tampered event, wrong register value, wrong PCR or bank → typed errors', () => {
  const { log, value } = logFor('pcr23', 'sha256');
  // tampered event (measurement changed, digest kept)
  const tampered = structuredClone(log);
  tampered.events[0]!.event.measurement = 'f'.repeat(96);
  assert.throws(() => replayEventLog(tampered, () => value), (e) => isCocoonError(e, 'EVENT_LOG_MISMATCH'));
  // tampered event with a recomputed digest: the replay no longer gives the signed value
  tampered.events[0]!.digest = eventDigest('sha256', tampered.events[0]!.event).toString('hex');
  assert.throws(() => replayEventLog(tampered, () => value), (e) => isCocoonError(e, 'EVENT_LOG_MISMATCH') && /replay/.test(e.message));
  // the log names another PCR than the one extended
  const claims: Record<string, unknown> = { pcr23: value, pcr16: '00'.repeat(32), pcr_alg: 'sha256' };
  assert.throws(() => applyEventLog({ cocoon_event_log: { ...log, register: 'pcr16' } }, claims), (e) => isCocoonError(e, 'EVENT_LOG_MISMATCH'));
  assert.equal(claims.measurement, undefined, 'no measurement claim without a matching replay');
  // a PCR not covered by the quote, or another bank
  assert.throws(() => applyEventLog({ cocoon_event_log: { ...log, register: 'pcr7' } }, claims), (e) => isCocoonError(e, 'EVENT_LOG_MISMATCH') && /not covered/.test(e.message));
  assert.throws(() => applyEventLog({ cocoon_event_log: log }, { pcr23: value, pcr_alg: 'sha1' }), (e) => isCocoonError(e, 'EVENT_LOG_MISMATCH'));
  // an extra event that was never extended
  const extra = structuredClone(log);
  extra.events.push(structuredClone(extra.events[0]!));
  assert.throws(() => replayEventLog(extra, () => value), (e) => isCocoonError(e, 'EVENT_LOG_MALFORMED') || isCocoonError(e, 'EVENT_LOG_MISMATCH'));
});

test('parse: strict shape, bounded', () => {
  const { log } = logFor('pcr23', 'sha256');
  const bad: unknown[] = [
    null,
    [],
    'x',
    { ...log, v: 2 },
    { ...log, register: 'pcr24' },
    { ...log, register: 'rtmr3' }, // RTMR with sha256
    { ...log, alg: 'md5' },
    { ...log, events: [] },
    { ...log, events: Array.from({ length: 65 }, () => log.events[0]) },
    { ...log, extra: 1 },
    { ...log, events: [{ ...log.events[0], more: 1 }] },
    { ...log, events: [{ digest: 'zz', event }] },
    { ...log, events: [{ digest: log.events[0]!.digest, event: { ...event, type: 'other' } }] },
    { ...log, events: [{ digest: log.events[0]!.digest, event: { ...event, measurement: 'ABC' } }] },
    { ...log, events: [{ digest: log.events[0]!.digest, event: { ...event, policy: '../x' } }] },
  ];
  for (const b of bad) assert.throws(() => parseEventLog(b), (e) => isCocoonError(e, 'EVENT_LOG_MALFORMED'), JSON.stringify(b)?.slice(0, 80));
});

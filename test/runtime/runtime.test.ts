import { test } from 'node:test';
import assert from 'node:assert/strict';
import { buildRuncSpec } from '../../src/runtime/spec.js';
import { hostCharDevice } from '../../src/runtime/runc.js';
import { isCocoonError } from '../../src/errors.js';

type Mount = { destination: string; type: string; source: string; options?: string[] };
type Spec = { root: { path: string; readonly: boolean }; mounts: Mount[]; process: { args: string[]; capabilities: { bounding: string[] } }; linux: { namespaces: { type: string }[]; devices: { path: string }[] } };

const base = { args: ['/cocoon/bin/node', 'launch'], env: ['A=1'], hostname: 'h', memoryRootSize: '256m', hostNetwork: true };

test('the container root is read-only and the app root is a size-limited tmpfs with its own /proc and /dev', () => {
  const spec = buildRuncSpec(base) as unknown as Spec;
  assert.deepEqual(spec.root, { path: 'rootfs', readonly: true });
  const appRoot = spec.mounts.find((m) => m.destination === '/cocoon/root');
  assert.equal(appRoot?.type, 'tmpfs');
  assert.ok(appRoot?.options?.includes('size=256m'));
  for (const sub of ['proc', 'dev', 'dev/pts', 'dev/shm', 'sys']) assert.ok(spec.mounts.some((m) => m.destination === `/cocoon/root/${sub}`), sub);
  const order = spec.mounts.map((m) => m.destination);
  assert.ok(order.indexOf('/cocoon/root') < order.indexOf('/cocoon/root/proc'), 'the tmpfs is mounted before its sub-mounts');
  assert.ok(spec.linux.devices.some((d) => d.path === '/cocoon/root/dev/null'));
  assert.ok(!spec.process.capabilities.bounding.includes('CAP_SYS_ADMIN'));
});

test('host network shares the namespace; --no-host-network gets its own; the sim key is mounted read-only', () => {
  const host = buildRuncSpec({ ...base, simPlatformDir: '/cfg/sim/platform' }) as unknown as Spec;
  assert.ok(!host.linux.namespaces.some((n) => n.type === 'network'));
  const sim = host.mounts.find((m) => m.destination === '/run/cocoon/sim');
  assert.equal(sim?.source, '/cfg/sim/platform');
  assert.ok(sim?.options?.includes('ro'));
  const isolated = buildRuncSpec({ ...base, hostNetwork: false }) as unknown as Spec;
  assert.ok(isolated.linux.namespaces.some((n) => n.type === 'network'));
});

test('only TPM and TEE guest devices may be passed through; dev_t decoding matches the kernel', async () => {
  assert.throws(() => buildRuncSpec({ ...base, devices: [{ path: '/dev/sda', major: 8, minor: 0 }] }), (e) => isCocoonError(e, 'BAD_USAGE'));
  const spec = buildRuncSpec({ ...base, devices: [{ path: '/dev/tpmrm0', major: 253, minor: 65536 }] }) as unknown as Spec;
  assert.ok(spec.linux.devices.some((d) => d.path === '/dev/tpmrm0'));
  assert.deepEqual(await hostCharDevice('/dev/null'), { path: '/dev/null', major: 1, minor: 3 });
  assert.deepEqual(await hostCharDevice('/dev/urandom'), { path: '/dev/urandom', major: 1, minor: 9 });
  await assert.rejects(hostCharDevice('/etc/passwd'), (e) => isCocoonError(e, 'RUNTIME_FAILED'));
});

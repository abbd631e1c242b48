import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildAppArgv, buildAppEnv, writeInjectedFile } from '../../src/launcher/inject.js';
import { resolveUser } from '../../src/launcher/user.js';
import { chooseAttester } from '../../src/launcher/detect.js';
import { launcherConfigFromEnv } from '../../src/launcher/config.js';
import { superviseApp } from '../../src/launcher/supervise.js';
import { createLauncherLog } from '../../src/launcher/log.js';
import { isCocoonError } from '../../src/errors.js';

const execHelper = join(import.meta.dirname, '../../dist/launcher-rootfs/cocoon/bin/cocoon-exec');
const silentLog = createLauncherLog({ write: () => true } as unknown as NodeJS.WritableStream);

async function tempRoot(t: { after: (fn: () => Promise<void>) => void }) {
  const dir = await mkdtemp(join(tmpdir(), 'cocoon-root-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

test('injected files land inside the root with their mode, creating parents', async (t) => {
  const root = await tempRoot(t);
  const path = await writeInjectedFile(root, { path: '/run/cocoon/redis.conf', mode: 0o400, content: Buffer.from('requirepass x\n') }, { uid: 0, gid: 0 });
  assert.equal(path, '/run/cocoon/redis.conf');
  assert.equal(await readFile(join(root, 'run/cocoon/redis.conf'), 'utf8'), 'requirepass x\n');
  assert.equal((await stat(join(root, 'run/cocoon/redis.conf'))).mode & 0o777, 0o400);
});

test('injected files cannot escape the root through .., symlinked dirs or a symlinked target', async (t) => {
  const root = await tempRoot(t);
  const outside = await tempRoot(t);
  await symlink(outside, join(root, 'etc'));
  await assert.rejects(writeInjectedFile(root, { path: '/etc/passwd', mode: 0o600, content: Buffer.from('x') }, { uid: 0, gid: 0 }), (e) => isCocoonError(e, 'PATH_TRAVERSAL'));
  await assert.rejects(writeInjectedFile(root, { path: '/../../x', mode: 0o600, content: Buffer.from('x') }, { uid: 0, gid: 0 }), (e) => isCocoonError(e, 'PATH_TRAVERSAL'));
  await assert.rejects(writeInjectedFile(root, { path: 'relative', mode: 0o600, content: Buffer.from('x') }, { uid: 0, gid: 0 }), (e) => isCocoonError(e, 'POLICY_INVALID'));
  await mkdir(join(root, 'run'));
  await symlink(join(outside, 'target'), join(root, 'run', 'secret'));
  await assert.rejects(writeInjectedFile(root, { path: '/run/secret', mode: 0o600, content: Buffer.from('x') }, { uid: 0, gid: 0 }));
  assert.equal(existsSync(join(outside, 'target')), false);
  assert.equal(existsSync(join(outside, 'passwd')), false);
});

test('users resolve from the image passwd/group like Docker does', async (t) => {
  const root = await tempRoot(t);
  await mkdir(join(root, 'etc'));
  await writeFile(join(root, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\nredis:x:999:998::/var/lib/redis:/usr/sbin/nologin\n');
  await writeFile(join(root, 'etc/group'), 'root:x:0:\nredis:x:998:\nextra:x:1234:redis\n');
  assert.deepEqual(await resolveUser(root, ''), { uid: 0, gid: 0, groups: [0], home: '/root' });
  assert.deepEqual(await resolveUser(root, 'redis'), { uid: 999, gid: 998, groups: [998, 1234], home: '/var/lib/redis' });
  assert.deepEqual(await resolveUser(root, '999:0'), { uid: 999, gid: 0, groups: [0, 1234], home: '/var/lib/redis' });
  assert.equal((await resolveUser(root, '4242')).gid, 4242);
  await assert.rejects(resolveUser(root, 'nobody-here'), (e) => isCocoonError(e, 'APP_START_FAILED'));
  await assert.rejects(resolveUser(root, 'redis:nogroup'), (e) => isCocoonError(e, 'APP_START_FAILED'));
});

test('app env overlays released values; argv follows Entrypoint + (args | Cmd)', () => {
  assert.deepEqual(buildAppEnv(['PATH=/bin', 'A=1'], { A: '2', B: '3' }, '/home/x'), ['PATH=/bin', 'A=2', 'HOME=/home/x', 'B=3']);
  assert.deepEqual(buildAppArgv(['/entry'], ['cmd'], null), ['/entry', 'cmd']);
  assert.deepEqual(buildAppArgv([], ['redis-server'], ['redis-server', '/run/cocoon/redis.conf']), ['redis-server', '/run/cocoon/redis.conf']);
  assert.throws(() => buildAppArgv([], [], undefined), (e) => isCocoonError(e, 'APP_START_FAILED'));
});

test('no TEE and no explicit sim: refuses and lists every probe', () => {
  assert.throws(
    () => chooseAttester(undefined, '/x', () => false),
    (e) => isCocoonError(e, 'TEE_NOT_FOUND') && /configfs-tsm/.test(e.message) && /tpmrm0/.test(e.message) && /COCOON_TEE=sim/.test(e.message),
  );
  assert.equal(chooseAttester('sim', '/x', () => false).attester.tee, 'sim');
  assert.equal(chooseAttester(undefined, '/x', (p) => p === '/dev/tpmrm0').attester.tee, 'tpm');
});


test('launcher settings are validated', () => {
  assert.throws(() => launcherConfigFromEnv({}), (e) => isCocoonError(e, 'BAD_USAGE'));
  assert.throws(() => launcherConfigFromEnv({ COCOON_KBS_URL: 'ftp://x' }), (e) => isCocoonError(e, 'BAD_USAGE'));
  assert.throws(() => launcherConfigFromEnv({ COCOON_KBS_URL: 'http://x', COCOON_TEE: 'nope' }), (e) => isCocoonError(e, 'BAD_USAGE'));
  assert.throws(() => launcherConfigFromEnv({ COCOON_KBS_URL: 'http://x', COCOON_KBS_RETRIES: '-1' }), (e) => isCocoonError(e, 'BAD_USAGE'));
  const c = launcherConfigFromEnv({ COCOON_KBS_URL: 'http://127.0.0.1:1/', COCOON_TEE: 'sim' });
  assert.equal(c.kbsUrl, 'http://127.0.0.1:1');
  assert.equal(c.rootDir, '/cocoon/root');
});

const canExec = existsSync(execHelper) && process.getuid?.() === 0;

test('supervised app: exit status, env scrubbed to the app env, privileges dropped', { skip: canExec ? false : 'needs root and dist/ (npm run build)' }, async (t) => {
  const dir = await tempRoot(t);
  const status = await superviseApp(
    { execHelper, root: '/', uid: 65534, gid: 65534, groups: [65534], cwd: '/', argv: ['/bin/sh', '-c', 'test "$(id -u)" = 65534 && test "$(id -g)" = 65534 && exit 7; exit 9'], env: ['PATH=/usr/bin:/bin'], stopGraceMs: 1000 },
    silentLog,
  );
  assert.equal(status, 7, 'the app runs as the requested uid/gid');
  const status2 = await superviseApp(
    { execHelper, root: '/', uid: 0, gid: 0, groups: [], cwd: dir, argv: ['/bin/sh', '-c', 'env > env.txt; exit 3'], env: ['PATH=/usr/bin:/bin', 'ONLY=app'], stopGraceMs: 1000 },
    silentLog,
  );
  assert.equal(status2, 3);
  const env = (await readFile(join(dir, 'env.txt'), 'utf8')).split('\n');
  assert.ok(env.includes('ONLY=app'));
  assert.ok(!env.some((l) => l.startsWith('COCOON_') || l.startsWith('NODE_')), 'launcher env must not leak');
});

test('supervised app: SIGTERM is forwarded and the app is killed after the grace period', { skip: canExec ? false : 'needs root and dist/ (npm run build)' }, async () => {
  const started = Date.now();
  const pending = superviseApp(
    { execHelper, root: '/', uid: 0, gid: 0, groups: [], cwd: '/', argv: ['/bin/sh', '-c', "trap '' TERM; sleep 30 & wait; sleep 30"], env: ['PATH=/usr/bin:/bin'], stopGraceMs: 300 },
    silentLog,
  );
  await new Promise((r) => setTimeout(r, 200));
  process.emit('SIGTERM');
  const status = await pending;
  assert.equal(status, 128 + 9, 'killed by SIGKILL after the grace period');
  assert.ok(Date.now() - started < 5000);
  const polite = superviseApp({ execHelper, root: '/', uid: 0, gid: 0, groups: [], cwd: '/', argv: ['/bin/sleep', '30'], env: ['PATH=/usr/bin:/bin'], stopGraceMs: 5000 }, silentLog);
  await new Promise((r) => setTimeout(r, 200));
  process.emit('SIGTERM');
  assert.equal(await polite, 128 + 15);
});

test('orphans of the app are reaped by the exec helper (no zombies pile up)', { skip: canExec ? false : 'needs root and dist/ (npm run build)' }, async () => {
  // The app double-forks three short-lived grandchildren: once orphaned they must be adopted by
  // the helper (a subreaper) and, after they exit, reaped by it.
  const script = [
    'for i in 1 2 3; do sh -c "sleep 0.4 &"; done; sleep 0.1',
    'n=$(ps -o pid= --ppid $PPID | wc -l); [ "$n" -eq 4 ] || exit $((10 + n))', // app + 3 adopted orphans
    'sleep 0.8; exit $(ps -o stat= --ppid $PPID | grep -c "^Z")',
  ].join('; ');
  const status = await superviseApp({ execHelper, root: '/', uid: 0, gid: 0, groups: [], cwd: '/', argv: ['/bin/sh', '-c', script], env: ['PATH=/usr/bin:/bin'], stopGraceMs: 1000 }, silentLog);
  assert.ok(status < 10, `orphans were not adopted by the exec helper (${status - 10} children seen)`);
  assert.equal(status, 0, `${status} zombie(s) left under the exec helper`);
});

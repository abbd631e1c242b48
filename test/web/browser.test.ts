/**
 * The dashboard in a real browser: Debian Chromium driven by playwright-core against a real
 * KBS (startKbs, sim verifier) seeded through the owner client. Screenshots are kept in a temp
 * directory (printed) for review.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startKbs } from '../../src/kbs/app.js';
import { attestAndFetch } from '../../src/kbs/client/rcar.js';
import { OwnerClient } from '../../src/kbs/client/owner.js';
import { createOwnerKey, loadOwnerPrivateKey, loadOwnerPublicJwk } from '../../src/kbs/owner-key.js';
import { createBrokerVerifier } from '../../src/kbs/verifier.js';
import { mintUiLoginToken } from '../../src/kbs/ui/login-token.js';
import { SimAttester } from '../../src/attester/sim.js';
import { createSimPlatform } from '../../src/attester/sim-platform.js';
import { packageRoot } from '../../src/util/package-root.js';
import { MEASUREMENT, POLICY_YAML } from '../kbs/helpers.js';

const CHROMIUM = '/usr/bin/chromium';
const ARGS = ['--no-sandbox', '--disable-background-networking', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'];

const jwkYaml = (j: Record<string, unknown>) => `{ kty: ${String(j.kty)}, crv: ${String(j.crv)}, x: ${String(j.x)}, y: ${String(j.y)} }`;
const governed = (owners: Record<string, unknown>[], measurement: string) => `name: shop/web
owners:
${owners.map((o, i) => `  - { name: owner-${i + 1}, key: ${jwkYaml(o)} }`).join('\n')}
approvals: { threshold: 2 }
secrets:
  session-key: { kind: random, size: 32, encoding: base64 }
workloads:
  web:
    accept:
      - tee: [sim]
        measurement: "${measurement}"
    secrets: [session-key]
    env: { SESSION_KEY: "{{ secret.session-key }}" }
`;

test('dashboard in Chromium: sign in, live attestation, approve, audit chain, signed-out browser', { timeout: 90_000 }, async (t) => {
  if (!existsSync(CHROMIUM)) {
    t.skip(`SKIPPED: ${CHROMIUM} not installed (scripts/setup.sh installs Debian chromium)`);
    return;
  }
  if (!existsSync(join(packageRoot(), 'dist', 'web', 'app.js'))) {
    t.skip('SKIPPED: dist/web not built (node scripts/build.mjs)');
    return;
  }
  const { chromium } = await import('playwright-core');
  const dir = mkdtempSync(join(tmpdir(), 'cocoon-ui-browser-'));
  const shots = mkdtempSync(join(tmpdir(), 'cocoon-ui-screenshots-'));
  const profile = mkdtempSync(join(tmpdir(), 'cocoon-ui-profile-'));
  const { rootPem, platformDir } = await createSimPlatform(join(dir, 'platform'));
  const admin = await createOwnerKey(join(dir, 'admin.jwk'));
  const second = await createOwnerKey(join(dir, 'second.jwk'));
  const kbs = await startKbs({ dataDir: join(dir, 'data'), verifier: createBrokerVerifier({ simRoots: [rootPem] }), allowSim: true, owners: [await loadOwnerPublicJwk(admin.publicFile)], logger: false, port: 0 });
  const browser = await chromium.launchPersistentContext(profile, { executablePath: CHROMIUM, headless: true, args: ARGS, viewport: { width: 1280, height: 800 }, colorScheme: 'light' });
  const saved: string[] = [];
  try {
    // seed: the demo policy, a governed policy (2 approvals) with an update waiting, one attestation
    const owner = await OwnerClient.create({ kbsUrl: kbs.url, ownerKeyFile: admin.privateFile });
    await owner.applyPolicy(POLICY_YAML);
    await owner.putSecret('demo/redis', 'layer-key', Buffer.alloc(32, 7));
    await owner.applyPolicy(governed([admin.publicJwk, second.publicJwk], MEASUREMENT));
    const proposer = await OwnerClient.create({ kbsUrl: kbs.url, ownerKeyFile: second.privateFile });
    const proposed = await proposer.applyPolicy(governed([admin.publicJwk, second.publicJwk], 'ef'.repeat(48)));
    assert.equal(proposed.pending?.threshold, 2);
    const attester = new SimAttester(platformDir);
    const attest = (measurement: string) =>
      attestAndFetch({
        kbsUrl: kbs.url,
        tee: 'sim',
        evidenceProvider: (rd) => attester.getEvidence(rd, measurement),
        initData: { policy: 'demo/redis', workload: 'redis' },
        resources: ['demo/redis/launch-plan'],
        retry: { attempts: 1, baseDelayMs: 1, maxDelayMs: 1 },
      });
    await attest(MEASUREMENT);
    await assert.rejects(attest('ee'.repeat(48)), /POLICY_DENIED|denied|measurement/i);

    const cspViolations: string[] = [];
    const page = await browser.newPage();
    page.setDefaultTimeout(10_000);
    page.on('console', (m) => {
      if (/Content Security Policy|Refused to/i.test(m.text())) cspViolations.push(m.text());
    });
    const nav = (name: string) => page.getByRole('navigation', { name: 'Sections' }).getByRole('link', { name, exact: true }).click();
    const shot = async (name: string) => {
      const file = join(shots, `${name}.png`);
      await page.screenshot({ path: file, fullPage: false });
      saved.push(file);
    };

    // signed out: nothing but the login page; the API answers 401
    await page.goto(`${kbs.url}/ui/`);
    await page.getByRole('heading', { name: /Cocoon dashboard/ }).waitFor();
    assert.equal(await page.getByText('demo/redis').count(), 0);
    const status = await page.evaluate(async () => (await fetch('/ui/api/overview')).status);
    assert.equal(status, 401);
    await shot('login-1280x800-light');

    // sign in with a login link (fragment); the fragment is gone afterwards
    const key = await loadOwnerPrivateKey(admin.privateFile);
    const kbsId = (await owner.identity()).id;
    await page.goto(`${kbs.url}/ui/#login=${await mintUiLoginToken(key, kbsId, { role: 'owner' })}`);
    await page.getByRole('heading', { name: 'Overview' }).waitFor();
    assert.equal(await page.evaluate('location.hash'), '#/overview');
    await page.getByText('INSECURE:').first().waitFor();
    await page.getByText('Deployment CA').waitFor();
    await shot('overview-1280x800-light');

    // live: an attestation appears in the events table without a reload
    await nav('Events');
    await page.getByRole('heading', { name: 'Attestation events' }).waitFor();
    await page.locator('.stream-live').waitFor();
    // the seeded events must be on screen before the live one arrives
    await page.locator('tbody tr').first().waitFor();
    assert.equal(await page.locator('tbody tr.fresh').count(), 0);
    await attest(MEASUREMENT);
    await page.locator('tbody tr.fresh').first().waitFor({ timeout: 10_000 });
    // the attestation and the launch-plan release it was followed by, and nothing else
    await page.locator('tbody tr.fresh').nth(1).waitFor();
    assert.equal(await page.locator('tbody tr.fresh').count(), 2);
    const liveAttest = page.locator('tbody tr.fresh', { hasText: 'attest' }).filter({ hasText: 'accepted' });
    await liveAttest.first().waitFor();
    await liveAttest.first().getByRole('button', { name: /details/i }).click();
    await page.getByRole('heading', { name: 'Verified claims' }).waitFor();
    await page.getByText(`"measurement": "${MEASUREMENT}"`).waitFor();
    await shot('events-1280x800-light');

    // approve the pending update of shop/web (2 of 2: applied as version 2)
    await nav('Policies');
    await page.getByRole('link', { name: 'shop/web' }).click();
    await page.getByRole('heading', { name: /shop\/web/ }).waitFor();
    await page.getByText('1/2 approvals').waitFor();
    await shot('policy-pending-1280x800-light');
    await page.getByRole('button', { name: 'Approve' }).click();
    await page.getByText('Approved: now version 2').waitFor();
    await page.getByText('version 2', { exact: true }).waitFor();
    assert.equal((await owner.getPolicy('shop/web')).version, 2);
    await page.getByRole('heading', { name: 'Current version' }).scrollIntoViewIfNeeded();
    await shot('policy-yaml-1280x800-light');

    // the audit chain verifies
    await nav('Audit log');
    await page.locator('[data-chain="ok"]').waitFor();
    assert.match(await page.locator('[data-chain]').innerText(), /Chain verified/);
    await page.getByText('policy.apply').first().waitFor();
    await shot('audit-1280x800-light');

    // keyboard (after a reload: the session cookie survives it): Tab reaches the skip link, then the nav
    await page.reload();
    await page.getByRole('heading', { name: 'Audit log' }).waitFor();
    await page.keyboard.press('Tab');
    assert.equal(await page.evaluate('document.activeElement && document.activeElement.textContent'), 'Skip to content');
    await page.keyboard.press('Enter');
    assert.equal(await page.evaluate('document.activeElement && document.activeElement.id'), 'main');

    // dark, and phone width
    await page.emulateMedia({ colorScheme: 'dark' });
    // the palette follows the system unless the theme switch pins one (data-theme)
    const bodyBg = (theme: string | null) => page.evaluate(`(${theme === null ? 'delete document.documentElement.dataset.theme' : `document.documentElement.dataset.theme = '${theme}'`}, getComputedStyle(document.body).backgroundColor)`);
    assert.equal(await bodyBg(null), 'rgb(17, 21, 28)');
    assert.equal(await bodyBg('light'), 'rgb(247, 248, 250)');
    assert.equal(await bodyBg('dark'), 'rgb(17, 21, 28)');
    await page.emulateMedia({ colorScheme: 'light' });
    assert.equal(await bodyBg(null), 'rgb(247, 248, 250)');
    assert.equal(await bodyBg('dark'), 'rgb(17, 21, 28)');
    assert.equal(await bodyBg(null), 'rgb(247, 248, 250)');
    await page.emulateMedia({ colorScheme: 'dark' });
    await nav('Workloads');
    await page.getByRole('heading', { name: 'Workloads' }).waitFor();
    await page.getByText('Accept rules').first().waitFor();
    await shot('workloads-1280x800-dark');
    await nav('Overview');
    await page.getByRole('heading', { name: 'Overview' }).waitFor();
    await shot('overview-1280x800-dark');
    await page.setViewportSize({ width: 390, height: 844 });
    await nav('Secrets');
    await page.getByRole('heading', { name: 'Secrets' }).waitFor();
    await page.getByText('session-key').waitFor();
    await shot('secrets-390x844-dark');
    await page.emulateMedia({ colorScheme: 'light' });
    await nav('Events');
    await page.getByRole('heading', { name: 'Attestation events' }).waitFor();
    await page.locator('tbody tr').first().waitFor();
    await shot('events-390x844-light');

    // no secret value ever reached the page
    const pw = await owner.getSecret('demo/redis', 'redis-password');
    assert.ok(!(await page.content()).includes(pw.toString('utf8')));

    // sign out: back to the login page; a fresh browser context gets nothing either
    await page.setViewportSize({ width: 1280, height: 800 });
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.getByText('Signed out.').waitFor();
    assert.equal(await page.evaluate(async () => (await fetch('/ui/api/policies')).status), 401);
    const stranger = await browser.browser()?.newContext();
    assert.ok(stranger, 'a fresh browser context (a null browser() would skip the signed-out check)');
    const p2 = await stranger.newPage();
    await p2.goto(`${kbs.url}/ui/#/policies`);
    await p2.getByRole('heading', { name: /Cocoon dashboard/ }).waitFor();
    assert.equal(await p2.getByText('shop/web').count(), 0);
    await stranger.close();
    assert.deepEqual(cspViolations, [], 'no CSP violations');
    t.diagnostic(`screenshots: ${saved.join(' ')}`);
    process.stdout.write(`# dashboard screenshots:\n${saved.map((f) => `#   ${f}`).join('\n')}\n`);
  } finally {
    await browser.close();
    await kbs.close();
    rmSync(dir, { recursive: true, force: true });
    rmSync(profile, { recursive: true, force: true });
  }
});

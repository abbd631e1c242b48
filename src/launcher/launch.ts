import { performance } from 'node:perf_hooks';
import { CocoonError } from '../errors.js';
import { readPayload, decryptPayloadLayers } from '../image/wrapped.js';
import { launcherDigest, workloadMeasurement } from '../image/measure.js';
import { attestAndFetch } from '../kbs/client/rcar.js';
import { parseLaunchPlan } from '../kbs/launch-plan.js';
import { DEFAULT_TLS_LIFECYCLE, type LauncherConfig } from './config.js';
import { chooseAttester } from './detect.js';
import { buildAppArgv, buildAppEnv, writeInjectedFile } from './inject.js';
import type { LauncherLog } from './log.js';
import { superviseApp, type AppOutput } from './supervise.js';
import { resolveUser } from './user.js';
import { openPlanVolumes } from './volumes/session.js';
import { generateWorkloadKey, renewViaAttestation, startPlanTls, workloadCertIfTls } from './tls/index.js';
import { checkGramineLaunch, provisionGramineRootKey } from './gramine.js';
import { cocoonEntryOf, parseInitDataToml } from '../kbs/init-data.js';

/**
 * The launcher's whole job, in order: check what it is about to run against the measured
 * payload, attest, receive the layer key and secrets, decrypt the application root into
 * memory, inject the secrets, start the app and supervise it until it exits.
 * Nothing of the application runs before every layer is authenticated.
 * `appOutput` receives the app's stdout/stderr (default: the launcher's own).
 */
export async function launch(config: LauncherConfig, log: LauncherLog, appOutput?: AppOutput): Promise<number> {
  const t0 = performance.now();
  const payload = await readPayload(config.payloadDir);

  const ownDigest = await launcherDigest(config.launcherDir);
  if (ownDigest !== payload.launcherDigest) {
    throw new CocoonError('MEASUREMENT_MISMATCH', `launcher files do not match the wrapped image (have ${ownDigest}, image says ${payload.launcherDigest})`);
  }
  const measurement = workloadMeasurement({
    launcherDigest: ownDigest,
    layers: payload.layers.map((l) => l.diffID),
    config: payload.config,
    policy: payload.policy,
    workload: payload.workload,
  });
  if (measurement !== payload.measurement) throw new CocoonError('MEASUREMENT_MISMATCH', 'payload measurement does not match its inputs');
  // Outside Gramine the variable is optional; when set it must agree (it can only cause a refusal).
  if (config.libos !== 'gramine' && config.expectedMeasurement !== undefined && config.expectedMeasurement !== measurement) {
    throw new CocoonError('MEASUREMENT_MISMATCH', 'COCOON_EXPECTED_MEASUREMENT differs from the recomputed workload measurement');
  }
  log.info(`workload ${payload.policy}#${payload.workload} measurement ${measurement.slice(0, 16)}…`);
  const initData = { policy: payload.policy, workload: payload.workload, ...(config.initData !== undefined ? { toml: checkInitData(config.initData, payload) } : {}) };

  const { attester, probed } = chooseAttester(config.tee, config.simDir, undefined, config.attester);
  if (config.libos === 'gramine') {
    checkGramineLaunch(config.expectedMeasurement, measurement, attester.tee);
    log.info('Gramine mode: the workload measurement is bound through the manifest (MRENCLAVE)');
  }
  if (attester.tee === 'sim') log.warn('INSECURE: simulated TEE — no hardware protection; for development only');
  else log.info(`TEE: ${attester.tee} (${probed.join('; ')})`);
  if (attester.measure) {
    const extended = await attester.measure({ measurement, policy: payload.policy, workload: payload.workload });
    if (extended) log.info(`extended the workload measurement into ${extended}; the event log goes with the evidence`);
    else log.warn(`${attester.tee}: no runtime measurement register available; the workload measurement is not bound by the evidence (see docs/tee-support.md)`);
  }

  const [org, app] = payload.policy.split('/') as [string, string];
  const evidenceProvider = (reportData: Uint8Array) => attester.getEvidence(reportData, measurement);
  const workloadKey = await generateWorkloadKey(); // TLS key: generated in the TEE, its CSR bound into the evidence
  const t1 = performance.now();
  const fetched = await attestAndFetch({
    kbsUrl: config.kbsUrl,
    tee: attester.tee,
    evidenceProvider,
    initData,
    resources: [`${org}/${app}/launch-plan`],
    csr: workloadKey.csrPem,
    moreResources: workloadCertIfTls(`${org}/${app}/launch-plan`),
    retry: config.retry,
    timeoutMs: config.requestTimeoutMs,
    onRetry: (attempt, error) => log.warn(`KBS not reachable (attempt ${attempt}): ${error.message}; retrying`),
  });
  const plan = parseLaunchPlan(fetched.resources[`${org}/${app}/launch-plan`]);
  if (plan.insecure) log.warn('KBS released secrets for INSECURE simulated evidence');
  const t2 = performance.now();
  log.info(`attested to ${config.kbsUrl} and received the launch plan (${Math.round(t2 - t1)} ms)`);

  if (config.libos === 'gramine') {
    // the application root is an encrypted mount: its key is chosen here, after attestation, before any plaintext
    await provisionGramineRootKey(config.attester.gramineDir);
    log.info('Gramine: set a fresh in-enclave key for the encrypted application root');
  }
  const layers = await decryptPayloadLayers({ payloadDir: config.payloadDir, payload, kek: plan.layerKey, destRoot: config.rootDir, ...(config.libos === 'gramine' ? { options: { libos: 'gramine' as const } } : {}) });
  const t3 = performance.now();
  log.info(`decrypted ${layers.length} layer(s) into the in-memory root (${Math.round(t3 - t2)} ms)`);

  const user = await resolveUser(config.rootDir, payload.config.user);
  for (const file of plan.files) {
    const written = await writeInjectedFile(config.rootDir, file, user);
    log.info(`injected file ${written} (mode ${file.mode.toString(8)})`);
  }
  // Protected volumes (docs/volumes.md): decrypted into the root now, sealed back after the app exits.
  const volumes = await openPlanVolumes(config, plan, {
    token: fetched.token,
    owner: { uid: user.uid, gid: user.gid },
    reattest: async () =>
      (await attestAndFetch({ kbsUrl: config.kbsUrl, tee: attester.tee, evidenceProvider, initData, resources: [], retry: config.retry, timeoutMs: config.requestTimeoutMs })).token,
  }, log);
  const env = buildAppEnv(payload.config.env, plan.env, user.home);
  const argv = buildAppArgv(payload.config.entrypoint, payload.config.cmd, plan.args);
  // Proxies bind before the app starts; a port that cannot be bound refuses the launch.
  const tlsProxies = await startPlanTls(plan, fetched.resources, workloadKey, log, {
    lifecycle: {
      kbsUrl: config.kbsUrl,
      settings: config.tls ?? DEFAULT_TLS_LIFECYCLE,
      timeoutMs: config.requestTimeoutMs,
      // renewal re-attests (a fresh key and CSR in the TEE; counts against maxActivations)
      renew: renewViaAttestation({ kbsUrl: config.kbsUrl, tee: attester.tee, evidenceProvider, initData, retry: config.retry, timeoutMs: config.requestTimeoutMs }),
    },
  }).catch((err: unknown) => {
    volumes?.abort();
    throw err;
  });
  log.info(`starting ${argv[0]} as uid ${user.uid} (ready in ${Math.round(performance.now() - t0)} ms: attest ${Math.round(t2 - t1)} ms, decrypt ${Math.round(t3 - t2)} ms)`);
  const status = await superviseApp(
    {
      execHelper: config.execHelper,
      root: config.rootDir,
      uid: user.uid,
      gid: user.gid,
      groups: user.groups,
      cwd: payload.config.workingDir || '/',
      argv,
      env,
      stopGraceMs: config.stopGraceMs,
      output: appOutput,
    },
    log,
  )
    .catch((err: unknown) => {
      volumes?.abort(); // the app did not start: nothing of this run to seal
      throw err;
    })
    .finally(() => tlsProxies?.close());
  log.info(`application exited with status ${status}`);
  await volumes?.close();
  return status;
}

/**
 * The init-data given to the launcher must select this very workload: the KBS would refuse a
 * mismatch anyway, but refusing here names the cause before anything is sent.
 */
function checkInitData(toml: string, payload: { policy: string; workload: string }): string {
  const entry = cocoonEntryOf(parseInitDataToml(toml).doc);
  if (entry.policy !== payload.policy || entry.workload !== payload.workload) {
    throw new CocoonError('INIT_DATA_MISMATCH', `COCOON_INIT_DATA selects ${entry.policy}#${entry.workload}, but this image is ${payload.policy}#${payload.workload}`);
  }
  return toml;
}

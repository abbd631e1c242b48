import type { Command } from 'commander';
import { chmod, mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { action, createOutput, type Output } from './output.js';
import { parseListen } from './serve.js';
import { CocoonError } from '../errors.js';
import { collect } from './flags.js';

const MAX_INPUT = 4 * 1024 * 1024;

async function readInput(file: string, what: string): Promise<string> {
  if (file === '-') {
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of process.stdin) {
      size += (chunk as Buffer).length;
      if (size > MAX_INPUT) throw new CocoonError('INPUT_TOO_LARGE', `${what} on stdin is larger than ${MAX_INPUT} bytes`);
      chunks.push(chunk as Buffer);
    }
    return Buffer.concat(chunks).toString('utf8');
  }
  try {
    const s = await stat(file);
    if (!s.isFile()) throw new CocoonError('BAD_USAGE', `${what} ${file} is not a file`);
    if (s.size > MAX_INPUT) throw new CocoonError('INPUT_TOO_LARGE', `${what} ${file} is larger than ${MAX_INPUT} bytes`);
    return await readFile(file, 'utf8');
  } catch (err) {
    if (err instanceof CocoonError) throw err;
    throw new CocoonError('IO_ERROR', `cannot read ${what} ${file}: ${(err as Error).message}`, { cause: err });
  }
}

async function writeOut(file: string, text: string, mode = 0o644): Promise<void> {
  try {
    await writeFile(file, text, { mode });
    await chmod(file, mode);
  } catch (err) {
    throw new CocoonError('IO_ERROR', `cannot write ${file}: ${(err as Error).message}`, { cause: err });
  }
}

function intOption(value: string, name: string, min: number, max: number): number {
  if (!/^\d{1,6}$/.test(value)) throw new CocoonError('BAD_USAGE', `${name} must be an integer`);
  const n = Number(value);
  if (n < min || n > max) throw new CocoonError('BAD_USAGE', `${name} must be from ${min} to ${max}`);
  return n;
}

function listenAddress(listen: string): { host: string; port: number } {
  return listen.startsWith(':') ? parseListen(`0.0.0.0${listen}`) : parseListen(listen);
}

function warnIfSim(out: Output, target: string): void {
  if (target === 'sim') out.warn('INSECURE: the webhook config targets the simulated TEE (sim): development clusters only');
}

export function registerK8s(program: Command): void {
  const k8s = program.command('k8s').description('Kubernetes: KBS manifests and Helm-equivalent output, confidential workload transformation, admission webhook');
  const render = k8s.command('render').description('print Kubernetes manifests as multi-document YAML (validated against the Kubernetes schemas)');

  render
    .command('kbs')
    .description('the Key Broker Service: StatefulSet on SQLite (default) or a Deployment of N replicas on PostgreSQL; same objects as deploy/helm/cocoon')
    .option('-f, --values <file>', 'values file (the keys of deploy/helm/cocoon/values.yaml)')
    .option('--replicas <n>', 'replicas (needs PostgreSQL: --postgres-secret)')
    .option('--postgres-secret <name>', 'Secret with the PostgreSQL URL (key "url"); switches to a Deployment on PostgreSQL')
    .option('--sqlite', 'one replica, SQLite on a PersistentVolumeClaim (the default)')
    .option('--namespace <ns>', 'namespace of every object', 'cocoon')
    .option('--release <name>', 'release name (objects are named <release>-kbs, as `helm install <release>`)', 'cocoon')
    .option('--image <ref>', 'KBS image (repository[:tag] or repository@sha256:…)')
    .option('--json', 'print JSON {objects, warnings}')
    .addHelpText('after', '\nExamples:\n  cocoon k8s render kbs > kbs.yaml\n  cocoon k8s render kbs --replicas 3 --postgres-secret kbs-db --namespace cocoon\nSee docs/kubernetes.md.')
    .action(
      action(async (opts: { values?: string; replicas?: string; postgresSecret?: string; sqlite?: boolean; namespace: string; release: string; image?: string; json?: boolean }) => {
        const out = createOutput({ json: Boolean(opts.json) });
        const { renderKbs, parseImageRef } = await import('../k8s/render-kbs.js');
        const { deepMerge, parseValuesYaml } = await import('../k8s/values.js');
        const { toYaml } = await import('../k8s/manifest.js');
        let values: unknown = opts.values ? parseValuesYaml(await readInput(opts.values, 'values file'), opts.values) : {};
        if (opts.sqlite && (opts.postgresSecret || opts.replicas)) throw new CocoonError('BAD_USAGE', '--sqlite excludes --postgres-secret and --replicas (SQLite runs one replica)');
        const flags: Record<string, unknown> = {};
        if (opts.sqlite) flags.store = { type: 'sqlite' };
        if (opts.postgresSecret) flags.store = { type: 'postgres', postgres: { existingSecret: opts.postgresSecret } };
        if (opts.replicas !== undefined) flags.replicas = intOption(opts.replicas, '--replicas', 1, 50);
        if (opts.image) flags.image = parseImageRef(opts.image);
        values = deepMerge(values as Record<string, unknown>, flags);
        const result = renderKbs({ values, namespace: opts.namespace, release: opts.release });
        for (const w of result.warnings) out.warn(w);
        out.result(() => process.stdout.write(toYaml(result.objects)), { objects: result.objects, warnings: result.warnings });
      }),
    );

  render
    .command('workload')
    .description('turn a Deployment/StatefulSet/DaemonSet/Job/CronJob/Pod into a confidential one (wrapped image, launcher env, in-memory root, TEE selection)')
    .requiredOption('-f, --file <file>', 'input manifests (multi-document YAML; - for stdin)')
    .requiredOption('--image <ref>', 'wrapped image (from `cocoon wrap`), ideally pinned by digest')
    .requiredOption('--policy <org/app>', 'policy the wrapped image was made for')
    .requiredOption('--workload <name>', 'workload name in the policy')
    .requiredOption('--kbs <url>', 'Key Broker Service URL as seen from the pod')
    .requiredOption('--target <target>', 'aks-cvm | kata-cc | sgx | sim (sim is INSECURE, development clusters only)')
    .option('--runtime-class <name>', 'runtimeClassName (required for kata-cc: kata-qemu-snp, kata-qemu-tdx, kata-cc-isolation)')
    .option('--vtpm <kind>', 'aks-cvm: snp (az-snp-vtpm, default) or tdx (az-tdx-vtpm)')
    .option('--tpm-resource <name>', 'aks-cvm: extended resource of a TPM device plugin (otherwise the container is privileged to open /dev/tpmrm0)')
    .option('--sgx-plugin <plugin>', 'sgx: intel (sgx.intel.com/epc, default) or aks (kubernetes.azure.com/sgx_epc_mem_in_MiB)')
    .option('--sgx-epc <size>', 'sgx: EPC to request (intel: quantity, default 64Mi; aks: MiB, default 64)')
    .option('--sim-secret <name>', 'sim: Secret with the sim platform key (default cocoon-sim-platform)')
    .option('--container <name>', 'container to wrap when the pod has several')
    .option('--root-size <quantity>', 'size limit of the in-memory application root (e.g. 2Gi)')
    .option('--select <kind/name>', 'workload to transform when the input has several')
    .option('--policy-out <file>', 'write the policy snippet (secrets + env moved out of the manifests) to this file instead of stderr')
    .option('-o, --out <file>', 'write the manifests to this file instead of stdout')
    .option('--json', 'print JSON {objects, warnings, conversions, policySnippet}')
    .addHelpText('after', '\nEnv values from ConfigMaps/Secrets become policy secrets (kind: imported); literal env values and args move to the policy too,\nbecause the launcher starts the app with the image env plus the policy env only. See docs/kubernetes.md.')
    .action(
      action(
        async (opts: {
          file: string;
          image: string;
          policy: string;
          workload: string;
          kbs: string;
          target: string;
          runtimeClass?: string;
          vtpm?: string;
          tpmResource?: string;
          sgxPlugin?: string;
          sgxEpc?: string;
          simSecret?: string;
          container?: string;
          rootSize?: string;
          select?: string;
          policyOut?: string;
          out?: string;
          json?: boolean;
        }) => {
          const out = createOutput({ json: Boolean(opts.json) });
          const { parseManifests, toYaml } = await import('../k8s/manifest.js');
          const { transformManifests } = await import('../k8s/transform.js');
          const { validateAnyKind } = await import('../k8s/validate.js');
          const input = parseManifests(await readInput(opts.file, 'manifest file'), opts.file === '-' ? 'stdin' : opts.file);
          const result = transformManifests(input, {
            image: opts.image,
            policy: opts.policy,
            workload: opts.workload,
            kbsUrl: opts.kbs,
            target: opts.target as never,
            ...(opts.runtimeClass !== undefined ? { runtimeClass: opts.runtimeClass } : {}),
            ...(opts.vtpm !== undefined ? { vtpm: opts.vtpm as 'snp' | 'tdx' } : {}),
            ...(opts.tpmResource !== undefined ? { tpmResource: opts.tpmResource } : {}),
            ...(opts.sgxPlugin !== undefined ? { sgxPlugin: opts.sgxPlugin as 'intel' | 'aks' } : {}),
            ...(opts.sgxEpc !== undefined ? { sgxEpc: opts.sgxEpc } : {}),
            ...(opts.simSecret !== undefined ? { simSecret: opts.simSecret } : {}),
            ...(opts.container !== undefined ? { container: opts.container } : {}),
            ...(opts.rootSize !== undefined ? { rootSize: opts.rootSize } : {}),
            ...(opts.select !== undefined ? { select: opts.select } : {}),
          });
          const { unchecked } = await validateAnyKind(result.objects);
          for (const w of result.warnings) out.warn(w);
          for (const u of unchecked) out.warn(`${u}: not a built-in kind, passed through without schema validation`);
          const snippetYaml = result.policySnippet
            ? `# Policy snippet for ${opts.policy}, workload ${opts.workload}: merge into your policy (docs/policy.md).\n# Values from ConfigMaps/Secrets are kind: imported — set each with \`cocoon secret put ${opts.policy}/<name> --file <file>\`.\n${stringify(result.policySnippet, { lineWidth: 0 })}`
            : '';
          if (snippetYaml && opts.policyOut) await writeOut(opts.policyOut, snippetYaml, 0o644);
          const yamlText = toYaml(result.objects);
          if (opts.out) await writeOut(opts.out, yamlText);
          out.result(
            () => {
              if (!opts.out) process.stdout.write(yamlText);
              if (snippetYaml && !opts.policyOut) process.stderr.write(`\n${snippetYaml}`);
            },
            { objects: result.objects, warnings: result.warnings, conversions: result.conversions, policySnippet: result.policySnippet },
          );
        },
      ),
    );

  render
    .command('webhook')
    .description('the admission webhook: Deployment, Service, ConfigMap, PDB, NetworkPolicy (+ cert-manager Issuer/Certificate and MutatingWebhookConfiguration with --cert-manager)')
    .requiredOption('--config <file>', 'webhook configuration (webhook.yaml; see docs/kubernetes.md)')
    .requiredOption('--image <ref>', 'image with the cocoon CLI as entrypoint')
    .option('--namespace <ns>', 'namespace', 'cocoon')
    .option('--name <name>', 'name of the Deployment/Service', 'cocoon-webhook')
    .option('--replicas <n>', 'replicas', '2')
    .option('--cert-manager', 'let cert-manager issue the serving certificate and inject the caBundle')
    .option('--tls-secret <name>', 'Secret with tls.crt/tls.key (default <name>-tls)')
    .option('--json', 'print JSON {objects}')
    .addHelpText('after', '\nWithout --cert-manager, also run `cocoon k8s webhook-cert --service <name> --namespace <ns>` and apply its output.')
    .action(
      action(async (opts: { config: string; image: string; namespace: string; name: string; replicas: string; certManager?: boolean; tlsSecret?: string; json?: boolean }) => {
        const out = createOutput({ json: Boolean(opts.json) });
        const { parseWebhookConfig } = await import('../k8s/webhook-config.js');
        const { renderWebhook } = await import('../k8s/render-webhook.js');
        const { toYaml } = await import('../k8s/manifest.js');
        const text = await readInput(opts.config, 'webhook config');
        const config = parseWebhookConfig(text, opts.config);
        warnIfSim(out, config.target.target);
        const objects = renderWebhook({
          namespace: opts.namespace,
          image: opts.image,
          configYaml: text,
          name: opts.name,
          replicas: intOption(opts.replicas, '--replicas', 1, 10),
          certManager: Boolean(opts.certManager),
          ...(opts.tlsSecret ? { tlsSecret: opts.tlsSecret } : {}),
        });
        if (!opts.certManager) out.warn(`no cert-manager: create the TLS Secret and the MutatingWebhookConfiguration with \`cocoon k8s webhook-cert --service ${opts.name} --namespace ${opts.namespace}\``);
        out.result(() => process.stdout.write(toYaml(objects)), { objects });
      }),
    );

  k8s
    .command('webhook')
    .description('serve the mutating admission webhook (AdmissionReview v1 over HTTPS)')
    .requiredOption('--tls-cert <file>', 'serving certificate (PEM); re-read every minute')
    .requiredOption('--tls-key <file>', 'serving key (PEM)')
    .requiredOption('--config <file>', 'webhook configuration (webhook.yaml)')
    .option('--listen <host:port>', 'address to listen on (":8443" = all interfaces)', ':8443')
    .option('--log-level <level>', 'fatal|error|warn|info|debug', 'info')
    .addHelpText('after', '\nEndpoints: POST /mutate (AdmissionReview v1), GET /healthz. See docs/kubernetes.md.')
    .action(
      action(async (opts: { tlsCert: string; tlsKey: string; config: string; listen: string; logLevel: string }) => {
        const out = createOutput();
        if (!['fatal', 'error', 'warn', 'info', 'debug'].includes(opts.logLevel)) throw new CocoonError('BAD_USAGE', '--log-level must be fatal|error|warn|info|debug');
        const { host, port } = listenAddress(opts.listen);
        const { loadWebhookConfig } = await import('../k8s/webhook-config.js');
        const { startWebhook } = await import('../k8s/webhook.js');
        const config = await loadWebhookConfig(opts.config);
        warnIfSim(out, config.target.target);
        const hook = await startWebhook({ config, certFile: opts.tlsCert, keyFile: opts.tlsKey, host, port, logger: { level: opts.logLevel } });
        process.stderr.write(`cocoon webhook listening on ${hook.url} (${config.images.length} mapped image(s), target ${config.target.target})\n`);
        await new Promise<void>((resolve) => {
          const stop = () => resolve();
          process.once('SIGINT', stop);
          process.once('SIGTERM', stop);
        });
        await hook.close();
      }),
    );

  k8s
    .command('install-keys')
    .description('init container of the KBS pods: copy kbs-identity.jwk and seal.key from the keys Secret into the data directory (mode 0600)')
    .requiredOption('--from <dir>', 'where the keys Secret is mounted')
    .requiredOption('--to <dir>', 'the KBS data directory')
    .action(
      action(async (opts: { from: string; to: string }) => {
        const { installKeys } = await import('../k8s/keys.js');
        const written = await installKeys(opts.from, opts.to);
        process.stderr.write(`installed ${written.join(', ')}\n`);
      }),
    );

  k8s
    .command('webhook-cert')
    .description('without cert-manager: make a CA and a serving certificate; print the TLS Secret and the MutatingWebhookConfiguration (with caBundle)')
    .requiredOption('--service <name>', 'webhook Service name')
    .requiredOption('--namespace <ns>', 'webhook namespace')
    .option('--secret-name <name>', 'TLS Secret name (default <service>-tls)')
    .option('--days <n>', 'validity in days', '365')
    .option('--dns <name>', 'extra DNS name (repeatable)', collect, [])
    .option('--ip <address>', 'extra IP address (repeatable; e.g. 127.0.0.1 for local tests)', collect, [])
    .option('--out-dir <dir>', 'also write ca.crt, tls.crt and tls.key (0600) here')
    .option('--json', 'print JSON {objects, caPem, certPem, notAfter} (no private key)')
    .action(
      action(async (opts: { service: string; namespace: string; secretName?: string; days: string; dns: string[]; ip: string[]; outDir?: string; json?: boolean }) => {
        const out = createOutput({ json: Boolean(opts.json) });
        const { generateWebhookCerts } = await import('../k8s/certs.js');
        const { renderTlsSecret, renderMutatingWebhookConfiguration } = await import('../k8s/render-webhook.js');
        const { toYaml } = await import('../k8s/manifest.js');
        const certs = await generateWebhookCerts({ service: opts.service, namespace: opts.namespace, validDays: intOption(opts.days, '--days', 1, 3650), extraDns: opts.dns, ips: opts.ip });
        const secret = renderTlsSecret({ name: opts.secretName ?? `${opts.service}-tls`, namespace: opts.namespace, certPem: certs.certPem, keyPem: certs.keyPem, caPem: certs.caPem });
        const mwc = renderMutatingWebhookConfiguration({ service: opts.service, namespace: opts.namespace, caBundlePem: certs.caPem });
        if (opts.outDir) {
          try {
            await mkdir(opts.outDir, { recursive: true, mode: 0o700 });
          } catch (err) {
            throw new CocoonError('IO_ERROR', `cannot create ${opts.outDir}: ${(err as Error).message}`, { cause: err });
          }
          await writeOut(join(opts.outDir, 'ca.crt'), certs.caPem);
          await writeOut(join(opts.outDir, 'tls.crt'), certs.certPem);
          await writeOut(join(opts.outDir, 'tls.key'), certs.keyPem, 0o600);
        }
        out.warn(`the Secret below holds the webhook's private key: apply it, do not commit it (certificate valid until ${certs.notAfter.toISOString()})`);
        out.result(() => process.stdout.write(toYaml([secret, mwc])), { objects: [mwc], caPem: certs.caPem, certPem: certs.certPem, notAfter: certs.notAfter.toISOString() });
      }),
    );
}

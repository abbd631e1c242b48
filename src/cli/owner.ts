import type { Command } from 'commander';
import Table from 'cli-table3';
import { action, createOutput } from './output.js';
import { ownerClient, withOwnerOptions, type OwnerOptions } from './owner-options.js';
import { CocoonError } from '../errors.js';
import { readArgFile } from './flags.js';

const MAX_POLICY_FILE = 256 * 1024;
const MAX_SECRET_FILE = 64 * 1024;


function splitSecretRef(ref: string): [string, string] {
  const m = ref.match(/^([a-z0-9][a-z0-9._-]{0,62}\/[a-z0-9][a-z0-9._-]{0,62})\/([A-Za-z0-9][A-Za-z0-9._-]{0,63})$/);
  if (!m) throw new CocoonError('BAD_USAGE', `secret must be named ORG/APP/NAME, got "${ref}"`);
  return [m[1] as string, m[2] as string];
}

export function registerPolicy(program: Command): void {
  const policy = program.command('policy').description('write, check and apply workload policies (who gets which secrets)');

  policy
    .command('check')
    .description('validate a policy file offline against docs/policy.schema.json and its references (errors name file:line:column)')
    .argument('<file>', 'policy YAML')
    .option('--json', 'print JSON')
    .action(
      action(async (file: string, opts: { json?: boolean }) => {
        const yaml = (await readArgFile(file, MAX_POLICY_FILE, 'policy')).toString('utf8');
        const { parsePolicy } = await import('../policy/parse.js');
        const parsed = parsePolicy(yaml, { file });
        const governance = parsed.owners.length ? `, ${parsed.owners.length} owner(s), updates need ${parsed.approvals.threshold}` : '';
        createOutput(opts).result(`${file}: policy ${parsed.name} is valid (${Object.keys(parsed.workloads).length} workload(s), ${Object.keys(parsed.secrets).length} secret(s)${governance})`, {
          valid: true,
          name: parsed.name,
          workloads: Object.keys(parsed.workloads),
          secrets: Object.keys(parsed.secrets),
          owners: parsed.owners.map((o) => ({ name: o.name, kid: o.kid })),
          approvals: parsed.approvals,
          ...(parsed.predecessor ? { predecessor: parsed.predecessor } : {}),
        });
      }),
    );

  withOwnerOptions(
    policy
      .command('apply')
      .description('apply a policy to the KBS (checked locally first); creates it or updates the current version')
      .argument('<file>', 'policy YAML')
      .option('--predecessor <hash>', 'hash of the version this update replaces (lost-update protection); default: the current head'),
  ).action(
    action(async (file: string, opts: OwnerOptions & { predecessor?: string }) => {
      const yaml = (await readArgFile(file, MAX_POLICY_FILE, 'policy')).toString('utf8');
      const { parsePolicy } = await import('../policy/parse.js');
      parsePolicy(yaml, { file }); // file:line errors before any network or key access
      const client = await ownerClient(opts);
      const ref = await client.applyPolicy(yaml, { file, ...(opts.predecessor ? { predecessor: opts.predecessor } : {}) });
      if (ref.pending) {
        createOutput(opts).result(
          `proposed an update of ${ref.name}: ${ref.pending.approvals}/${ref.pending.threshold} approvals; version ${ref.version} stays active until other owners run\n  cocoon policy approve ${ref.name} ${ref.pending.id}`,
          ref,
        );
      } else createOutput(opts).result(`applied ${ref.name} version ${ref.version} (${ref.hash})`, ref);
    }),
  );

  withOwnerOptions(
    policy
      .command('diff')
      .description('show what applying FILE would change (against the KBS\'s current version, or --against another file offline)')
      .argument('<file>', 'policy YAML')
      .option('--against <file>', 'compare with this policy file instead of asking the KBS (offline)'),
  ).action(
    action(async (file: string, opts: OwnerOptions & { against?: string }) => {
      const yaml = (await readArgFile(file, MAX_POLICY_FILE, 'policy')).toString('utf8');
      const { parsePolicy } = await import('../policy/parse.js');
      const { diffPolicies, formatPolicyDiff } = await import('../policy/diff.js');
      let result: { name: string; current: { version: number; hash: string } | null; changes: { op: string; path: string; from?: unknown; to?: unknown }[] };
      if (opts.against) {
        const base = parsePolicy((await readArgFile(opts.against, MAX_POLICY_FILE, 'policy')).toString('utf8'), { file: opts.against });
        const next = parsePolicy(yaml, { file });
        result = { name: next.name, current: null, changes: diffPolicies(base, next) };
      } else {
        result = await (await ownerClient(opts)).diffPolicy(yaml, { file });
      }
      const head = result.current ? `${result.name}: version ${result.current.version} → ${file}` : `${result.name}: ${opts.against ? `${opts.against} → ${file}` : 'new policy'}`;
      createOutput(opts).result(`${head}\n${formatPolicyDiff(result.changes as never)}`, result);
    }),
  );

  withOwnerOptions(policy.command('workloads').description('list the workloads of a policy with their activation counts').argument('<name>', 'policy name org/app')).action(
    action(async (name: string, opts: OwnerOptions) => {
      const list = await (await ownerClient(opts)).workloads(name);
      createOutput(opts).result(() => {
        const table = new Table({ head: ['WORKLOAD', 'ACTIVATIONS', 'MAX', 'TEE KINDS', 'SECRETS'], style: { head: [] } });
        for (const w of list) table.push([w.name, w.activations, w.maxActivations ?? '-', w.tees.join(','), w.secrets.join(',')]);
        process.stdout.write(table.toString() + '\n');
      }, list);
    }),
  );

  withOwnerOptions(policy.command('pending').description('list updates of a policy waiting for owner approvals').argument('<name>', 'policy name org/app')).action(
    action(async (name: string, opts: OwnerOptions) => {
      const list = await (await ownerClient(opts)).listPending(name);
      createOutput(opts).result(() => {
        if (list.length === 0) {
          process.stdout.write(`no pending updates for ${name}\n`);
          return;
        }
        const table = new Table({ head: ['ID', 'BASE VERSION', 'APPROVALS', 'PROPOSED BY', 'CREATED'], style: { head: [] } });
        for (const p of list) table.push([p.id, p.baseVersion, `${p.approvals.length}/${p.threshold}`, p.proposedBy.slice(0, 16) + '…', p.createdAt]);
        process.stdout.write(table.toString() + '\n');
      }, list);
    }),
  );

  for (const decision of ['approve', 'reject'] as const) {
    withOwnerOptions(
      policy
        .command(decision)
        .description(decision === 'approve' ? 'approve a pending update (it is applied once the approval threshold is reached)' : 'reject a pending update')
        .argument('<name>', 'policy name org/app')
        .argument('<id>', 'pending update id (from `cocoon policy pending`)'),
    ).action(
      action(async (name: string, id: string, opts: OwnerOptions) => {
        const r = await (await ownerClient(opts)).decide(name, id, decision);
        const human =
          r.status === 'applied' ? `approved: ${name} is now version ${r.version ?? '?'} (${r.hash ?? ''})` : r.status === 'rejected' ? `rejected update ${id}` : `approved: ${r.pending?.approvals ?? '?'}/${r.pending?.threshold ?? '?'} approvals`;
        createOutput(opts).result(human, r);
      }),
    );
  }

  withOwnerOptions(policy.command('get').description('print the current version of a policy').argument('<name>', 'policy name org/app')).action(
    action(async (name: string, opts: OwnerOptions) => {
      const current = await (await ownerClient(opts)).getPolicy(name);
      createOutput(opts).result(`# ${current.name} version ${current.version} (${current.hash})\n${current.yaml}`, current);
    }),
  );

  withOwnerOptions(policy.command('history').description('list the versions of a policy').argument('<name>', 'policy name org/app')).action(
    action(async (name: string, opts: OwnerOptions) => {
      const versions = await (await ownerClient(opts)).policyHistory(name);
      createOutput(opts).result(() => {
        const table = new Table({ head: ['VERSION', 'HASH', 'PREDECESSOR', 'CREATED', 'BY'], style: { head: [], border: [] } });
        for (const v of versions) table.push([v.version, v.hash.slice(0, 16) + '…', v.predecessor ? v.predecessor.slice(0, 16) + '…' : '-', v.createdAt, v.createdBy]);
        process.stdout.write(table.toString() + '\n');
      }, versions);
    }),
  );
}

export function registerSecret(program: Command): void {
  const secret = program.command('secret').description('import and read policy secrets (owner API)');

  withOwnerOptions(
    secret
      .command('put')
      .description('upload a secret value for an `imported` or `layer-key` secret of a policy')
      .argument('<ref>', 'ORG/APP/NAME')
      .requiredOption('--file <file>', 'file holding the value (a layer-key file from `cocoon wrap` is base64 and is decoded)'),
  ).action(
    action(async (ref: string, opts: OwnerOptions & { file: string }) => {
      const [policyName, name] = splitSecretRef(ref);
      let value = await readArgFile(opts.file, MAX_SECRET_FILE, 'secret');
      if (name === 'layer-key') {
        const { loadOrCreateKek } = await import('./wrap.js');
        value = (await loadOrCreateKek(opts.file)).kek;
      }
      const result = await (await ownerClient(opts)).putSecret(policyName, name, value);
      createOutput(opts).result(`stored ${policyName}/${name} (${result.kind})`, result);
    }),
  );

  withOwnerOptions(
    secret
      .command('get')
      .description('read a secret the policy marks ownerReadable (printed raw; --json gives base64)')
      .argument('<ref>', 'ORG/APP/NAME'),
  ).action(
    action(async (ref: string, opts: OwnerOptions) => {
      const [policyName, name] = splitSecretRef(ref);
      const value = await (await ownerClient(opts)).getSecret(policyName, name);
      if (opts.json) createOutput(opts).result('', { policy: policyName, name, value: value.toString('base64') });
      else process.stdout.write(value);
    }),
  );

  withOwnerOptions(
    program
      .command('events')
      .description('attestation and release events recorded by the KBS')
      .option('--policy <name>', 'only events of this policy')
      .option('--limit <n>', 'at most this many (newest first)', '50'),
  ).action(
    action(async (opts: OwnerOptions & { policy?: string; limit: string }) => {
      if (!/^\d{1,4}$/.test(opts.limit)) throw new CocoonError('BAD_USAGE', '--limit must be 1–9999');
      const events = await (await ownerClient(opts)).listEvents({ limit: Number(opts.limit), ...(opts.policy ? { policy: opts.policy } : {}) });
      createOutput(opts).result(() => {
        const table = new Table({ head: ['TIME', 'KIND', 'STATUS', 'TEE', 'POLICY', 'WORKLOAD', 'CODE', 'DETAIL'], style: { head: [], border: [] } });
        for (const e of events) table.push([e.at, e.kind, e.status, e.tee + (e.insecure ? ' (INSECURE)' : ''), e.policy ?? '', e.workload ?? '', e.code ?? '', e.detail.slice(0, 60)]);
        process.stdout.write(table.toString() + '\n');
      }, events);
    }),
  );
}

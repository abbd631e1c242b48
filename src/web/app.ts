import { html, render } from 'htm/preact';
import type { VNode } from 'preact';
import { useEffect, useRef, useState } from 'preact/hooks';
import { ApiError, api, setCsrf } from './api.js';
import { lineDiff } from './line-diff.js';
import { highlightYaml } from './yaml-highlight.js';
import type { AuditEntry, AuditVerdict, Overview, PendingView, PolicyDetail, PolicySummary, SecretView, SelfAttestationStatus, Session, UiEvent, VersionView, WorkloadView } from '../kbs/ui/wire.js';

// ---------- small helpers ----------

const short = (s: string | null | undefined, n = 12): string => (!s ? '—' : s.length > n ? `${s.slice(0, n)}…` : s);
const pad = (n: number) => String(n).padStart(2, '0');
function fmtTime(v: string | number): string {
  const d = new Date(v);
  if (Number.isNaN(d.getTime())) return '—';
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}
function ago(v: string): string {
  const s = Math.round((Date.now() - new Date(v).getTime()) / 1000);
  if (s < 60) return `${Math.max(s, 0)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}
const errText = (e: unknown) => (e instanceof ApiError ? `${e.message} [${e.code}]` : String(e));

type Loaded<T> = { data?: T; error?: string; loading: boolean };
function useApi<T>(path: string | null, deps: unknown[] = []): Loaded<T> & { reload: () => void } {
  const [state, setState] = useState<Loaded<T>>({ loading: true });
  const [n, setN] = useState(0);
  useEffect(() => {
    if (path === null) return;
    let live = true;
    setState((s) => ({ ...s, loading: true }));
    api<T>(path)
      .then((data) => live && setState({ data, loading: false }))
      .catch((e: unknown) => {
        if (!live) return;
        if (e instanceof ApiError && e.status === 401) window.dispatchEvent(new CustomEvent('cocoon-signed-out'));
        setState({ error: errText(e), loading: false });
      });
    return () => {
      live = false;
    };
  }, [path, n, ...deps]);
  return { ...state, reload: () => setN((x) => x + 1) };
}

function StatusBadge({ status }: { status: string }): VNode {
  const label = status === 'affirming' ? 'accepted' : status === 'contraindicated' ? 'refused' : status;
  return html`<span class=${`badge badge-${status}`}>${label}</span>`;
}

function Problem({ text }: { text?: string }): VNode | null {
  return text ? html`<p class="problem" role="alert">${text}</p>` : null;
}

function Yaml({ text, label }: { text: string; label: string }): VNode {
  const lines = highlightYaml(text);
  return html`<pre class="code yaml" tabindex="0" aria-label=${label}><code>${lines.map(
    (tokens, i) => html`<span class="line" key=${i}><span class="ln" aria-hidden="true">${i + 1}</span>${tokens.map((t) => (t.t === 'plain' ? t.v : html`<span class=${`y-${t.t}`}>${t.v}</span>`))}</span>`,
  )}</code></pre>`;
}

function Diff({ before, after, label }: { before: string; after: string; label: string }): VNode {
  const lines = lineDiff(before, after);
  const added = lines.filter((l) => l.op === '+').length;
  const removed = lines.filter((l) => l.op === '-').length;
  return html`<div>
    <p class="muted">${added} line(s) added, ${removed} removed</p>
    <pre class="code diff" tabindex="0" aria-label=${label}><code>${lines.map(
      (l, i) => html`<span key=${i} class=${l.op === '+' ? 'd-add' : l.op === '-' ? 'd-del' : 'd-same'}><span class="d-op" aria-hidden="true">${l.op}</span>${l.text}</span>`,
    )}</code></pre>
  </div>`;
}

/** What `cocoon attest` would see: the TEE, the measurement and whether the evidence binds it. */
function selfAttestationFacts(sa: SelfAttestationStatus): VNode {
  if (!sa.available) return html`<span class="muted">not available: ${sa.reason}</span>`;
  return html`<div>
      <span class=${sa.insecure ? 'badge badge-error' : 'badge badge-affirming'}>${sa.tee}</span>
      ${sa.insecure ? html` <strong>INSECURE:</strong> simulated TEE` : null}
      <span class="muted"> · GET /cocoon/v1/attestation (cocoon attest)</span>
    </div>
    <div>measurement <code class="wrap">${sa.measurement}</code></div>
    <div class="muted">${sa.measurementBound ? (sa.register ? `extended into ${sa.register}; the event log goes with the evidence` : 'signed in the simulated report') : 'not bound by the evidence (no runtime measurement register): verifiers check the TEE launch measurement'}</div>`;
}

// ---------- views ----------

function OverviewView({ tick }: { tick: number }): VNode {
  const ov = useApi<Overview>('/ui/api/overview', [tick]);
  if (ov.error) return html`<${Problem} text=${ov.error} />`;
  if (!ov.data) return html`<p class="muted">Loading…</p>`;
  const { kbs, counts, ca } = ov.data;
  const card = (label: string, value: number | string, href?: string) =>
    html`<div class="card"><div class="card-value">${value}</div><div class="card-label">${href ? html`<a href=${href}>${label}</a>` : label}</div></div>`;
  return html`<section aria-labelledby="h-overview">
    <h1 id="h-overview">Overview</h1>
    ${kbs.warning ? html`<p class="warning" role="status"><strong>INSECURE:</strong> ${kbs.warning.replace(/^INSECURE:\s*/, '')}. Never use this KBS in production.</p>` : null}
    <div class="cards">
      ${card('policies', counts.policies ?? 0, '#/policies')} ${card('workloads', counts.workloads ?? 0, '#/workloads')} ${card('secrets', counts.secrets ?? 0, '#/secrets')}
      ${card('pending updates', counts.pendingUpdates ?? 0, '#/policies')} ${card('attestations (24 h)', counts.attestations24h ?? 0, '#/events')}
      ${card('refused (24 h)', counts.refused24h ?? 0, '#/events')} ${card('audit entries', counts.auditEntries ?? 0, '#/audit')}
    </div>
    <h2>KBS identity</h2>
    <dl class="facts">
      <dt>Identity</dt><dd><code class="wrap">${kbs.id}</code></dd>
      <dt>Protocol</dt><dd>CoCo KBS ${kbs.protocol}</dd>
      <dt>Simulated TEEs</dt><dd>${kbs.allowSim ? html`<span class="badge badge-error">accepted (--allow-sim)</span>` : html`<span class="badge badge-affirming">refused</span>`}</dd>
      <dt>Self-attestation</dt><dd>${selfAttestationFacts(kbs.selfAttestation)}</dd>
    </dl>
    <h2>Deployment CA</h2>
    ${ca.available
      ? html`<dl class="facts">
          ${[['Root', ca.root], ['Intermediate', ca.intermediate]].map(([label, c]) =>
            c && typeof c === 'object'
              ? html`<dt>${label as string}</dt><dd><div>${c.subject}</div><div>SHA-256 <code class="wrap">${c.sha256}</code></div><div class="muted">serial ${short(c.serial, 20)} · valid until ${fmtTime(c.notAfter)}</div></dd>`
              : null,
          )}
        </dl>`
      : html`<p class="muted">Deployment CA: ${ca.reason ?? 'not available on this KBS'}.</p>`}
  </section>`;
}

function PoliciesView(): VNode {
  const list = useApi<{ policies: PolicySummary[] }>('/ui/api/policies');
  return html`<section aria-labelledby="h-policies">
    <h1 id="h-policies">Policies</h1>
    <${Problem} text=${list.error} />
    ${list.data && list.data.policies.length === 0 ? html`<p class="muted">No policies you may read. Apply one with <code>cocoon policy apply FILE</code>.</p>` : null}
    ${list.data && list.data.policies.length > 0
      ? html`<div class="table-wrap"><table>
          <thead><tr><th scope="col">Policy</th><th scope="col">Version</th><th scope="col">Workloads</th><th scope="col">Secrets</th><th scope="col">Pending</th><th scope="col" class="hide-narrow">Updated</th></tr></thead>
          <tbody>${list.data.policies.map(
            (p) => html`<tr key=${p.name}>
              <th scope="row"><a href=${`#/policies/${p.name}`}>${p.name}</a></th>
              <td>v${p.version}</td><td>${p.workloads}</td><td>${p.secrets}</td>
              <td>${p.pending > 0 ? html`<span class="badge badge-pending">${p.pending} waiting</span>` : '—'}${p.threshold > 1 ? html` <span class="muted">(${p.threshold} approvals)</span>` : null}</td>
              <td class="hide-narrow">${fmtTime(p.createdAt)}</td>
            </tr>`,
          )}</tbody></table></div>`
      : null}
  </section>`;
}

function PendingCard({ p, current, session, onDone }: { p: PendingView; current: VersionView; session: Session; onDone: (message: string) => void }): VNode {
  const [busy, setBusy] = useState(false);
  const [err, setErr] = useState<string | undefined>();
  const decided = p.approvals.includes(session.kid) || p.rejections.includes(session.kid);
  const decide = async (decision: 'approve' | 'reject') => {
    setBusy(true);
    setErr(undefined);
    try {
      const r = await api<{ status: string; version?: number; pending?: { approvals: number; threshold: number } }>(`/ui/api/policies/${p.policy}/pending/${p.id}/${decision}`, { method: 'POST', body: {} });
      onDone(r.status === 'applied' ? `Approved: now version ${r.version ?? '?'}` : r.status === 'rejected' ? `Rejected update ${p.id}` : `Approved: ${r.pending?.approvals ?? '?'}/${r.pending?.threshold ?? '?'} approvals`);
    } catch (e) {
      setErr(errText(e));
    } finally {
      setBusy(false);
    }
  };
  return html`<article class="pending" aria-label=${`pending update ${p.id}`}>
    <h3>Update proposed ${fmtTime(p.createdAt)} <span class="badge badge-pending">${p.approvals.length}/${p.threshold} approvals</span></h3>
    <p class="muted">id <code>${p.id}</code> · by <code title=${p.proposedBy}>${short(p.proposedBy)}</code> · against v${p.baseVersion}</p>
    <${Diff} before=${current.yaml} after=${p.yaml} label=${`changes proposed by update ${p.id}`} />
    ${session.role === 'owner'
      ? html`<div class="actions">
          <button type="button" class="primary" disabled=${busy || decided} onClick=${() => void decide('approve')}>Approve</button>
          <button type="button" class="danger" disabled=${busy || decided} onClick=${() => void decide('reject')}>Reject</button>
          ${decided ? html`<span class="muted">You already decided on this update.</span>` : null}
        </div>`
      : html`<p class="muted">Signed in as auditor (read-only): approving needs the owner role.</p>`}
    <${Problem} text=${err} />
  </article>`;
}

function PolicyView({ name, session }: { name: string; session: Session }): VNode {
  const d = useApi<PolicyDetail>(`/ui/api/policies/${name}`);
  const [open, setOpen] = useState<number | null>(null);
  const [notice, setNotice] = useState<string | undefined>();
  if (d.error) return html`<section><h1>${name}</h1><${Problem} text=${d.error} /></section>`;
  if (!d.data) return html`<p class="muted">Loading…</p>`;
  const p = d.data;
  return html`<section aria-labelledby="h-policy">
    <p><a href="#/policies">← all policies</a></p>
    <h1 id="h-policy">${p.name} <span class="muted">version ${p.current.version}</span></h1>
    <dl class="facts">
      <dt>Hash</dt><dd><code class="wrap">${p.current.hash}</code></dd>
      <dt>Applied</dt><dd>${fmtTime(p.current.createdAt)} by <code title=${p.current.createdBy}>${short(p.current.createdBy)}</code></dd>
      <dt>Owners</dt><dd>${p.owners.length ? p.owners.map((o) => html`<span class="chip" title=${o.kid}>${o.name}</span> `) : html`<span class="muted">KBS administrators</span>`}</dd>
      <dt>Approvals</dt><dd>${p.approvals.threshold} needed per update</dd>
    </dl>
    <h2>Pending updates</h2>
    ${notice ? html`<p role="status" class="ok">${notice}</p>` : null}
    ${p.pending.length === 0 ? html`<p class="muted">None.</p>` : p.pending.map((x) => html`<${PendingCard} key=${x.id} p=${x} current=${p.current} session=${session} onDone=${(m: string) => (setNotice(m), d.reload())} />`)}
    <h2>Current version</h2>
    <${Yaml} text=${p.current.yaml} label=${`${p.name} version ${p.current.version} YAML`} />
    <h2>History</h2>
    <ol class="history">
      ${p.history.map((v, i) => {
        const prev = p.history[i + 1];
        return html`<li key=${v.version}>
          <div class="history-row">
            <strong>v${v.version}</strong> <span class="muted">${fmtTime(v.createdAt)}</span> <code title=${v.hash}>${short(v.hash, 20)}</code>
            ${prev
              ? html`<button type="button" class="link" aria-expanded=${open === v.version} onClick=${() => setOpen(open === v.version ? null : v.version)}>${open === v.version ? 'hide diff' : `diff from v${prev.version}`}</button>`
              : html`<span class="muted">first version</span>`}
          </div>
          ${open === v.version && prev ? html`<${Diff} before=${prev.yaml} after=${v.yaml} label=${`changes from v${prev.version} to v${v.version}`} />` : null}
        </li>`;
      })}
    </ol>
  </section>`;
}

function WorkloadsView({ tick }: { tick: number }): VNode {
  const w = useApi<{ workloads: WorkloadView[] }>('/ui/api/workloads', [tick]);
  return html`<section aria-labelledby="h-workloads">
    <h1 id="h-workloads">Workloads</h1>
    <${Problem} text=${w.error} />
    ${w.data && w.data.workloads.length === 0 ? html`<p class="muted">No workloads.</p>` : null}
    <div class="grid">
      ${(w.data?.workloads ?? []).map(
        (x) => html`<article class="workload" key=${`${x.policy}#${x.name}`} aria-label=${`workload ${x.policy} ${x.name}`}>
          <h2><span class="muted">${x.policy} ·</span> ${x.name}</h2>
          <h3>Accept rules</h3>
          <ul class="rules">${x.accept.map(
            (r, i) => html`<li key=${i}>${r.tee.map((t) => html`<span class="chip">${t}</span> `)}${r.measurement ? html`<div>measurement <code class="wrap">${r.measurement}</code></div>` : null}${r.debug ? html`<div class="badge badge-error">debug allowed</div>` : null}</li>`,
          )}</ul>
          ${x.activations !== null ? html`<p>Activations: <strong>${x.activations}</strong>${x.maxActivations !== null ? ` of at most ${x.maxActivations}` : ''}</p>` : null}
          <p>Secrets: ${x.secrets.length ? x.secrets.map((s) => html`<span class="chip">${s}</span> `) : html`<span class="muted">none</span>`}</p>
          <h3>Last attestation</h3>
          ${x.lastAttestation
            ? html`<p><${StatusBadge} status=${x.lastAttestation.status} /> <span class="chip">${x.lastAttestation.tee}</span> ${ago(x.lastAttestation.at)}${x.lastAttestation.insecure ? html` <span class="badge badge-error">INSECURE sim</span>` : null}</p>
                ${x.lastAttestation.code ? html`<p class="muted">${x.lastAttestation.code}</p>` : null}
                ${x.lastAccepted?.measurement ? html`<p>measurement <code class="wrap">${x.lastAccepted.measurement}</code></p>` : null}`
            : html`<p class="muted">never attested (in the recent events)</p>`}
        </article>`,
      )}
    </div>
  </section>`;
}

function EventDetail({ id, onClose }: { id: string; onClose: () => void }): VNode {
  const d = useApi<{ event: UiEvent; attestation: { available: boolean; claims?: unknown; tcbStatus?: string; advisories?: string[]; reason?: string } }>(`/ui/api/events/${id}`);
  const ref = useRef<HTMLElement>(null);
  useEffect(() => ref.current?.focus(), [id]);
  return html`<aside class="detail" ref=${ref} tabindex="-1" aria-labelledby="h-event">
    <div class="detail-head"><h2 id="h-event">Event details</h2><button type="button" onClick=${onClose}>Close</button></div>
    <${Problem} text=${d.error} />
    ${d.data
      ? html`<dl class="facts">
            <dt>When</dt><dd>${fmtTime(d.data.event.at)}</dd>
            <dt>Result</dt><dd><${StatusBadge} status=${d.data.event.status} /> ${d.data.event.code ?? ''}</dd>
            <dt>Workload</dt><dd>${d.data.event.policy ?? '—'} # ${d.data.event.workload ?? '—'}</dd>
            <dt>TEE</dt><dd>${d.data.event.tee}${d.data.event.insecure ? ' (INSECURE: simulated)' : ''}</dd>
            <dt>Detail</dt><dd class="wrap">${d.data.event.detail}</dd>
            ${d.data.attestation.tcbStatus ? html`<dt>TCB status</dt><dd>${d.data.attestation.tcbStatus}</dd>` : null}
          </dl>
          <h3>Verified claims</h3>
          ${d.data.attestation.available ? html`<pre class="code" tabindex="0" aria-label="verified claims">${JSON.stringify(d.data.attestation.claims, null, 2)}</pre>` : html`<p class="muted">${d.data.attestation.reason}</p>`}`
      : null}
  </aside>`;
}

function EventsView({ live, tick }: { live: UiEvent[]; tick: number }): VNode {
  const [workload, setWorkload] = useState('');
  const [status, setStatus] = useState('');
  const [code, setCode] = useState('');
  const [selected, setSelected] = useState<string | null>(null);
  const q = new URLSearchParams();
  if (workload) q.set('workload', workload);
  if (status) q.set('status', status);
  if (code) q.set('code', code);
  const list = useApi<{ events: UiEvent[]; codes: string[]; workloads: string[]; scanned: number; scanLimit: number }>(`/ui/api/events?${q.toString()}`, [tick]);
  const matches = (e: UiEvent) => (!workload || e.workload === workload) && (!status || e.status === status) && (!code || (code === 'none' ? e.code === null : e.code === code));
  const known = new Set((list.data?.events ?? []).map((e) => e.id));
  const fresh = live.filter((e) => !known.has(e.id) && matches(e));
  const rows = [...fresh, ...(list.data?.events ?? [])];
  const freshIds = new Set(live.map((e) => e.id));
  return html`<section aria-labelledby="h-events">
    <h1 id="h-events">Attestation events</h1>
    <form class="filters" onSubmit=${(ev: Event) => ev.preventDefault()}>
      <label>Workload <select value=${workload} onChange=${(ev: Event) => setWorkload((ev.target as HTMLSelectElement).value)}>
        <option value="">all</option>${(list.data?.workloads ?? []).map((w) => html`<option value=${w}>${w}</option>`)}
      </select></label>
      <label>Result <select value=${status} onChange=${(ev: Event) => setStatus((ev.target as HTMLSelectElement).value)}>
        <option value="">all</option><option value="affirming">accepted</option><option value="contraindicated">refused (policy)</option><option value="error">error</option>
      </select></label>
      <label>Reason code <select value=${code} onChange=${(ev: Event) => setCode((ev.target as HTMLSelectElement).value)}>
        <option value="">all</option><option value="none">none</option>${(list.data?.codes ?? []).map((c) => html`<option value=${c}>${c}</option>`)}
      </select></label>
    </form>
    <${Problem} text=${list.error} />
    ${!list.data && list.loading ? html`<p class="muted">Loading…</p>` : null}
    <div class=${selected ? 'split' : ''} hidden=${!list.data}>
      <div class="table-wrap"><table aria-describedby="events-note">
        <thead><tr><th scope="col">Time</th><th scope="col">Result</th><th scope="col">Workload</th><th scope="col" class="hide-narrow">TEE</th><th scope="col" class="hide-narrow">Kind</th><th scope="col" class="hide-narrow">Reason</th><th scope="col"><span class="sr-only">Details</span></th></tr></thead>
        <tbody>${rows.map(
          (e) => html`<tr key=${e.id} class=${freshIds.has(e.id) ? 'fresh' : ''} data-event-id=${e.id}>
            <td title=${e.at}>${fmtTime(e.at)}</td>
            <td><${StatusBadge} status=${e.status} /></td>
            <td>${e.policy ?? '—'}${e.workload ? html` <strong>#${e.workload}</strong>` : null}</td>
            <td class="hide-narrow"><span class="chip">${e.tee}</span>${e.insecure ? html` <span class="badge badge-error" title="INSECURE: simulated TEE">sim</span>` : null}</td>
            <td class="hide-narrow">${e.kind}${e.resource ? html` <span class="muted">${e.resource}</span>` : null}</td>
            <td class="hide-narrow">${e.code ?? '—'}</td>
            <td><button type="button" class="link" onClick=${() => setSelected(e.id)} aria-label=${`details of event at ${fmtTime(e.at)}`}>Details</button></td>
          </tr>`,
        )}</tbody>
      </table></div>
      ${selected ? html`<${EventDetail} id=${selected} onClose=${() => setSelected(null)} />` : null}
    </div>
    <p id="events-note" class="muted">${rows.length} event(s) shown; filters search the newest ${list.data?.scanLimit ?? 500} events. New attestations appear here live.</p>
  </section>`;
}

function AuditView({ session }: { session: Session }): VNode {
  const [before, setBefore] = useState<number | null>(null);
  const [policy, setPolicy] = useState('');
  const policies = useApi<{ policies: PolicySummary[] }>('/ui/api/policies');
  const a = useApi<{ available: boolean; entries: AuditEntry[]; verdict: AuditVerdict; note?: string }>(`/ui/api/audit?limit=100${before && !policy ? `&before=${before}` : ''}${policy ? `&policy=${policy}` : ''}`);
  const v = a.data?.verdict;
  return html`<section aria-labelledby="h-audit">
    <h1 id="h-audit">Audit log</h1>
    <form class="filters" onSubmit=${(ev: Event) => ev.preventDefault()}>
      <label>Policy <select value=${policy} onChange=${(ev: Event) => (setBefore(null), setPolicy((ev.target as HTMLSelectElement).value))}>
        <option value="">${session.admin ? 'all entries' : 'choose a policy'}</option>${(policies.data?.policies ?? []).map((p) => html`<option value=${p.name}>${p.name}</option>`)}
      </select></label>
    </form>
    <${Problem} text=${a.error} />
    ${v
      ? v.ok
        ? html`<p class="chain chain-ok" role="status" data-chain="ok"><strong>Chain verified:</strong> ${v.count} entries, hashes linked and signed by the KBS key (head <code>${short(v.lastHash, 16)}</code>, checked ${fmtTime(v.checkedAt)}).</p>`
        : html`<p class="chain chain-broken" role="alert" data-chain="broken"><strong>Chain broken</strong> at entry ${v.firstBroken?.seq}: ${v.firstBroken?.message} (${v.firstBroken?.reason}).</p>`
      : null}
    ${a.data?.note ? html`<p class="muted">${a.data.note}</p>` : null}
    ${a.data && a.data.entries.length > 0
      ? html`<div class="table-wrap"><table>
          <thead><tr><th scope="col">#</th><th scope="col">Time</th><th scope="col">Action</th><th scope="col">Actor</th><th scope="col" class="hide-narrow">Policy</th><th scope="col" class="hide-narrow">Detail</th><th scope="col" class="hide-narrow">Hash</th></tr></thead>
          <tbody>${a.data.entries.map(
            (e) => html`<tr key=${e.seq}>
              <td>${e.seq}</td><td>${fmtTime(e.at)}</td><td><code>${e.action}</code></td><td><code title=${e.actor}>${short(e.actor, 16)}</code></td>
              <td class="hide-narrow">${e.policy ?? '—'}</td><td class="hide-narrow detail-cell"><code>${e.detail.length > 160 ? `${e.detail.slice(0, 160)}…` : e.detail}</code></td>
              <td class="hide-narrow"><code title=${e.hash}>${short(e.hash, 10)}</code></td>
            </tr>`,
          )}</tbody></table></div>
          <div class="actions">
            ${before ? html`<button type="button" onClick=${() => setBefore(null)}>Newest</button>` : null}
            ${!policy && (a.data.entries[a.data.entries.length - 1]?.seq ?? 1) > 1 ? html`<button type="button" onClick=${() => setBefore(a.data?.entries[a.data.entries.length - 1]?.seq ?? null)}>Older</button>` : null}
          </div>`
      : null}
    <p class="muted">Signed in as ${session.admin ? 'a KBS administrator' : 'a policy owner'}.</p>
  </section>`;
}

function SecretsView(): VNode {
  const s = useApi<{ secrets: SecretView[] }>('/ui/api/secrets');
  return html`<section aria-labelledby="h-secrets">
    <h1 id="h-secrets">Secrets</h1>
    <p class="muted">Names, kinds and who receives them. Values never leave the KBS for the dashboard.</p>
    <${Problem} text=${s.error} />
    ${s.data
      ? html`<div class="table-wrap"><table>
          <thead><tr><th scope="col" class="hide-narrow">Policy</th><th scope="col">Name</th><th scope="col">Kind</th><th scope="col">Released to</th><th scope="col" class="hide-narrow">Stored</th><th scope="col" class="hide-narrow">Owner readable</th><th scope="col" class="hide-narrow">Shared with</th></tr></thead>
          <tbody>${s.data.secrets.map(
            (x) => html`<tr key=${`${x.policy}/${x.name}`}>
              <td class="hide-narrow">${x.policy}</td><th scope="row">${x.name}<span class="show-narrow muted"> ${x.policy}</span></th><td><span class="chip">${x.kind}</span>${x.scope === 'instance' ? html` <span class="muted">per instance</span>` : null}</td>
              <td>${x.receivers.length ? x.receivers.map((r) => html`<span class="chip">${r}</span> `) : html`<span class="muted">no workload</span>`}</td>
              <td class="hide-narrow">${x.stored === null ? 'never (per instance)' : x.stored ? 'yes' : html`<span class="badge badge-pending">not set</span>`}</td>
              <td class="hide-narrow">${x.ownerReadable ? 'yes' : 'no'}</td>
              <td class="hide-narrow">${x.from ? `imported from ${x.from}` : x.exportedTo.length ? `exported to ${x.exportedTo.join(', ')}` : '—'}</td>
            </tr>`,
          )}</tbody></table></div>`
      : null}
  </section>`;
}

// ---------- shell ----------

function LoginView({ message, onSignedIn }: { message?: string; onSignedIn: (s: Session) => void }): VNode {
  const [value, setValue] = useState('');
  const [err, setErr] = useState<string | undefined>(message);
  const [busy, setBusy] = useState(false);
  const submit = async (ev: Event) => {
    ev.preventDefault();
    const token = value.includes('#login=') ? value.slice(value.indexOf('#login=') + 7) : value.trim();
    setBusy(true);
    try {
      onSignedIn(await signIn(token));
    } catch (e) {
      setErr(errText(e));
    } finally {
      setBusy(false);
    }
  };
  return html`<main id="main" class="login">
    <h1><span class="logo" aria-hidden="true"></span> Cocoon dashboard</h1>
    <p>Sign in with your owner key. On the machine that holds it, run</p>
    <pre class="code"><code>cocoon ui login --kbs ${location.origin} --open</code></pre>
    <p>and open the printed link (add <code>--role auditor</code> for a read-only session). The link holds a single-use token that expires in two minutes.</p>
    <form onSubmit=${submit}>
      <label for="token">Or paste the link or token</label>
      <textarea id="token" rows="3" value=${value} onInput=${(e: Event) => setValue((e.target as HTMLTextAreaElement).value)} autocomplete="off" spellcheck=${false}></textarea>
      <button type="submit" class="primary" disabled=${busy || !value.trim()}>Sign in</button>
    </form>
    <${Problem} text=${err} />
  </main>`;
}

async function signIn(token: string): Promise<Session> {
  const s = await api<Session>('/ui/api/session', { method: 'POST', body: { token } });
  setCsrf(s.csrf);
  return s;
}

const THEMES = ['system', 'light', 'dark'] as const;
type Theme = (typeof THEMES)[number];
function applyTheme(t: Theme): void {
  if (t === 'system') delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = t;
}

const NAV: [string, string][] = [
  ['overview', 'Overview'],
  ['policies', 'Policies'],
  ['workloads', 'Workloads'],
  ['events', 'Events'],
  ['audit', 'Audit log'],
  ['secrets', 'Secrets'],
];

function useHash(): string {
  const [hash, setHash] = useState(location.hash);
  useEffect(() => {
    const on = () => setHash(location.hash);
    window.addEventListener('hashchange', on);
    return () => window.removeEventListener('hashchange', on);
  }, []);
  return hash;
}

function App(): VNode {
  const [session, setSession] = useState<Session | null | undefined>(undefined);
  const [message, setMessage] = useState<string | undefined>();
  const [theme, setTheme] = useState<Theme>(() => {
    const saved = localStorage.getItem('cocoon-theme');
    return saved === 'light' || saved === 'dark' ? saved : 'system';
  });
  const [live, setLive] = useState<UiEvent[]>([]);
  const [tick, setTick] = useState(0);
  const [resyncs, setResyncs] = useState(0);
  const [stream, setStream] = useState<'connecting' | 'live' | 'offline'>('connecting');
  const hash = useHash();

  useEffect(() => applyTheme(theme), [theme]);

  useEffect(() => {
    /** A login link (#login=<token>): sign in once, then drop the token from the address bar and history. */
    const consume = (): Promise<Session> | undefined => {
      const m = /^#login=([A-Za-z0-9_.-]{20,4096})$/.exec(location.hash);
      if (!m) return undefined;
      history.replaceState(null, '', '/ui/#/overview');
      return signIn(m[1] as string);
    };
    const fromLink = consume();
    const start = fromLink ?? api<Session>('/ui/api/session').then((s) => (setCsrf(s.csrf), s));
    start.then(setSession).catch((e: unknown) => {
      if (fromLink) setMessage(`Sign-in failed: ${errText(e)}`);
      setSession(null);
    });
    const onHash = () => {
      const p = consume();
      if (!p) return;
      p.then((s) => {
        setMessage(undefined);
        setSession(s);
        window.dispatchEvent(new HashChangeEvent('hashchange'));
      }).catch((e: unknown) => setMessage(`Sign-in failed: ${errText(e)}`));
    };
    const out = () => {
      setSession(null);
      setMessage('Your session ended. Sign in again.');
    };
    window.addEventListener('hashchange', onHash);
    window.addEventListener('cocoon-signed-out', out);
    return () => {
      window.removeEventListener('hashchange', onHash);
      window.removeEventListener('cocoon-signed-out', out);
    };
  }, []);

  useEffect(() => {
    if (!session) return;
    const es = new EventSource('/ui/api/events/stream');
    setStream('connecting');
    es.addEventListener('hello', () => setStream('live'));
    es.addEventListener('attestation', (ev) => {
      const e = JSON.parse((ev as MessageEvent<string>).data) as UiEvent;
      setLive((l) => [e, ...l.filter((x) => x.id !== e.id)].slice(0, 200));
      setTick((t) => t + 1);
    });
    es.addEventListener('resync', () => {
      setLive([]);
      setTick((t) => t + 1);
      setResyncs((t) => t + 1);
    });
    es.addEventListener('expired', (ev) => {
      es.close();
      let reason = '';
      try {
        reason = String((JSON.parse((ev as MessageEvent<string>).data) as { reason?: unknown }).reason ?? '');
      } catch {
        reason = '';
      }
      setSession(null);
      setMessage(reason === 'signed out' ? 'Signed out.' : 'Your session expired. Sign in again.');
    });
    es.onerror = () => setStream(es.readyState === EventSource.CLOSED ? 'offline' : 'connecting');
    return () => es.close();
  }, [session]);

  if (session === undefined) return html`<main id="main" class="login"><p class="muted">Loading…</p></main>`;
  if (session === null)
    return html`<${LoginView}
      message=${message}
      onSignedIn=${(s: Session) => {
        setMessage(undefined);
        setSession(s);
      }}
    />`;

  const route = hash.replace(/^#\/?/, '') || 'overview';
  const [section = 'overview', ...rest] = route.split('/');
  const signOut = async () => {
    await api('/ui/api/session', { method: 'DELETE' }).catch(() => undefined);
    setSession(null);
    setMessage('Signed out.');
  };
  const nextTheme = THEMES[(THEMES.indexOf(theme) + 1) % THEMES.length] as Theme;
  let view: VNode;
  if (section === 'policies' && rest.length === 2) view = html`<${PolicyView} key=${rest.join('/')} name=${rest.join('/')} session=${session} />`;
  else if (section === 'policies') view = html`<${PoliciesView} />`;
  else if (section === 'workloads') view = html`<${WorkloadsView} tick=${tick} />`;
  else if (section === 'events') view = html`<${EventsView} live=${live} tick=${resyncs} />`;
  else if (section === 'audit') view = html`<${AuditView} session=${session} />`;
  else if (section === 'secrets') view = html`<${SecretsView} />`;
  else view = html`<${OverviewView} tick=${tick} />`;

  return html`<div class="shell">
    <a class="skip" href="#main" onClick=${(e: Event) => (e.preventDefault(), document.getElementById('main')?.focus())}>Skip to content</a>
    <header class="top">
      <a class="brand" href="#/overview"><span class="logo" aria-hidden="true"></span> Cocoon</a>
      <span class=${`stream stream-${stream}`} role="status" aria-live="polite">${stream === 'live' ? 'live' : stream === 'connecting' ? 'connecting…' : 'offline'}</span>
      <span class="who"><span class=${`badge badge-role-${session.role}`}>${session.role}</span> <code title=${session.kid}>${short(session.kid, 10)}</code></span>
      <button type="button" onClick=${() => (localStorage.setItem('cocoon-theme', nextTheme === 'system' ? '' : nextTheme), setTheme(nextTheme))} aria-label=${`theme: ${theme}; switch to ${nextTheme}`}>Theme: ${theme}</button>
      <button type="button" onClick=${() => void signOut()}>Sign out</button>
    </header>
    <nav aria-label="Sections"><ul>
      ${NAV.map(([id, label]) => html`<li key=${id}><a href=${`#/${id}`} aria-current=${section === id ? 'page' : undefined}>${label}</a></li>`)}
    </ul></nav>
    <main id="main" tabindex="-1">${view}</main>
  </div>`;
}

const root = document.getElementById('app');
if (root) render(html`<${App} />`, root);

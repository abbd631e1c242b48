/**
 * TLS proxies run by the launcher (docs/tls.md). Ingress terminates TLS with the attested
 * workload certificate and forwards plaintext to the app on 127.0.0.1; egress accepts
 * plaintext from the app on 127.0.0.1 and opens TLS to a remote workload, accepting it only
 * when its chain ends at the deployment root and its identity names the expected workload.
 * Plaintext never leaves the TEE's loopback interface.
 */
import { isIP, createConnection, createServer as createNetServer } from 'node:net';
import type { Server as NetServer, Socket } from 'node:net';
import { connect as tlsConnect, createSecureContext, createServer as createTlsServer } from 'node:tls';
import type { SecureContext, Server as TlsServer, TLSSocket } from 'node:tls';
import { CocoonError, asCocoonError } from '../../errors.js';
import { peerNameText } from '../../policy/tls.js';
import type { TlsEgress, TlsIngress, TlsSpec } from '../../policy/tls.js';
import type { LauncherLog } from '../log.js';
import { checkPeerAllowed, checkPeerIdentity, describeIdentity } from './identity.js';
import type { WorkloadIdentity } from './identity.js';
import type { TlsMaterial } from './material.js';

export const HANDSHAKE_TIMEOUT_MS = 10_000;
export const MAX_CONNECTIONS = 1024;

export interface ProxyOptions {
  /** Where ingress listeners bind (default all interfaces, `0.0.0.0`). */
  ingressHost?: string;
  /** Where the app listens inside the TEE (default 127.0.0.1). */
  appHost?: string;
  /**
   * Called with the serial (hex) of every verified peer certificate, ingress and egress; throws
   * TLS_PEER_REJECTED to refuse it (the deployment CA's CRL, docs/tls.md "Revocation").
   */
  checkRevocation?: (serialHex: string) => void;
}

export interface TlsProxies {
  /** Replaces the certificate (renewal): new connections use it. */
  update(material: TlsMaterial): void;
  close(): Promise<void>;
}

function pipeBoth(a: Socket, b: Socket): void {
  a.pipe(b);
  b.pipe(a);
  const kill = () => {
    a.destroy();
    b.destroy();
  };
  a.on('error', kill);
  b.on('error', kill);
  a.on('close', () => b.destroySoon());
  b.on('close', () => a.destroySoon());
}

/** A message fit for one log line: line breaks folded, at most 300 characters. */
export function oneLine(message: string): string {
  return message.replace(/[\r\n]+/g, ' ').slice(0, 300);
}

/** X.509 verification results that mean "this certificate does not chain to the deployment root". */
const NOT_OUR_CA = new Set(['DEPTH_ZERO_SELF_SIGNED_CERT', 'SELF_SIGNED_CERT_IN_CHAIN', 'UNABLE_TO_GET_ISSUER_CERT', 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'CERT_SIGNATURE_FAILURE', 'CERT_UNTRUSTED', 'INVALID_CA']);

/** Why a client certificate did not verify, from Node's `authorizationError` (a code such as UNABLE_TO_GET_ISSUER_CERT_LOCALLY). */
export function verificationReason(authorizationError: unknown): string {
  const code = authorizationError instanceof Error ? ((authorizationError as { code?: string }).code ?? authorizationError.message) : String(authorizationError ?? 'not verified');
  if (NOT_OUR_CA.has(code)) return `certificate not issued by the deployment CA, or sent without its intermediate (${code})`;
  if (code === 'CERT_HAS_EXPIRED') return `client certificate expired (${code})`;
  if (code === 'CERT_NOT_YET_VALID') return `client certificate not yet valid (${code})`;
  return `client certificate does not verify against the deployment CA (${oneLine(code).slice(0, 80)})`;
}

/**
 * Why an ingress handshake failed (the `tlsClientError` of the server), for the log: the
 * certificate verification result when there was one, otherwise the TLS alert or OpenSSL
 * reason in words. Never certificate or key bytes.
 */
export function clientRefusalReason(err: Error, authorizationError?: unknown): string {
  if (authorizationError) return verificationReason(authorizationError);
  const code = (err as { code?: string }).code ?? '';
  const ssl = /SSL routines:[^:]*:([^:]+)/.exec(err.message)?.[1];
  if (code === 'ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE') return 'no client certificate (peer did not return a certificate)';
  if (code === 'ERR_SSL_WRONG_VERSION_NUMBER' || code === 'ERR_SSL_HTTP_REQUEST' || code === 'ERR_SSL_PACKET_LENGTH_TOO_LONG') return `not a TLS client (${ssl ?? code})`;
  if (code === 'ERR_TLS_HANDSHAKE_TIMEOUT') return `TLS handshake not done within ${HANDSHAKE_TIMEOUT_MS} ms`;
  if (code === 'ECONNRESET') return 'the client closed the connection during the TLS handshake';
  return `TLS handshake failed: ${oneLine(ssl ?? err.message)}`;
}

/**
 * Clients' addresses by TCP socket, noted on accept: after Node has destroyed a TLS socket (a
 * refused certificate) it no longer knows its peer, so `tlsClientError` looks the address up
 * through the TCP socket the TLS socket wraps.
 */
function rememberAddresses(server: TlsServer): (socket: TLSSocket) => string {
  const addresses = new WeakMap<Socket, string>();
  server.on('connection', (raw: Socket) => {
    if (raw.remoteAddress) addresses.set(raw, raw.remoteAddress);
  });
  return (socket) => {
    const raw = (socket as unknown as { _parent?: Socket | null })._parent;
    return socket.remoteAddress ?? (raw ? addresses.get(raw) : undefined) ?? '?';
  };
}

function contextFor(m: TlsMaterial): SecureContext {
  try {
    return createSecureContext({ key: m.keyPem, cert: m.certChainPem, ca: m.rootPem, minVersion: 'TLSv1.2' });
  } catch (err) {
    throw new CocoonError('TLS_PROXY_FAILED', `workload key and certificate are not usable for TLS: ${oneLine((err as Error).message)}`, { cause: err });
  }
}

function listen(server: NetServer, port: number, host: string, what: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error) => reject(new CocoonError('TLS_PROXY_FAILED', `${what}: cannot listen on ${host}:${port}: ${oneLine(err.message)}`, { cause: err }));
    server.once('error', onError);
    server.listen({ port, host, exclusive: true }, () => {
      server.off('error', onError);
      resolve();
    });
  });
}

class Tracker {
  readonly sockets = new Set<Socket>();
  add(s: Socket): void {
    this.sockets.add(s);
    s.once('close', () => this.sockets.delete(s));
  }
}

async function startIngress(spec: TlsIngress, material: () => TlsMaterial, log: LauncherLog, tracker: Tracker, opts: ProxyOptions): Promise<TlsServer> {
  const what = `tls ingress :${spec.listen} → app :${spec.to}`;
  const appHost = opts.appHost ?? '127.0.0.1';
  const m = material();
  contextFor(m); // a clear TLS_PROXY_FAILED for an unusable key/certificate
  const server = createTlsServer({
    key: m.keyPem,
    cert: m.certChainPem,
    ca: m.rootPem,
    requestCert: spec.clientCert !== 'none',
    rejectUnauthorized: spec.clientCert === 'required',
    handshakeTimeout: HANDSHAKE_TIMEOUT_MS,
    minVersion: 'TLSv1.2',
  });
  server.maxConnections = MAX_CONNECTIONS;
  const remoteOf = rememberAddresses(server);
  server.on('tlsClientError', (err, socket) => {
    log.warn(`${what}: refused a client from ${remoteOf(socket)}: ${clientRefusalReason(err, socket.authorizationError)}`);
  });
  server.on('secureConnection', (socket: TLSSocket) => {
    tracker.add(socket);
    socket.on('error', () => socket.destroy());
    let who = 'no client certificate';
    if (spec.clientCert !== 'none') {
      const peer = socket.getPeerCertificate();
      const presented = peer && Object.keys(peer).length > 0 && peer.raw !== undefined;
      if (presented || spec.clientCert === 'required') {
        let id: WorkloadIdentity | undefined;
        try {
          if (!socket.authorized) throw new CocoonError('TLS_PEER_REJECTED', presented ? verificationReason(socket.authorizationError) : 'no client certificate');
          id = checkPeerAllowed(presented ? peer.raw : Buffer.alloc(0), spec.allow);
          opts.checkRevocation?.(peer.serialNumber);
          who = describeIdentity(id);
        } catch (err) {
          log.warn(`${what}: refused client ${socket.remoteAddress ?? '?'}${id ? `, ${describeIdentity(id)}` : ''}: ${oneLine(asCocoonError(err).message)}`);
          socket.destroy();
          return;
        }
      }
    }
    const app = createConnection({ port: spec.to, host: appHost });
    tracker.add(app);
    app.once('connect', () => log.info(`${what}: connection from ${socket.remoteAddress ?? '?'}, ${who}`));
    app.once('error', (err) => log.warn(`${what}: app not reachable on ${appHost}:${spec.to}: ${oneLine(err.message)}`));
    pipeBoth(socket, app);
  });
  await listen(server, spec.listen, opts.ingressHost ?? '0.0.0.0', what);
  log.info(`${what} listening (client certificate ${spec.clientCert}${spec.allow ? `, allow ${spec.allow.map(peerNameText).join(', ')}` : ''})`);
  return server;
}

async function startEgress(spec: TlsEgress, material: () => TlsMaterial, log: LauncherLog, tracker: Tracker, opts: ProxyOptions): Promise<NetServer> {
  const what = `tls egress 127.0.0.1:${spec.listen} → ${spec.to}`;
  const expected = peerNameText(spec.expect);
  const server = createNetServer({ pauseOnConnect: true }, (local) => {
    tracker.add(local);
    local.on('error', () => local.destroy());
    const m = material();
    let identity = '';
    const remote = tlsConnect({
      host: spec.host,
      port: spec.port,
      ...(isIP(spec.host) === 0 ? { servername: spec.host } : {}),
      key: m.keyPem,
      cert: m.certChainPem,
      ca: m.rootPem,
      minVersion: 'TLSv1.2',
      rejectUnauthorized: true,
      // the chain is verified by Node against the deployment root only; the name that matters
      // is the attested workload identity, not the DNS name
      checkServerIdentity: (_host, cert) => {
        try {
          const id = describeIdentity(checkPeerIdentity(cert.raw, spec.expect));
          opts.checkRevocation?.(cert.serialNumber);
          identity = id;
          return undefined;
        } catch (err) {
          return asCocoonError(err);
        }
      },
    });
    tracker.add(remote);
    const timer = setTimeout(() => remote.destroy(new CocoonError('TLS_PEER_REJECTED', `TLS handshake not done within ${HANDSHAKE_TIMEOUT_MS} ms`)), HANDSHAKE_TIMEOUT_MS);
    remote.once('secureConnect', () => {
      clearTimeout(timer);
      log.info(`${what}: connected to ${identity}`);
      pipeBoth(local, remote);
      local.resume();
    });
    remote.once('error', (err) => {
      clearTimeout(timer);
      if (!remote.encrypted || identity === '') log.warn(`${what}: refused the peer (expected ${expected}): ${oneLine(err.message)}`);
      local.destroy();
    });
  });
  server.maxConnections = MAX_CONNECTIONS;
  await listen(server, spec.listen, '127.0.0.1', what);
  log.info(`${what} listening (peer must be ${expected})`);
  return server;
}

/** Starts every proxy of `spec`; on any failure the ones already started are closed. */
export async function startTlsProxies(spec: TlsSpec, initial: TlsMaterial, log: LauncherLog, opts: ProxyOptions = {}): Promise<TlsProxies> {
  let current = initial;
  const material = () => current;
  const tracker = new Tracker();
  const ingress: TlsServer[] = [];
  const servers: NetServer[] = [];
  const close = async (): Promise<void> => {
    const closed = servers.map((srv) => new Promise<void>((resolve) => srv.close(() => resolve())));
    for (const sock of tracker.sockets) sock.destroy();
    await Promise.all(closed);
  };
  try {
    for (const i of spec.ingress) {
      const s = await startIngress(i, material, log, tracker, opts);
      ingress.push(s);
      servers.push(s);
    }
    for (const e of spec.egress) servers.push(await startEgress(e, material, log, tracker, opts));
  } catch (err) {
    await close();
    throw err;
  }
  return {
    update(m: TlsMaterial) {
      contextFor(m); // throws TLS_PROXY_FAILED before anything is replaced
      current = m;
      for (const srv of ingress) srv.setSecureContext({ key: m.keyPem, cert: m.certChainPem, ca: m.rootPem, minVersion: 'TLSv1.2' });
    },
    close,
  };
}

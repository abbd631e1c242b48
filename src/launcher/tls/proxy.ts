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
import type { TlsEgress, TlsIngress, TlsSpec } from '../../policy/tls.js';
import type { LauncherLog } from '../log.js';
import { checkPeerIdentity, describeIdentity, peerIdentity } from './identity.js';
import type { TlsMaterial } from './material.js';

export const HANDSHAKE_TIMEOUT_MS = 10_000;
export const MAX_CONNECTIONS = 1024;

export interface ProxyOptions {
  /** Where ingress listeners bind (default all interfaces, `0.0.0.0`). */
  ingressHost?: string;
  /** Where the app listens inside the TEE (default 127.0.0.1). */
  appHost?: string;
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

function oneLine(message: string): string {
  return message.replace(/[\r\n]+/g, ' ').slice(0, 300);
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
  server.on('tlsClientError', (err, socket) => {
    log.warn(`${what}: refused a client from ${socket.remoteAddress ?? '?'}: ${oneLine(err.message)}`);
  });
  server.on('secureConnection', (socket: TLSSocket) => {
    tracker.add(socket);
    socket.on('error', () => socket.destroy());
    let who = 'no client certificate';
    if (spec.clientCert !== 'none') {
      const peer = socket.getPeerCertificate();
      const presented = peer && Object.keys(peer).length > 0 && peer.raw !== undefined;
      if (presented || spec.clientCert === 'required') {
        try {
          if (!socket.authorized) throw new CocoonError('TLS_PEER_REJECTED', `client certificate does not chain to the deployment CA (${String(socket.authorizationError ?? 'not verified')})`);
          who = describeIdentity(peerIdentity(presented ? peer.raw : Buffer.alloc(0)));
        } catch (err) {
          log.warn(`${what}: refused client ${socket.remoteAddress ?? '?'}: ${oneLine(asCocoonError(err).message)}`);
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
  log.info(`${what} listening (client certificate ${spec.clientCert})`);
  return server;
}

async function startEgress(spec: TlsEgress, material: () => TlsMaterial, log: LauncherLog, tracker: Tracker): Promise<NetServer> {
  const what = `tls egress 127.0.0.1:${spec.listen} → ${spec.to}`;
  const expected = `${spec.expect.policy}#${spec.expect.workload}`;
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
          identity = describeIdentity(checkPeerIdentity(cert.raw, spec.expect));
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
    for (const e of spec.egress) servers.push(await startEgress(e, material, log, tracker));
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

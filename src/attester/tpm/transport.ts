/**
 * Byte transports to a TPM: one command in, one response out, strictly sequential.
 * Responses are bounded (MAX_RESPONSE) and every wait has a timeout.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { Socket } from 'node:net';
import { CocoonError } from '../../errors.js';
import type { Tcti } from './tcti.js';

/** TPM 2.0 responses are at most a few KiB (TPM_PT_MAX_RESPONSE_SIZE is 4096 on most TPMs). */
export const MAX_RESPONSE = 16 * 1024;
const DEFAULT_TIMEOUT_MS = 60_000;

export interface TpmTransport {
  send(command: Buffer): Promise<Buffer>;
  close(): Promise<void>;
}

function checkSize(buf: Buffer, where: string): number | undefined {
  if (buf.length < 10) return undefined;
  const size = buf.readUInt32BE(2);
  if (size < 10 || size > MAX_RESPONSE) throw new CocoonError('TPM_COMMAND_FAILED', `${where}: response size ${size} out of bounds`);
  return size;
}

/** A character device (/dev/tpmrm0): write the command, read the whole response at once. */
class DeviceTransport implements TpmTransport {
  private constructor(private readonly fh: FileHandle, private readonly path: string) {}

  static async open(path: string): Promise<DeviceTransport> {
    try {
      return new DeviceTransport(await open(path, 'r+'), path);
    } catch (err) {
      throw new CocoonError('TEE_NOT_FOUND', `TPM device ${path} cannot be opened: ${(err as Error).message}`, { cause: err });
    }
  }

  async send(command: Buffer): Promise<Buffer> {
    try {
      await this.fh.write(command, 0, command.length);
      const buf = Buffer.alloc(MAX_RESPONSE);
      const { bytesRead } = await this.fh.read(buf, 0, buf.length, null);
      const out = buf.subarray(0, bytesRead);
      const size = checkSize(out, this.path);
      if (size === undefined || size !== out.length) throw new CocoonError('TPM_COMMAND_FAILED', `${this.path}: truncated TPM response (${out.length} bytes)`);
      return Buffer.from(out);
    } catch (err) {
      if (err instanceof CocoonError) throw err;
      throw new CocoonError('TPM_COMMAND_FAILED', `${this.path}: ${(err as Error).message}`, { cause: err });
    }
  }

  async close(): Promise<void> {
    await this.fh.close().catch(() => undefined);
  }
}

/** swtpm's TCP server channel: raw TPM commands and responses, no framing. */
class SocketTransport implements TpmTransport {
  private pending = Buffer.alloc(0);
  private waiter: ((err?: Error) => void) | undefined;
  private failed: Error | undefined;

  private constructor(private readonly socket: Socket, private readonly where: string, private readonly timeoutMs: number) {
    socket.on('data', (chunk: Buffer) => {
      this.pending = Buffer.concat([this.pending, chunk]);
      if (this.pending.length > MAX_RESPONSE) this.fail(new CocoonError('TPM_COMMAND_FAILED', `${where}: response larger than ${MAX_RESPONSE} bytes`));
      else this.waiter?.();
    });
    socket.on('error', (err) => this.fail(new CocoonError('TPM_COMMAND_FAILED', `${where}: ${err.message}`, { cause: err })));
    socket.on('close', () => this.fail(new CocoonError('TPM_COMMAND_FAILED', `${where}: connection closed by the TPM`)));
  }

  private fail(err: Error): void {
    this.failed ??= err;
    this.waiter?.(err);
  }

  static async connect(host: string, port: number, timeoutMs: number): Promise<SocketTransport> {
    const where = `swtpm ${host}:${port}`;
    const socket = new Socket();
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new CocoonError('TEE_NOT_FOUND', `${where}: connection timed out`));
      }, Math.min(timeoutMs, 10_000));
      socket.once('error', (err) => {
        clearTimeout(timer);
        reject(new CocoonError('TEE_NOT_FOUND', `${where}: ${err.message}`, { cause: err }));
      });
      socket.connect(port, host, () => {
        clearTimeout(timer);
        resolve();
      });
    });
    socket.removeAllListeners('error');
    return new SocketTransport(socket, where, timeoutMs);
  }

  async send(command: Buffer): Promise<Buffer> {
    if (this.failed) throw this.failed;
    this.pending = Buffer.alloc(0);
    this.socket.write(command);
    return new Promise<Buffer>((resolve, reject) => {
      const timer = setTimeout(() => {
        // a late response would be taken for the next command's: this connection is done
        this.fail(new CocoonError('TPM_COMMAND_FAILED', `${this.where}: no response within ${this.timeoutMs} ms`));
      }, this.timeoutMs);
      const done = (err?: Error): void => {
        if (!err) {
          let size: number | undefined;
          try {
            size = checkSize(this.pending, this.where);
          } catch (e) {
            err = e as Error;
          }
          if (!err && (size === undefined || this.pending.length < size)) return; // wait for more
          if (!err && this.pending.length > size!) err = new CocoonError('TPM_COMMAND_FAILED', `${this.where}: trailing bytes after the TPM response`);
        }
        clearTimeout(timer);
        this.waiter = undefined;
        if (err) reject(err);
        else {
          const out = this.pending;
          this.pending = Buffer.alloc(0);
          resolve(out);
        }
      };
      this.waiter = done;
      done();
    });
  }

  async close(): Promise<void> {
    this.failed ??= new CocoonError('TPM_COMMAND_FAILED', `${this.where}: transport closed`);
    this.socket.removeAllListeners('close');
    await new Promise<void>((resolve) => {
      this.socket.end(() => resolve());
      setTimeout(resolve, 1000).unref();
    });
    this.socket.destroy();
  }
}

export async function openTransport(tcti: Tcti, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<TpmTransport> {
  return tcti.kind === 'device' ? DeviceTransport.open(tcti.path) : SocketTransport.connect(tcti.host, tcti.port, timeoutMs);
}

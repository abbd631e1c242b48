import { createHash, type Hash } from 'node:crypto';
import { PassThrough, Transform, pipeline, type Readable, type TransformCallback } from 'node:stream';
import { pipeline as pipelineP } from 'node:stream/promises';
import { CocoonError } from '../errors.js';

/** Pass-through that hashes (SHA-256) and counts what flows by. */
export class HashTap extends Transform {
  private readonly hash: Hash = createHash('sha256');
  bytes = 0;
  private final: string | undefined;

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.hash.update(chunk);
    this.bytes += chunk.length;
    cb(null, chunk);
  }

  /** `sha256:<hex>`; only valid after the stream ended. */
  get digest(): string {
    this.final ??= `sha256:${this.hash.digest('hex')}`;
    return this.final;
  }
}

/**
 * Pass-through that checks, at the end, that what flowed by has the expected size and digest
 * (DIGEST_MISMATCH otherwise) and refuses to pass more than the expected size.
 */
export class VerifyTap extends Transform {
  private readonly hash: Hash = createHash('sha256');
  private bytes = 0;

  constructor(
    private readonly expected: { digest: string; size: number },
    private readonly what: string,
  ) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.bytes += chunk.length;
    if (this.bytes > this.expected.size) {
      cb(new CocoonError('DIGEST_MISMATCH', `${this.what}: larger than its descriptor size ${this.expected.size}`, { details: { digest: this.expected.digest } }));
      return;
    }
    this.hash.update(chunk);
    cb(null, chunk);
  }

  override _flush(cb: TransformCallback): void {
    const got = `sha256:${this.hash.digest('hex')}`;
    if (this.bytes !== this.expected.size || got !== this.expected.digest) {
      cb(new CocoonError('DIGEST_MISMATCH', `${this.what}: content does not match ${this.expected.digest}`, { details: { expected: this.expected.digest, actual: got, size: this.bytes } }));
      return;
    }
    cb();
  }
}

/**
 * Connects a readable through transforms and returns the last one; an error anywhere destroys
 * the whole chain, so whoever consumes the result sees it (unlike .pipe()).
 */
export function chain(first: Readable, ...rest: Transform[]): Readable {
  if (rest.length === 0) return first;
  const run = pipeline as unknown as (...args: unknown[]) => Readable;
  return run(first, ...rest, () => undefined);
}

/**
 * Pass-through that also feeds every chunk into a side pipeline (`stages`), honouring the side's
 * backpressure. The main stream ends only after the side finished; an error on the side fails
 * the main stream. Lets one read of a blob serve two consumers (e.g. encrypt + compute diffID).
 */
export class Tee extends Transform {
  private readonly side = new PassThrough();
  private readonly sideDone: Promise<void>;
  private sideError: Error | undefined;

  constructor(stages: Array<Transform | NodeJS.WritableStream>) {
    super();
    this.sideDone = (pipelineP as unknown as (...s: unknown[]) => Promise<void>)(this.side, ...stages);
    this.sideDone.catch((err: Error) => {
      this.sideError = err;
      this.destroy(err);
    });
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    if (this.sideError) {
      cb(this.sideError);
      return;
    }
    if (this.side.write(chunk)) cb(null, chunk);
    else this.side.once('drain', () => cb(this.sideError ?? null, chunk));
  }

  override _flush(cb: TransformCallback): void {
    this.side.end();
    this.sideDone.then(
      () => cb(),
      (err: Error) => cb(err),
    );
  }

  override _destroy(err: Error | null, cb: (error?: Error | null) => void): void {
    if (!this.side.destroyed) this.side.destroy(err ?? undefined);
    cb(err);
  }
}

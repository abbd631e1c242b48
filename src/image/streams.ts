import { createHash, type Hash } from 'node:crypto';
import { Transform, pipeline, type Readable, type TransformCallback } from 'node:stream';
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

import { Transform, type TransformCallback } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { Decompress } from 'fzstd';
import { CocoonError } from '../errors.js';
import type { Compression } from './oci.js';

/** Layer decompression with decompression-bomb limits. */

export interface ExpansionLimits {
  /** Most uncompressed bytes one layer may produce. */
  maxBytes: number;
  /** Most uncompressed bytes per compressed byte… */
  maxRatio: number;
  /** …enforced once this many uncompressed bytes were produced (small tars compress very well). */
  ratioGraceBytes: number;
  /** Largest zstd window (memory the decoder allocates). */
  maxZstdWindow: number;
}

export const DEFAULT_EXPANSION_LIMITS: ExpansionLimits = {
  maxBytes: 16 * 1024 ** 3,
  maxRatio: 200,
  ratioGraceBytes: 64 * 1024 ** 2,
  maxZstdWindow: 128 * 1024 ** 2,
};

interface Counters {
  in: number;
  out: number;
}

function bomb(msg: string, c: Counters): CocoonError {
  return new CocoonError('DECOMPRESSION_BOMB', msg, { details: { compressedBytes: c.in, uncompressedBytes: c.out } });
}

function checkExpansion(c: Counters, limits: ExpansionLimits, compressed: boolean): CocoonError | undefined {
  if (c.out > limits.maxBytes) return bomb(`layer expands beyond ${limits.maxBytes} bytes`, c);
  if (compressed && c.out > limits.ratioGraceBytes && c.out > limits.maxRatio * Math.max(c.in, 1)) {
    return bomb(`layer expands more than ${limits.maxRatio}x`, c);
  }
  return undefined;
}

class InputCounter extends Transform {
  constructor(private readonly c: Counters) {
    super();
  }
  override _transform(chunk: Buffer, _e: BufferEncoding, cb: TransformCallback): void {
    this.c.in += chunk.length;
    cb(null, chunk);
  }
}

class ExpansionGuard extends Transform {
  constructor(
    private readonly c: Counters,
    private readonly limits: ExpansionLimits,
    private readonly compressed: boolean,
  ) {
    super();
  }
  override _transform(chunk: Buffer, _e: BufferEncoding, cb: TransformCallback): void {
    this.c.out += chunk.length;
    cb(checkExpansion(this.c, this.limits, this.compressed) ?? null, chunk);
  }
}

/**
 * fzstd as a Transform. It is fed in small slices and counts its own output, so a zstd bomb
 * (one 128 KiB block from a few bytes) is stopped inside the decoder, before it is buffered.
 */
class ZstdDecompress extends Transform {
  private readonly d: Decompress;
  private headerChecked = false;
  private readonly own: Counters = { in: 0, out: 0 };

  constructor(
    private readonly c: Counters,
    private readonly limits: ExpansionLimits,
  ) {
    super();
    this.d = new Decompress((data) => {
      if (data.length === 0) return;
      this.own.out += data.length;
      const err = checkExpansion({ in: Math.max(this.own.in, this.c.in), out: this.own.out }, this.limits, true);
      if (err) throw err;
      this.push(Buffer.from(data));
    });
  }

  /** Refuses frames whose header asks for more memory than the limits allow (first frame only). */
  private checkFrameHeader(chunk: Buffer): void {
    this.headerChecked = true;
    if (chunk.length < 6 || chunk.readUInt32LE(0) !== 0xfd2fb528) return;
    const fhd = chunk[4] ?? 0;
    const singleSegment = (fhd >> 5) & 1;
    if (!singleSegment) {
      const wd = chunk[5] ?? 0;
      const base = 2 ** (10 + (wd >> 3));
      const window = base + (base / 8) * (wd & 7);
      if (window > this.limits.maxZstdWindow) throw bomb(`zstd window of ${window} bytes exceeds ${this.limits.maxZstdWindow}`, this.c);
      return;
    }
    const fcsFlag = fhd >> 6;
    const dictBytes = [0, 1, 2, 4][fhd & 3] ?? 0;
    const fcsBytes = fcsFlag === 0 ? 1 : 2 ** fcsFlag;
    const off = 5 + dictBytes;
    if (chunk.length < off + fcsBytes) return;
    let size = 0;
    for (let i = fcsBytes - 1; i >= 0; i--) size = size * 256 + (chunk[off + i] ?? 0);
    if (fcsBytes === 2) size += 256;
    if (size > this.limits.maxBytes) throw bomb(`zstd frame declares ${size} bytes`, this.c);
  }

  override _transform(chunk: Buffer, _e: BufferEncoding, cb: TransformCallback): void {
    try {
      if (!this.headerChecked) this.checkFrameHeader(chunk);
      for (let i = 0; i < chunk.length; i += 4096) {
        const part = chunk.subarray(i, Math.min(i + 4096, chunk.length));
        this.own.in += part.length;
        this.d.push(part);
      }
      cb();
    } catch (err) {
      cb(zstdError(err));
    }
  }

  override _flush(cb: TransformCallback): void {
    try {
      this.d.push(new Uint8Array(0), true);
      cb();
    } catch (err) {
      cb(zstdError(err));
    }
  }
}

function zstdError(err: unknown): CocoonError {
  if (err instanceof CocoonError) return err;
  return new CocoonError('IMAGE_INVALID', `corrupt zstd stream: ${(err as Error).message}`, { cause: err });
}

/** Pipeline stages that turn a compressed layer into its tar, enforcing the limits. */
export function decompressStages(compression: Compression, limits: ExpansionLimits = DEFAULT_EXPANSION_LIMITS): Transform[] {
  const c: Counters = { in: 0, out: 0 };
  switch (compression) {
    case 'none':
      return [new ExpansionGuard(c, limits, false)];
    case 'gzip':
      return [new InputCounter(c), createGunzip({ chunkSize: 64 * 1024 }), new ExpansionGuard(c, limits, true)];
    case 'zstd':
      return [new InputCounter(c), new ZstdDecompress(c, limits), new ExpansionGuard(c, limits, true)];
  }
}

/** Maps stream errors that are not Cocoon's (zlib, tar parser) to IMAGE_INVALID. */
export function layerStreamError(err: unknown, what: string): CocoonError {
  if (err instanceof CocoonError) return err;
  const e = err as NodeJS.ErrnoException;
  if (typeof e?.code === 'string' && e.code.startsWith('Z_')) return new CocoonError('IMAGE_INVALID', `${what}: corrupt gzip stream (${e.message})`, { cause: err });
  if (typeof e?.code === 'string' && /^E[A-Z]+$/.test(e.code)) return new CocoonError('IO_ERROR', `${what}: ${e.message}`, { cause: err });
  return new CocoonError('IMAGE_INVALID', `${what}: ${e?.message ?? String(err)}`, { cause: err });
}

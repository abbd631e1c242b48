import { mkdir, mkdtemp, rm, symlink, writeFile, chmod, link } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { text } from 'node:stream/consumers';
import { gzipSync } from 'node:zlib';
import tar from 'tar-stream';
import { LayoutWriter } from '../../src/image/layout.js';
import { MediaType, type Descriptor } from '../../src/image/oci.js';
import { tarDirectory, deterministicGzip } from '../../src/image/tar.js';
import { HashTap } from '../../src/image/streams.js';
import { ociDigest } from '../../src/crypto/hash.js';

export async function tempDir(t: { after: (fn: () => Promise<void>) => void }, prefix = 'cocoon-img-'): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), prefix));
  t.after(() => rm(d, { recursive: true, force: true }));
  return d;
}

export async function streamToBuffer(s: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of s) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

/** A small application tree: files, a dir, a symlink and a hardlink. */
export async function makeAppTree(dir: string, seed = 'a'): Promise<void> {
  await mkdir(join(dir, 'usr/bin'), { recursive: true });
  await mkdir(join(dir, 'etc'), { recursive: true });
  await writeFile(join(dir, 'usr/bin/app'), `#!/bin/sh\necho ${seed}\n`);
  await chmod(join(dir, 'usr/bin/app'), 0o755);
  await writeFile(join(dir, 'etc/app.conf'), `seed=${seed}\n`.repeat(100));
  await symlink('usr/bin', join(dir, 'bin'));
  await link(join(dir, 'etc/app.conf'), join(dir, 'etc/app.conf.bak'));
}

export async function makeLauncherDir(dir: string): Promise<void> {
  await mkdir(join(dir, 'bin'), { recursive: true });
  await mkdir(join(dir, 'lib'), { recursive: true });
  await writeFile(join(dir, 'bin/node'), 'not really node');
  await chmod(join(dir, 'bin/node'), 0o755);
  await writeFile(join(dir, 'launcher.mjs'), 'console.log("launcher")\n');
  await chmod(join(dir, 'launcher.mjs'), 0o644);
  await writeFile(join(dir, 'lib/libc.so.6'), 'libc');
  await symlink('libc.so.6', join(dir, 'lib/libc.so'));
}

export type LayerKind = 'gzip' | 'none' | 'zstd';

export interface FixtureLayer {
  kind: LayerKind;
  tar: Buffer;
}

/** Raw tar bytes of a directory (deterministic writer, root-owned). */
export async function tarOf(dir: string): Promise<Buffer> {
  return streamToBuffer(tarDirectory(dir, { owner: { uid: 0, gid: 0 } }));
}

/**
 * A zstd frame made of raw blocks (no compression needed to exercise the decoder):
 * magic, frame header with single-segment content size, raw blocks of ≤128 KiB.
 */
export function zstdRaw(data: Buffer): Buffer {
  const parts: Buffer[] = [];
  const hdr = Buffer.alloc(4 + 1 + 8);
  hdr.writeUInt32LE(0xfd2fb528, 0);
  hdr[4] = (3 << 6) | (1 << 5); // 8-byte content size, single segment, no checksum
  hdr.writeBigUInt64LE(BigInt(data.length), 5);
  parts.push(hdr);
  const max = 128 * 1024;
  for (let off = 0; off < data.length || off === 0; off += max) {
    const block = data.subarray(off, Math.min(off + max, data.length));
    const last = off + max >= data.length ? 1 : 0;
    const bh = (block.length << 3) | (0 << 1) | last; // raw block
    parts.push(Buffer.from([bh & 0xff, (bh >> 8) & 0xff, (bh >> 16) & 0xff]), block);
    if (data.length === 0) break;
  }
  return Buffer.concat(parts);
}

/** A zstd frame with one RLE block: `n` copies of a byte from 4+1+1+3+1 bytes. */
export function zstdRle(byte: number, n: number, blocks = 1): Buffer {
  const hdr = Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x58]); // no content size, window 2^(10+11)=2 MiB
  const parts: Buffer[] = [hdr];
  for (let i = 0; i < blocks; i++) {
    const last = i === blocks - 1 ? 1 : 0;
    const bh = (n << 3) | (1 << 1) | last; // RLE block
    parts.push(Buffer.from([bh & 0xff, (bh >> 8) & 0xff, (bh >> 16) & 0xff, byte]));
  }
  return Buffer.concat(parts);
}

export function compress(tarBytes: Buffer, kind: LayerKind): { blob: Buffer; mediaType: string } {
  switch (kind) {
    case 'gzip':
      return { blob: gzipSync(tarBytes), mediaType: MediaType.layerGzip };
    case 'none':
      return { blob: tarBytes, mediaType: MediaType.layerTar };
    case 'zstd':
      return { blob: zstdRaw(tarBytes), mediaType: MediaType.layerZstd };
  }
}

export interface SourceImageOpts {
  layers: FixtureLayer[];
  ref?: string;
  cmd?: string[];
  diffIDs?: string[];
}

/** Writes an OCI layout with the given layers; returns the manifest descriptor. */
export async function writeSourceImage(layoutDir: string, o: SourceImageOpts): Promise<Descriptor> {
  const w = await LayoutWriter.open(layoutDir);
  const layers: Descriptor[] = [];
  const diffIDs: string[] = [];
  for (const l of o.layers) {
    const { blob, mediaType } = compress(l.tar, l.kind);
    layers.push(await w.putBytes(blob, mediaType));
    diffIDs.push(ociDigest(l.tar));
  }
  const config = {
    architecture: 'amd64',
    os: 'linux',
    config: { Cmd: o.cmd ?? ['/usr/bin/app'], Env: ['PATH=/usr/bin:/bin'], User: '1000', WorkingDir: '/srv', ExposedPorts: { '8080/tcp': {} }, Labels: { app: 'demo' } },
    rootfs: { type: 'layers', diff_ids: o.diffIDs ?? diffIDs },
  };
  const cfg = await w.putBytes(Buffer.from(JSON.stringify(config)), MediaType.config);
  const manifest = { schemaVersion: 2, mediaType: MediaType.manifest, config: cfg, layers };
  const md = await w.putBytes(Buffer.from(JSON.stringify(manifest)), MediaType.manifest, o.ref ? { 'org.opencontainers.image.ref.name': o.ref } : undefined);
  await w.writeIndex([md]);
  return md;
}

export interface RawEntry {
  name: string;
  type?: 'file' | 'directory' | 'symlink' | 'link' | 'fifo' | 'character-device';
  content?: string | Buffer;
  linkname?: string;
  mode?: number;
  size?: number;
}

/** A tar written with tar-stream directly: any names and link targets, for hostile inputs. */
export async function rawTar(entries: RawEntry[]): Promise<Buffer> {
  const pack = tar.pack();
  const out = streamToBuffer(pack as unknown as Readable);
  for (const e of entries) {
    const h: tar.Header = {
      name: e.name,
      type: e.type ?? 'file',
      mode: e.mode ?? (e.type === 'directory' ? 0o755 : 0o644),
      mtime: new Date(0),
      uid: 0,
      gid: 0,
      size: 0,
      linkname: e.linkname ?? '',
      uname: '',
      gname: '',
      devmajor: 0,
      devminor: 0,
    };
    await new Promise<void>((resolve, reject) => {
      if (h.type === 'file') pack.entry(h, e.content ?? '', (err) => (err ? reject(err) : resolve()));
      else pack.entry(h, (err) => (err ? reject(err) : resolve()));
    });
  }
  pack.finalize();
  return out;
}

export async function gzipStream(buf: Buffer): Promise<Buffer> {
  return streamToBuffer(Readable.from([buf]).pipe(deterministicGzip()));
}

export async function hashOf(s: Readable): Promise<string> {
  const tap = new HashTap();
  await text(s.pipe(tap));
  return tap.digest;
}

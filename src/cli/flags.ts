import { readFileBounded } from '../util/read-bounded.js';

/** commander argParser of a repeatable option: each occurrence appends its value. */
export function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

/** PEM files named by flags (a root certificate, a TLS chain or key): far below this. */
export const MAX_PEM_FILE = 64 * 1024;

/** A file named by a command-line flag, at most `max` bytes: BAD_USAGE when unreadable, INPUT_TOO_LARGE beyond. */
export function readArgFile(file: string, max: number, what: string): Promise<Buffer> {
  return readFileBounded(file, { max, what, unreadable: 'BAD_USAGE' });
}

import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CocoonError } from '../errors.js';

export interface ResolvedUser {
  uid: number;
  gid: number;
  groups: number[];
  home: string;
}

const MAX_DB = 1024 * 1024;

async function readDb(root: string, file: string): Promise<string[][]> {
  let text: string;
  try {
    const buf = await readFile(join(root, 'etc', file));
    if (buf.length > MAX_DB) throw new CocoonError('INPUT_TOO_LARGE', `/etc/${file} is larger than 1 MiB`);
    text = buf.toString('utf8');
  } catch (err) {
    if (err instanceof CocoonError) throw err;
    return [];
  }
  return text
    .split('\n')
    .filter((line) => line && !line.startsWith('#'))
    .map((line) => line.split(':'));
}

const numeric = (s: string) => /^\d{1,10}$/.test(s) && Number(s) <= 0xfffffffe;

/**
 * Resolves an image `User` ("", "name", "uid", "name:group", "uid:gid") against the image's
 * own /etc/passwd and /etc/group, as container runtimes do.
 */
export async function resolveUser(root: string, spec: string | undefined): Promise<ResolvedUser> {
  const [userPart = '', groupPart] = (spec ?? '').split(':', 2);
  const passwd = await readDb(root, 'passwd');
  const groupDb = await readDb(root, 'group');
  let uid = 0;
  let gid = 0;
  let home = '/';
  let name: string | undefined;
  if (userPart === '' || userPart === 'root') {
    name = 'root';
    const entry = passwd.find((e) => e[0] === 'root');
    if (entry) home = entry[5] || '/';
  } else if (numeric(userPart)) {
    uid = Number(userPart);
    const entry = passwd.find((e) => e[2] === userPart);
    if (entry) {
      name = entry[0];
      gid = Number(entry[3] ?? '0');
      home = entry[5] || '/';
    } else {
      gid = uid;
    }
  } else {
    const entry = passwd.find((e) => e[0] === userPart);
    if (!entry || !numeric(entry[2] ?? '') || !numeric(entry[3] ?? '')) {
      throw new CocoonError('APP_START_FAILED', `image user "${userPart}" is not in the image's /etc/passwd`);
    }
    name = userPart;
    uid = Number(entry[2]);
    gid = Number(entry[3]);
    home = entry[5] || '/';
  }
  if (groupPart !== undefined && groupPart !== '') {
    if (numeric(groupPart)) gid = Number(groupPart);
    else {
      const entry = groupDb.find((e) => e[0] === groupPart);
      if (!entry || !numeric(entry[2] ?? '')) throw new CocoonError('APP_START_FAILED', `image group "${groupPart}" is not in the image's /etc/group`);
      gid = Number(entry[2]);
    }
  }
  const groups = new Set<number>([gid]);
  if (name) {
    for (const entry of groupDb) {
      const members = (entry[3] ?? '').split(',');
      if (members.includes(name) && numeric(entry[2] ?? '')) groups.add(Number(entry[2]));
    }
  }
  return { uid, gid, groups: [...groups].slice(0, 64), home };
}

import { connect } from 'node:net';

/**
 * A minimal RESP client: sends commands on one connection and returns the raw reply lines.
 * Enough to prove AUTH/PING behaviour without depending on redis-cli.
 */
export async function redisCommands(port: number, commands: string[][], timeoutMs = 3000): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port });
    const replies: string[] = [];
    let buffer = '';
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`redis on port ${port}: no reply within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.on('connect', () => {
      for (const cmd of commands) socket.write(`*${cmd.length}\r\n${cmd.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`);
    });
    socket.on('data', (chunk) => {
      buffer += chunk.toString('utf8');
      let nl: number;
      while ((nl = buffer.indexOf('\r\n')) >= 0 && buffer.length < 65536) {
        replies.push(buffer.slice(0, nl));
        buffer = buffer.slice(nl + 2);
      }
      if (replies.length >= commands.length) {
        clearTimeout(timer);
        socket.end();
        resolve(replies.slice(0, commands.length));
      }
    });
    socket.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

/** Waits until something accepts TCP connections on the port. */
export async function waitForPort(port: number, timeoutMs: number, stillAlive: () => Promise<boolean>): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const open = await new Promise<boolean>((resolve) => {
      const s = connect({ host: '127.0.0.1', port });
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (open) return true;
    if (!(await stillAlive())) return false;
    await new Promise((r) => setTimeout(r, 100));
  }
  return false;
}


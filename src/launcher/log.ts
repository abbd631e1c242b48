/**
 * The launcher's own log lines, kept apart from the application's output: every line goes to
 * stderr with a fixed prefix. Never pass secret values here.
 */
export interface LauncherLog {
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
}

export function createLauncherLog(stream: NodeJS.WritableStream = process.stderr): LauncherLog {
  const write = (level: string, message: string) => stream.write(`[cocoon-launcher] ${level} ${message}\n`);
  return {
    info: (m) => write('info ', m),
    warn: (m) => write('WARN ', m),
    error: (m) => write('ERROR', m),
  };
}

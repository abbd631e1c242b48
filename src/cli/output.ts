import { Command } from 'commander';
import pc from 'picocolors';
import { asCocoonError, type CocoonError } from '../errors.js';

/**
 * Output conventions of every command: human text on a TTY-friendly stream, or exactly one
 * JSON document on stdout with --json. Progress goes to stderr so stdout stays parseable.
 */
export interface Output {
  readonly json: boolean;
  step(message: string): void;
  info(message: string): void;
  warn(message: string): void;
  success(message: string): void;
  result(human: string | (() => void), data: unknown): void;
}

export function createOutput(options: { json?: boolean; quiet?: boolean } = {}): Output {
  const json = Boolean(options.json);
  const quiet = Boolean(options.quiet);
  const err = (line: string) => {
    if (!quiet && !json) process.stderr.write(line + '\n');
  };
  return {
    json,
    step: (m) => err(`${pc.cyan('›')} ${m}`),
    info: (m) => err(`  ${m}`),
    warn: (m) => {
      if (!quiet) process.stderr.write(`${pc.yellow('warning:')} ${m}\n`);
    },
    success: (m) => err(`${pc.green('✓')} ${m}`),
    result: (human, data) => {
      if (json) process.stdout.write(JSON.stringify(data, null, 2) + '\n');
      else if (typeof human === 'function') human();
      else process.stdout.write(human + '\n');
    },
  };
}

/** The single place that turns an error into output and an exit code. */
export function reportError(err: unknown, json: boolean): number {
  const error: CocoonError = asCocoonError(err);
  if (json) {
    process.stdout.write(JSON.stringify({ error: error.toJSON() }, null, 2) + '\n');
  } else if (error.code === 'INTERNAL') {
    process.stderr.write(`${pc.red('internal error')} (a bug — please report it): ${error.message}\n`);
    const cause = error.cause instanceof Error ? error.cause : error;
    if (cause.stack) process.stderr.write(cause.stack + '\n');
  } else {
    process.stderr.write(`${pc.red('error')} [${error.code}]: ${error.message}\n`);
  }
  return error.exitCode;
}

/** Wraps an action: errors become one report and an exit code, never a stack trace for users. */
export function action<A extends unknown[]>(fn: (...args: A) => Promise<number | void>): (...args: A) => Promise<void> {
  return async (...args: A) => {
    const opts = args.find((a) => typeof a === 'object' && a !== null && !Array.isArray(a) && !(a instanceof Command)) as { json?: boolean } | undefined;
    try {
      const code = await fn(...args);
      if (typeof code === 'number') process.exitCode = code;
    } catch (err) {
      process.exitCode = reportError(err, Boolean(opts?.json));
    }
  };
}

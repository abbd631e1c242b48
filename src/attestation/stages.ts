import { CocoonError, type ErrorCode } from '../errors.js';
import type { VerificationProblem } from './types.js';

/**
 * Ordered record of verification stages. Each stage runs even when an earlier one failed
 * (where its inputs exist), so a result lists every failing stage, as the vectors expect.
 */
export class Stages {
  readonly problems: VerificationProblem[] = [];
  constructor(private readonly prefix = '') {}

  /** Runs `fn` as stage `stage`; a thrown error is recorded (non-Cocoon errors as `fallback`). */
  run<T>(stage: string, fallback: ErrorCode, fn: () => T): T | undefined {
    try {
      return fn();
    } catch (e) {
      this.record(stage, e instanceof CocoonError ? e.code : fallback, e instanceof Error ? e.message : String(e));
      return undefined;
    }
  }

  record(stage: string, code: ErrorCode, message: string): void {
    const full = this.prefix + stage;
    if (this.problems.some((p) => p.stage === full && p.code === code)) return;
    this.problems.push({ stage: this.prefix + stage, code, message });
  }

  get ok(): boolean {
    return this.problems.length === 0;
  }

  /** A child recorder writing into the same list with an extra stage prefix. */
  child(prefix: string): Stages {
    const c = new Stages(this.prefix + prefix);
    (c as { problems: VerificationProblem[] }).problems = this.problems;
    return c;
  }
}

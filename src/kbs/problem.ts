import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { CocoonError, ERROR_CODES } from '../errors.js';
import type { ErrorCode } from '../errors.js';

export const COCO_ERROR_BASE = 'https://github.com/confidential-containers/kbs/errors/';
export const COCOON_ERROR_BASE = 'https://cocoon.dev/errors/';

/** CoCo KBS error type names (trustee kbs/src/error.rs) for the RCAR endpoints. */
export function cocoErrorType(code: ErrorCode): string {
  switch (code) {
    case 'POLICY_DENIED':
    case 'FORBIDDEN':
    case 'WORKLOAD_CERT_NOT_GRANTED':
      return 'PolicyDeny';
    case 'AUTH_REQUIRED':
      return 'TokenNotFound';
    case 'AUTH_INVALID':
    case 'TOKEN_REPLAYED':
      return 'TokenVerifierError';
    case 'NOT_FOUND':
    case 'SECRET_MISSING':
      return 'ResourceNotFound';
    case 'BAD_USAGE':
    case 'INPUT_MALFORMED':
    case 'INPUT_TOO_LARGE':
    case 'RATE_LIMITED':
      return 'InvalidRequest';
    case 'INTERNAL':
    case 'IO_ERROR':
      return 'InternalError';
    default:
      return ERROR_CODES[code].status === 401 ? 'AttestationError' : 'InternalError';
  }
}

/** Any thrown value → CocoonError, including fastify's own errors (body limit, validation, parsing). */
export function toCocoonError(err: unknown): CocoonError {
  if (err instanceof CocoonError) return err;
  const fe = err as Partial<FastifyError> & { validation?: unknown };
  if (fe.validation) return new CocoonError('INPUT_MALFORMED', `invalid request: ${fe.message ?? 'schema validation failed'}`);
  if (fe.statusCode === 413 || fe.code === 'FST_ERR_CTP_BODY_TOO_LARGE') return new CocoonError('INPUT_TOO_LARGE', 'request body too large');
  if (fe.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') return new CocoonError('INPUT_MALFORMED', 'unsupported content type (use application/json)');
  if (typeof fe.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 500) return new CocoonError('INPUT_MALFORMED', fe.message ?? 'bad request');
  return new CocoonError('INTERNAL', 'internal error', { cause: err });
}

export interface Problem {
  type: string;
  title: string;
  status: number;
  detail: string;
  code: ErrorCode;
  details?: Record<string, unknown>;
}

export function problemFor(err: CocoonError, flavour: 'coco' | 'cocoon'): Problem {
  const status = err.httpStatus;
  const type = flavour === 'coco' ? `${COCO_ERROR_BASE}${cocoErrorType(err.code)}` : `${COCOON_ERROR_BASE}${err.code}`;
  const p: Problem = { type, title: err.code, status, detail: err.message, code: err.code };
  if (err.details && flavour === 'cocoon') p.details = err.details;
  if (err.details && flavour === 'coco' && err.code === 'POLICY_INVALID') p.details = err.details;
  return p;
}

/** An error handler for one area (scope) of the app. */
export function problemHandler(flavour: 'coco' | 'cocoon') {
  return function handle(err: unknown, request: FastifyRequest, reply: FastifyReply): void {
    const e = toCocoonError(err);
    if (e.code === 'INTERNAL') request.log.error({ err }, 'request failed');
    else request.log.info({ code: e.code, status: e.httpStatus }, e.message);
    void reply
      .code(e.httpStatus)
      .type(flavour === 'coco' ? 'application/json' : 'application/problem+json')
      .send(problemFor(e, flavour));
  };
}

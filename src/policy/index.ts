export { parsePolicy, MAX_POLICY_BYTES } from './parse.js';
export type { ParseOptions } from './parse.js';
export { evaluateAccept, grantedSecrets } from './evaluate.js';
export type { Appraisal, AppraisalInput } from './evaluate.js';
export { parseTemplate, renderTemplate, renderTemplateText, templateSecrets } from './template.js';
export * from './names.js';
export * from './types.js';

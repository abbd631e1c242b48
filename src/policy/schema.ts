/**
 * JSON Schema (draft 2020-12) of the policy format, published as docs/policy.schema.json
 * (test/policy/schema.test.ts keeps the two identical) and checked by parsePolicy on every
 * document after the position-aware parser (which gives the friendlier messages).
 */
const HEX = (bytes: number) => ({ type: 'string', pattern: `^[0-9a-fA-F]{${bytes * 2}}$` });
const HEX_ANY = { type: 'string', pattern: '^[0-9a-fA-F]{2,256}$', maxLength: 256 };
const NAME = '^[a-z0-9][a-z0-9._-]{0,62}/[a-z0-9][a-z0-9._-]{0,62}$';
const SECRET = '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$';
const WORKLOAD = '^[a-z0-9][a-z0-9._-]{0,62}$';
const TEE = { enum: ['sgx', 'tdx', 'snp', 'tpm', 'az-snp-vtpm', 'az-tdx-vtpm', 'sim'] };
const KEY_TYPE = { enum: ['P-256', 'P-384', 'Ed25519', 'RSA-2048', 'RSA-3072'] };
const SCOPE = { enum: ['shared', 'instance'] };
const bool = { type: 'boolean' };
const PORT = { type: 'integer', minimum: 1, maximum: 65535 };
const uint = (max: number) => ({ type: 'integer', minimum: 0, maximum: max });
const obj = (properties: Record<string, unknown>, required: string[] = [], extra: Record<string, unknown> = {}) => ({
  type: 'object',
  additionalProperties: false,
  required,
  properties,
  ...extra,
});

const secret = {
  type: 'object',
  required: ['kind'],
  properties: { kind: { enum: ['random', 'keypair', 'x509', 'x509-ca', 'imported', 'layer-key'] } },
  oneOf: [
    obj({ kind: { const: 'random' }, size: { type: 'integer', minimum: 1, maximum: 4096 }, encoding: { enum: ['bytes', 'hex', 'base64', 'ascii'] }, ownerReadable: bool, scope: SCOPE }, ['kind', 'size']),
    obj({ kind: { const: 'keypair' }, keyType: KEY_TYPE, ownerReadable: bool, scope: SCOPE }, ['kind', 'keyType']),
    obj(
      {
        kind: { const: 'x509' },
        issuer: { type: 'string', pattern: SECRET },
        usage: { enum: ['server', 'client'] },
        keyType: KEY_TYPE,
        subject: { type: 'string', minLength: 1, maxLength: 256 },
        sans: { type: 'array', maxItems: 64, items: { type: 'string', minLength: 1, maxLength: 253 } },
        validityDays: { type: 'integer', minimum: 1, maximum: 825 },
        keyUsage: { type: 'array', maxItems: 4, items: { enum: ['digitalSignature', 'keyEncipherment', 'keyAgreement', 'nonRepudiation'] } },
        ownerReadable: bool,
        scope: SCOPE,
      },
      ['kind'],
    ),
    obj({ kind: { const: 'x509-ca' }, keyType: KEY_TYPE, subject: { type: 'string', minLength: 1, maxLength: 256 }, validityDays: { type: 'integer', minimum: 1, maximum: 3650 }, ownerReadable: bool }, ['kind']),
    obj({ kind: { const: 'imported' }, ownerReadable: bool, from: { type: 'string', pattern: `${NAME.slice(0, -1)}/[A-Za-z0-9][A-Za-z0-9._-]{0,63}$` } }, ['kind']),
    obj({ kind: { const: 'layer-key' }, ownerReadable: bool }, ['kind']),
  ],
};


const acceptRule = obj(
  {
    tee: { type: 'array', minItems: 1, maxItems: 16, items: TEE },
    measurement: HEX(48),
    sgx: obj({ mrenclave: { oneOf: [HEX(32), { type: 'array', minItems: 1, maxItems: 32, items: HEX(32) }] }, mrsigner: HEX(32), isvprodid: uint(65535), minIsvsvn: uint(65535) }, [], { minProperties: 1 }),
    tdx: obj({ mr_td: HEX(48), rtmr0: HEX(48), rtmr1: HEX(48), rtmr2: HEX(48), rtmr3: HEX(48), mr_config_id: HEX(48) }, [], { minProperties: 1 }),
    snp: obj({ measurement: HEX(48), host_data: HEX(32) }, [], { minProperties: 1 }),
    pcrs: { type: 'object', minProperties: 1, maxProperties: 24, propertyNames: { pattern: '^pcr(0[0-9]|1[0-9]|2[0-3])$' }, additionalProperties: HEX_ANY },
    tcb: obj({ statuses: { type: 'array', maxItems: 16, items: { type: 'string', pattern: '^[A-Za-z]{1,64}$' } }, advisories: { type: 'array', maxItems: 256, items: { type: 'string', pattern: '^[A-Za-z0-9-]{1,64}$' } } }),
    minSvn: { type: 'object', maxProperties: 32, propertyNames: { pattern: '^[a-z][a-z0-9_.]{0,63}$' }, additionalProperties: uint(2 ** 32) },
    initData: { const: 'bound' },
    debug: bool,
  },
  ['tee'],
  { anyOf: ['measurement', 'sgx', 'tdx', 'snp', 'pcrs'].map((k) => ({ required: [k] })) },
);

const workload = obj(
  {
    accept: { type: 'array', minItems: 1, maxItems: 32, items: acceptRule },
    maxActivations: { type: 'integer', minimum: 1, maximum: 2 ** 31 - 1 },
    secrets: { type: 'array', maxItems: 256, items: { type: 'string', pattern: SECRET } },
    env: { type: 'object', maxProperties: 256, propertyNames: { pattern: '^[A-Za-z_][A-Za-z0-9_]{0,127}$' }, additionalProperties: { type: 'string', maxLength: 65536 } },
    files: {
      type: 'array',
      maxItems: 64,
      items: obj({ path: { type: 'string', pattern: '^/', maxLength: 1024 }, mode: { type: 'string', pattern: '^0?[0-7]{3}$' }, content: { type: 'string', maxLength: 65536 } }, ['path', 'content']),
    },
    args: { type: 'array', minItems: 1, maxItems: 256, items: { type: 'string', maxLength: 65536 } },
    tls: obj({
      ingress: {
        type: 'array',
        maxItems: 16,
        items: obj(
          {
            listen: PORT,
            to: PORT,
            clientCert: { enum: ['required', 'optional', 'none'] },
            // `web` (this policy), `org/app#web`, or {policy?, workload} like egress's `expect`
            allow: { type: 'array', minItems: 1, maxItems: 64, items: { oneOf: [{ type: 'string', pattern: `^(${NAME.slice(1, -1)}#)?${WORKLOAD.slice(1)}` }, obj({ policy: { type: 'string', pattern: NAME }, workload: { type: 'string', pattern: WORKLOAD } }, ['workload'])] } },
          },
          ['listen', 'to'],
          { if: { required: ['allow'] }, then: { properties: { clientCert: { const: 'required' } } } },
        ),
      },
      egress: {
        type: 'array',
        maxItems: 16,
        items: obj({ listen: PORT, to: { type: 'string', maxLength: 300, pattern: '^(\\[[0-9A-Fa-f:.]+\\]|[A-Za-z0-9.-]+):[0-9]{1,5}$' }, expect: obj({ policy: { type: 'string', pattern: NAME }, workload: { type: 'string', pattern: WORKLOAD } }, ['policy', 'workload']) }, ['listen', 'to', 'expect']),
      },
    }),
    workloadCert: bool,
    volumes: {
      type: 'array',
      minItems: 1,
      maxItems: 16,
      items: obj({ name: { type: 'string', pattern: '^[a-z0-9][a-z0-9_-]{0,62}$' }, mountPath: { type: 'string', pattern: '^/[^\\u0000]+$', maxLength: 1024 }, allowRollback: bool, commitEvery: { type: 'string', pattern: '^[1-9][0-9]{0,5}(s|m|h)$' } }, ['name', 'mountPath']),
    },
  },
  ['accept'],
);

const ownerKey = {
  type: 'object',
  oneOf: [
    obj({ kty: { const: 'EC' }, crv: { const: 'P-256' }, x: { type: 'string', pattern: '^[A-Za-z0-9_-]{43}$' }, y: { type: 'string', pattern: '^[A-Za-z0-9_-]{43}$' }, kid: { type: 'string' }, alg: { const: 'ES256' }, use: { const: 'sig' } }, ['kty', 'crv', 'x', 'y']),
    obj({ kty: { const: 'OKP' }, crv: { const: 'Ed25519' }, x: { type: 'string', pattern: '^[A-Za-z0-9_-]{43}$' }, kid: { type: 'string' }, alg: { const: 'EdDSA' }, use: { const: 'sig' } }, ['kty', 'crv', 'x']),
  ],
};

export const POLICY_JSON_SCHEMA = {
  $schema: 'https://json-schema.org/draft/2020-12/schema',
  $id: 'https://cocoon.dev/schemas/policy-v1.json',
  title: 'Cocoon policy (format version 1)',
  description: 'See docs/policy.md. Secret references and template syntax are checked beyond this schema.',
  ...obj(
    {
      version: { const: 1 },
      name: { type: 'string', pattern: NAME },
      predecessor: { type: 'string', pattern: '^sha256:[0-9a-f]{64}$' },
      owners: { type: 'array', minItems: 1, maxItems: 32, items: obj({ name: { type: 'string', pattern: '^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$' }, key: ownerKey }, ['name', 'key']) },
      approvals: obj({ threshold: { type: 'integer', minimum: 1, maximum: 32 } }, ['threshold']),
      exports: { type: 'object', maxProperties: 256, propertyNames: { pattern: SECRET }, additionalProperties: { type: 'array', minItems: 1, maxItems: 64, items: { type: 'string', pattern: NAME } } },
      secrets: { type: 'object', maxProperties: 256, propertyNames: { pattern: SECRET }, additionalProperties: secret },
      workloads: { type: 'object', minProperties: 1, maxProperties: 64, propertyNames: { pattern: '^[a-z0-9][a-z0-9._-]{0,62}$' }, additionalProperties: workload },
    },
    ['name', 'workloads'],
  ),
} as const;

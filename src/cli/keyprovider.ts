import type { Command } from 'commander';
import { CocoonError, asCocoonError } from '../errors.js';

const MAX_STDIN = 1 << 20;

async function readStdin(max: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of process.stdin) {
    n += (c as Buffer).length;
    if (n > max) throw new CocoonError('INPUT_TOO_LARGE', `keyprovider request larger than ${max} bytes`);
    chunks.push(c as Buffer);
  }
  return Buffer.concat(chunks);
}

/**
 * `cocoon keyprovider`: the ocicrypt keyprovider command protocol on stdin/stdout, so that
 * `skopeo copy --encryption-key provider:cocoon:kbs:///<repo>/<type>/<tag>` works with
 * OCICRYPT_KEYPROVIDER_CONFIG pointing at {"key-providers":{"cocoon":{"cmd":{"path":"cocoon","args":["keyprovider"]}}}}.
 */
export function registerKeyprovider(program: Command): void {
  program
    .command('keyprovider')
    .description('ocicrypt key provider (stdin/stdout JSON protocol) for skopeo/containerd: provider:cocoon:kbs:///<repo>/<type>/<tag>')
    .addHelpText(
      'after',
      `
Reads one request from stdin ({"op":"keywrap"|"keyunwrap",…}) and writes the result to stdout.
The KEK of kbs:///<repo>/<type>/<tag> comes from ?key-file=PATH in the URI or from
$COCOON_KEYPROVIDER_KEK_FILE (32 bytes, base64, as written by cocoon wrap --key-file).
Inside a TEE, keyunwrap without a key file attests to $COCOON_KBS_URL ($COCOON_TEE or detected)
as workload $COCOON_WORKLOAD with measurement $COCOON_MEASUREMENT and fetches the resource.

  echo '{"key-providers":{"cocoon":{"cmd":{"path":"/usr/local/bin/cocoon","args":["keyprovider"]}}}}' > ocicrypt.json
  OCICRYPT_KEYPROVIDER_CONFIG=ocicrypt.json COCOON_KEYPROVIDER_KEK_FILE=image.key \\
    skopeo copy --encryption-key provider:cocoon:kbs:///shop/redis/layer-key oci:redis:7 oci:redis-enc:7
Errors go to stderr with a non-zero exit status. See docs/images.md.`,
    )
    .action(async () => {
      try {
        const { handleKeyProviderRequest } = await import('../image/keyprovider.js');
        const out = await handleKeyProviderRequest(await readStdin(MAX_STDIN));
        process.stdout.write(out);
      } catch (err) {
        const e = asCocoonError(err);
        process.stderr.write(`cocoon keyprovider: [${e.code}] ${e.message}\n`);
        process.exitCode = e.exitCode === 0 ? 1 : e.exitCode;
      }
    });
}

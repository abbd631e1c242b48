import { Command, CommanderError } from 'commander';
import { reportError } from './output.js';
import { registerInit } from './init.js';
import { registerServe } from './serve.js';
import { registerWrap } from './wrap.js';
import { registerPolicy, registerSecret } from './owner.js';
import { registerRuntime } from './run.js';
import { registerLaunch } from './launch.js';
import { registerVerify } from './verify.js';
import { registerDemo } from './demo.js';
import { registerKbsAdmin } from './kbs-admin.js';
import { registerImage } from './image.js';
import { registerKeyprovider } from './keyprovider.js';
import { registerK8s } from './k8s.js';
import { registerUi } from './ui.js';
import { registerAttest } from './attest.js';
import { registerInitData } from './initdata.js';

// `cocoon … | head` must end quietly, not with an EPIPE stack trace.
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  if (err.code === 'EPIPE') process.exit(0);
  throw err;
});

const program = new Command();
program
  .name('cocoon')
  .description('Confidential containers: run unmodified images inside TEEs (TDX, SEV-SNP, Azure CVM vTPM, SGX); only attested workloads get their layer keys and secrets.')
  .addHelpText('after', '\nQuick start:  cocoon demo    (KBS + wrapped Redis under the INSECURE simulated TEE)\nDocs:         README.md, docs/cli.md, docs/quickstart.md')
  .version(process.env.npm_package_version ?? '0.1.0', '-V, --version')
  .showHelpAfterError('(run with --help for usage)')
  .configureHelp({ sortSubcommands: false, showGlobalOptions: true })
  .exitOverride();

registerDemo(program);
registerInit(program);
registerServe(program);
registerWrap(program);
registerPolicy(program);
registerSecret(program);
registerRuntime(program);
registerVerify(program);
registerLaunch(program);
registerKbsAdmin(program);
registerImage(program);
registerKeyprovider(program);
registerK8s(program);
registerUi(program);
registerAttest(program);
registerInitData(program);

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) {
    process.exitCode = err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.code === 'commander.help' ? 0 : 2;
  } else {
    process.exitCode = reportError(err, false);
  }
}

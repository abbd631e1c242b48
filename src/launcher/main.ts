import { asCocoonError } from '../errors.js';
import { launcherConfigFromEnv } from './config.js';
import { createLauncherLog } from './log.js';
import { launch } from './launch.js';

/** Entry point of /cocoon/launcher.mjs, PID 1 of a wrapped container. */
async function main(): Promise<void> {
  const log = createLauncherLog();
  try {
    const config = launcherConfigFromEnv(process.env);
    const status = await launch(config, log);
    process.exit(status);
  } catch (err) {
    const error = asCocoonError(err);
    log.error(`[${error.code}] ${error.message}`);
    log.error('the application was not started');
    process.exit(error.code === 'INTERNAL' ? 70 : 1);
  }
}

if (process.argv[2] === 'launch') await main();

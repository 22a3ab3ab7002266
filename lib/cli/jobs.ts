import type { Command } from './command.js';
import { EXIT } from './common.js';

// Placeholder: `offload jobs` is being written (list|show|cancel|retry|purge).
export const jobsCommand: Command = {
  name: 'jobs',
  summary: 'inspect and manage jobs: list, show, cancel, retry, purge',
  help: 'Usage: offload jobs <list|show|cancel|retry|purge> --broker <url> [options]\n',
  async run(_args, io) {
    io.err('offload jobs: not built yet\n');
    return EXIT.failed;
  },
};

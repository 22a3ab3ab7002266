import type { Command } from './command.js';
import { EXIT } from './common.js';

// Placeholder: `offload worker` is being written (list|show|cancel|retry|purge).
export const workerCommand: Command = {
  name: "worker",
  summary: 'inspect and manage jobs: list, show, cancel, retry, purge',
  help: 'Usage: offload worker <list|show|cancel|retry|purge> --broker <url> [options]\n',
  async run(_args, io) {
    io.err('offload worker: not built yet\n');
    return EXIT.failed;
  },
};

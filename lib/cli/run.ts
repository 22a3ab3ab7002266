import type { Command } from './command.js';
import { EXIT } from './common.js';

// Placeholder: `offload run` is being written (list|show|cancel|retry|purge).
export const runCommand: Command = {
  name: "run",
  summary: 'inspect and manage jobs: list, show, cancel, retry, purge',
  help: 'Usage: offload run <list|show|cancel|retry|purge> --broker <url> [options]\n',
  async run(_args, io) {
    io.err('offload run: not built yet\n');
    return EXIT.failed;
  },
};

// Runs the browser tests (build/test/e2e/**/*.e2e.js) with Node's test runner, in Debian's
// Chromium through playwright-core. `npm run test:e2e -- dashboard` runs the files whose path
// contains a word. Screenshots land in test-output/e2e/.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

const chromium = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
if (!existsSync(chromium)) {
  console.error(
    `No Chromium at ${chromium}: install Debian's (apt-get install chromium) or set CHROMIUM_PATH.`,
  );
  process.exit(1);
}
const filters = process.argv.slice(2);
const files = readdirSync('build/test/e2e', { recursive: true })
  .map((f) => join('build/test/e2e', String(f)))
  .filter((f) => f.endsWith('.e2e.js'))
  .filter((f) => filters.length === 0 || filters.some((w) => f.includes(w)))
  .sort();
if (files.length === 0) {
  console.error(`No browser test files match ${filters.join(', ') || '(all)'}.`);
  process.exit(1);
}
// One file at a time: each starts its own Chromium, and the machine has two cores.
const result = spawnSync(
  process.execPath,
  ['--test', '--test-concurrency=1', '--test-timeout=120000', ...files],
  { stdio: 'inherit' },
);
process.exit(result.status ?? 1);

// Runs Node's test runner on the compiled tests: every build/test/**/*.test.js, or the files
// whose path contains one of the given words (`npm test -- sse worker`).
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';

const filters = process.argv.slice(2);
const files = readdirSync('build/test', { recursive: true })
  .map((f) => join('build/test', String(f)))
  .filter((f) => f.endsWith('.test.js'))
  .filter((f) => filters.length === 0 || filters.some((w) => f.includes(w)))
  .sort();
if (files.length === 0) {
  console.error(`No test files match ${filters.join(', ') || '(all)'}.`);
  process.exit(1);
}
const result = spawnSync(process.execPath, ['--test', '--test-timeout=120000', ...files], {
  stdio: 'inherit',
});
process.exit(result.status ?? 1);

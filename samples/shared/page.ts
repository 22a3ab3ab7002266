import { readFileSync } from 'node:fs';
import { join } from 'node:path';

/** The progress page both samples serve at `GET /` (read once, from the source tree). */
export const samplePage = readFileSync(join(__dirname, '../../../samples/shared/public/index.html'), 'utf8');

/**
 * The browser client (`offload/client`, an ES module) that the page imports from
 * `/offload-client.mjs`, resolved as any app would find it in node_modules. Its source-map
 * comment is dropped: the map is not served.
 */
export const clientScript = readFileSync(require.resolve('offload/client'), 'utf8').replace(
  /\n\/\/# sourceMappingURL=.*\s*$/,
  '\n',
);

/** Where the page imports the client from. */
export const clientScriptPath = '/offload-client.mjs';

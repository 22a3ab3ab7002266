import { readFileSync } from 'node:fs';
import { join } from 'node:path';

/** The progress page both samples serve at `GET /` (read once, from the source tree). */
export const samplePage = readFileSync(join(__dirname, '../../../samples/shared/public/index.html'), 'utf8');

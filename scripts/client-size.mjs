// Prints the browser client's size as shipped: build/lib/client/index.mjs minified with terser,
// then gzipped. Run after `npm run build`: node scripts/client-size.mjs
import { readFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { minify } from 'terser';

const file = new URL('../build/lib/client/index.mjs', import.meta.url);
const source = readFileSync(file, 'utf8');
const { code } = await minify(source, { module: true, compress: { passes: 2 }, mangle: true });
const gzipped = gzipSync(code, { level: 9 }).length;
console.log(
  `offload/client: ${source.length} B source, ${code.length} B minified, ${gzipped} B minified + gzipped`,
);

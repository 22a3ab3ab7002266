// `npm run bench -- <name> [options]`: one benchmark per name, each comparing offload with its anchor.
type Bench = (argv: string[]) => Promise<number>;

const BENCHES: Record<string, Bench> = {
  http: async (argv) => (await import('./http.bench.js')).httpBench(argv),
  nest: async (argv) => (await import('./nest.bench.js')).nestBench(argv),
  postgres: async (argv) => (await import('./postgres.bench.js')).postgresBench(argv),
  redis: async (argv) => (await import('./redis.bench.js')).redisBench(argv),
};

async function main(): Promise<number> {
  const [name, ...argv] = process.argv.slice(2);
  const bench = name !== undefined && Object.hasOwn(BENCHES, name) ? BENCHES[name] : undefined;
  if (!bench) {
    console.error(
      `usage: npm run bench -- <${Object.keys(BENCHES).join('|')}> [--rounds N] [--duration S] [--warmup S]`,
    );
    console.error('       [--connections N] [--pipelining N] [--cpu-prof <server>]');
    if (name !== undefined) console.error(`Unknown benchmark "${name}".`);
    return 2;
  }
  return bench(argv);
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(err instanceof Error ? err.message : err);
    process.exit(1);
  },
);

import type { Server } from 'node:http';

/**
 * The child side of a benchmark server: listen on loopback, tell the parent the port, answer
 * its stats requests between rounds, and exit when told to or when the parent goes away (so a
 * crashed benchmark never leaves a server behind).
 */
export interface ServeOptions {
  /** Extra figures for the parent (jobs run, broker counts, ...), read between rounds only. */
  stats?: () => Promise<Record<string, unknown>> | Record<string, unknown>;
  /** Release what the server holds (workers, brokers) before the process exits. */
  close?: () => Promise<unknown>;
}

export type ParentMessage = { type: 'stats'; id: number } | { type: 'stop' };
export type ChildMessage =
  | { type: 'ready'; port: number }
  | { type: 'stats'; id: number; stats: Record<string, unknown> };

export function serve(server: Server, options: ServeOptions = {}): void {
  if (!process.send) throw new Error('A benchmark server runs as a child process started by bench/run.js.');
  const send = (message: ChildMessage) => process.send?.(message);

  let stopping = false;
  const stop = async (code: number) => {
    if (stopping) return;
    stopping = true;
    server.closeAllConnections();
    server.close();
    try {
      await options.close?.();
    } finally {
      // process.exit (not a kill) lets --cpu-prof write its profile.
      process.exit(code);
    }
  };

  process.on('message', (message: ParentMessage) => {
    if (message.type === 'stop') void stop(0);
    else if (message.type === 'stats') {
      Promise.resolve(options.stats?.() ?? {}).then(
        (stats) => send({ type: 'stats', id: message.id, stats: { ...stats, ...usage() } }),
        (err) => send({ type: 'stats', id: message.id, stats: { error: String(err) } }),
      );
    }
  });
  process.on('disconnect', () => void stop(0));

  server.keepAliveTimeout = 60_000;
  server.listen(0, '127.0.0.1', () => {
    const address = server.address();
    if (address === null || typeof address === 'string') throw new Error('Expected a TCP address.');
    send({ type: 'ready', port: address.port });
  });
}

/** CPU time is what a request costs the server, whatever else the machine is doing. */
function usage(): Record<string, number> {
  const { rss, heapUsed } = process.memoryUsage();
  const { user, system } = process.cpuUsage();
  return {
    rssMb: Math.round(rss / 1048576),
    heapUsedMb: Math.round(heapUsed / 1048576),
    cpuUs: user + system,
  };
}

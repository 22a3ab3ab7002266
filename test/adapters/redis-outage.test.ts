// Redis dies under load and comes back: submits and status reads answer 503 fast (never hang),
// workers resume on their own, and no job that got a 202 is lost. Own redis-server, AOF on.
//
// appendfsync always: Redis writes and fsyncs the AOF before it sends the reply, so a 202 (sent
// only after the enqueue script's reply) means the job is on disk. With everysec a SIGKILL
// usually loses nothing either (the write() to the page cache still precedes the reply), but
// Redis may postpone that write while a background fsync is slow and reply anyway, so "no 202
// lost" would hold only most of the time.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { RedisBroker } from '../../adapters/redis/redis.broker.js';
import type { JobEvent, JobRecord } from '../../lib/job.js';
import type { Logger } from '../../lib/logger.js';
import { createServer, type TestServer } from '../helpers/create-server.js';
import { OutageLoad } from '../helpers/outage-load.js';
import { type RedisServer, startRedisServer } from '../helpers/redis-server.js';

const JOB_MS = 20;
/**
 * The worker's backstop poll, long on purpose: a job submitted after the restart that starts well
 * within it was woken by the pub/sub hint, which proves the subscriber came back.
 */
const POLL_MS = 5000;

describe('RedisBroker when Redis dies under load (own redis-server, AOF on)', () => {
  let redis: RedisServer;
  let broker: RedisBroker;
  let server: TestServer;
  const prefix = `offload-outage-${randomUUID().slice(0, 8)}`;
  const offlineQueue = (): number =>
    (broker.client as unknown as { offlineQueue?: { length: number } }).offlineQueue?.length ?? 0;
  let offlineQueuePeak = 0;
  const load = new OutageLoad(
    { outage: 'the kill', began: 'the kill', inFlight: 'at the kill', down: 'Redis is down' },
    () => {
      offlineQueuePeak = Math.max(offlineQueuePeak, offlineQueue());
    },
  );
  const { samples, accepted, logged } = load;
  /** Every job event the broker's one subscriber connection delivered. */
  const events: JobEvent[] = [];
  /** When the broker's connection noticed the kill: a command sent later cannot reach the dead socket. */
  let closeSeenAt = 0;
  let ioredisUnhandled = 0;
  const consoleError = console.error;

  const logger: Logger = {
    // A run whose final write was refused: its job was handed to another run meanwhile.
    debug: (f, message) => {
      if ((f as { outcome?: string }).outcome === 'lease-lost') logged.push(`debug: ${message} (lease-lost)`);
    },
    info: () => {},
    warn: (_f, message) => logged.push(`warn: ${message}`),
    error: (_f, message) => logged.push(`error: ${message}`),
  };

  before(async () => {
    // Counted for the report (ioredis prints these when a connection has no 'error' listener).
    console.error = (...args: unknown[]) => {
      if (String(args[0]).startsWith('[ioredis] Unhandled error event')) ioredisUnhandled++;
      else consoleError(...args);
    };
    load.loopDelay.enable();
    redis = await startRedisServer({ appendonly: true, appendfsync: 'always' });
    broker = new RedisBroker({ connection: redis.url, prefix });
    await broker.subscribe((event) => events.push(event));
    server = await createServer(
      {
        broker,
        logger,
        worker: { concurrency: 8, leaseTime: '3s', gracePeriod: 100, pollInterval: POLL_MS },
      },
      (app, jobs) => {
        app.post(
          '/work',
          jobs.background<{ i: number }>('work', async ({ i }, job) => {
            load.ran(job.id);
            await sleep(JOB_MS);
            return { i };
          }),
        );
      },
    );
    load.baseUrl = server.baseUrl;
  });

  after(async () => {
    console.error = consoleError;
    // Each step bounded: a broker stuck on a dead Redis must not hold the process.
    await Promise.race([server?.close(), sleep(5000)]);
    await Promise.race([broker?.close(), sleep(2000)]);
    broker?.client.disconnect();
    await redis?.stop();
  });

  it('kills -9 redis-server under load; before the kill submits answer 202 and statuses 200', async () => {
    await load.loadThrough(async () => {
      broker.client.once('close', () => {
        closeSeenAt = Date.now();
      });
      await redis.kill();
      // The burst that follows comes once the broker knows Redis is down: the offline queue must
      // not turn it into hangs.
      const closeSeen = Date.now() + 2000;
      while (!closeSeenAt && Date.now() < closeSeen) await sleep(5);
    });
  });

  it('answers every submit and status read within 2.5 s while Redis is down: 503 problem+json with Retry-After', () => {
    load.assertFast503s(Number.POSITIVE_INFINITY);
  });

  it('loses no job that got a 202 once redis-server restarts on the same port and AOF', async () => {
    const restartedAt = Date.now();
    await redis.restart();
    await load.assertNoneLost(broker, {
      label: 'outage',
      since: restartedAt,
      after: 'the restart',
      details: (finishedMs) =>
        `connection closed ${closeSeenAt - load.outageAt} ms after the kill; ` +
        `all finished ${finishedMs} ms after the restart; ioredis offline queue peak ${offlineQueuePeak}; ` +
        `${ioredisUnhandled} "[ioredis] Unhandled error event" lines on stderr`,
    });
  });

  it('resumes: the status route answers 200 again and a new submit is woken and run well within the poll', async () => {
    const id = [...accepted][0]!;
    const read = await load.status(id);
    assert.equal(read.status, 200, `status after the restart: ${read.body}`);
    assert.equal((JSON.parse(read.body) as JobRecord).status, 'succeeded');
    // Let the worker go idle on its (long) poll, so only a pub/sub hint can start the next job.
    await sleep(300);
    const fresh = await load.submit(200_000);
    assert.equal(fresh.status, 202, `submit after the restart: ${fresh.body}`);
    const started = Date.now();
    for (;;) {
      const s = await load.status(fresh.id!);
      if (s.status === 200 && (JSON.parse(s.body) as JobRecord).status === 'succeeded') break;
      assert.ok(
        Date.now() - started < 1500,
        `a job submitted after the restart runs within 1.5 s, not at the ${POLL_MS} ms backstop poll ` +
          `(the subscriber did not resubscribe, or the worker is stuck after the reconnect): ${s.body}`,
      );
      await sleep(20);
    }
    console.log(`a job submitted after the restart finished in ${Date.now() - started} ms`);
    // Its events came through the subscriber connection that lived through the outage.
    const seen = () => events.filter((e) => e.jobId === fresh.id && e.type === 'status').map((e) => e.status);
    const deadline = Date.now() + 1000;
    while (!seen().includes('succeeded') && Date.now() < deadline) await sleep(10);
    assert.deepEqual(
      seen(),
      ['queued', 'running', 'succeeded'],
      'events after the restart reach subscribers',
    );
  });

  it('leaves no job behind for a submit answered 503 while Redis was down', () => {
    // 503 tells the client nothing was accepted and to retry (Retry-After): a job created anyway
    // runs twice once the client does. Only submits started after the broker's connection saw the
    // kill count: one sent before may have been run by Redis, and its answer is honestly unknown.
    assert.ok(closeSeenAt > 0, "the broker's connection saw the kill");
    const refused = new Set(
      samples
        .filter((s) => s.kind === 'submit' && s.status === 503 && s.startedAt > closeSeenAt)
        .map((s) => s.i),
    );
    assert.ok(refused.size >= 20, `submits refused while Redis was down (${refused.size})`);
    const phantoms = load.stored.filter((j) => refused.has((j.payload as { i: number }).i));
    assert.equal(
      phantoms.length,
      0,
      `${phantoms.length} of ${refused.size} submits answered 503 while Redis was down were persisted ` +
        'anyway once it came back (the enqueue waited in the ioredis offline queue past brokerTimeout, ' +
        'then ran): a client retrying on 503 gets the job twice',
    );
  });
});

/**
 * A loopback TCP proxy in front of redis-server that can lose one reply: `cutNextReply()` drops
 * the next bytes Redis sends back and closes every connection, as a network cut right after Redis
 * ran a command would. `refuse` turns new connections away, so a reconnect can be held back.
 */
class CuttingProxy {
  readonly server = net.createServer((client) => this.accept(client));
  refuse = false;
  private armed = false;
  private readonly pairs = new Set<[net.Socket, net.Socket]>();

  constructor(private readonly target: number) {}

  async listen(): Promise<number> {
    this.server.listen(0, '127.0.0.1');
    await once(this.server, 'listening');
    return (this.server.address() as net.AddressInfo).port;
  }

  cutNextReply(): void {
    this.armed = true;
  }

  close(): Promise<void> {
    this.cutAll();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }

  private accept(client: net.Socket): void {
    if (this.refuse) {
      client.destroy();
      return;
    }
    const upstream = net.connect(this.target, '127.0.0.1');
    const pair: [net.Socket, net.Socket] = [client, upstream];
    this.pairs.add(pair);
    client.on('data', (chunk) => upstream.write(chunk));
    upstream.on('data', (chunk) => {
      if (this.armed) {
        this.armed = false;
        this.cutAll();
        return;
      }
      client.write(chunk);
    });
    const end = () => {
      client.destroy();
      upstream.destroy();
      this.pairs.delete(pair);
    };
    for (const socket of pair) {
      socket.on('close', end);
      socket.on('error', end);
    }
  }

  private cutAll(): void {
    for (const [client, upstream] of this.pairs) {
      client.destroy();
      upstream.destroy();
    }
    this.pairs.clear();
  }
}

describe('RedisBroker when the connection is cut after Redis ran an enqueue, before its reply', () => {
  // ioredis resends a command whose reply never came (autoResendUnfulfilledCommands, on by
  // default) once it reconnects: Redis then runs the same enqueue, with the same job id, twice.
  let redis: RedisServer;
  let proxy: CuttingProxy;
  let proxyPort: number;
  const brokers: RedisBroker[] = [];

  before(async () => {
    redis = await startRedisServer();
    proxy = new CuttingProxy(redis.port);
    proxyPort = await proxy.listen();
  });

  after(async () => {
    await Promise.all(brokers.map((b) => Promise.race([b.close(), sleep(2000)])));
    await proxy?.close();
    await redis?.stop();
  });

  /** A broker through the proxy (no subscriber: nothing but our own calls on its one connection). */
  const viaProxy = (prefix: string) => {
    const broker = new RedisBroker({ connection: `redis://127.0.0.1:${proxyPort}`, prefix });
    brokers.push(broker);
    return broker;
  };
  const direct = (prefix: string) => {
    const broker = new RedisBroker({ connection: redis.url, prefix });
    brokers.push(broker);
    return broker;
  };
  const input = { task: 'alpha', payload: { n: 1 }, owner: null, maxAttempts: 3 };

  it('persists the replayed enqueue of a queued job once: one job, counts exact', async () => {
    const prefix = `offload-cut-${randomUUID().slice(0, 8)}`;
    const broker = viaProxy(prefix);
    await broker.get(randomUUID()); // connected
    proxy.cutNextReply();
    const { job } = await broker.enqueue(input);
    const jobs = (await broker.list({ limit: 10 })).jobs;
    assert.deepEqual(
      jobs.map((j) => j.id),
      [job.id],
    );
    assert.equal(
      (await broker.counts()).queued,
      1,
      'one queued job counts once (the enqueue script ran again for the same id and counted it twice)',
    );
  });

  it('does not reset and hand out again a job that started before its replayed enqueue arrived', async () => {
    const prefix = `offload-cut-${randomUUID().slice(0, 8)}`;
    const web = viaProxy(prefix);
    const worker = direct(prefix);
    await web.get(randomUUID());
    // Hold the reconnect back until a worker (on its own connection) has started the job.
    proxy.refuse = true;
    proxy.cutNextReply();
    const submitted = web.enqueue(input);
    const [lease] = await eventuallyValue(async () => {
      const leases = await worker.claim({ tasks: ['alpha'], limit: 1, leaseMs: 30_000, workerId: 'w1' });
      return leases.length ? leases : null;
    }, 'the job, run by Redis before the cut, to be claimable');
    proxy.refuse = false;
    const { job } = await submitted;
    assert.equal(job.id, lease!.job.id);
    const second = await worker.claim({ tasks: ['alpha'], limit: 1, leaseMs: 30_000, workerId: 'w2' });
    assert.deepEqual(
      second.map((l) => l.job.id),
      [],
      'the replayed enqueue reset the running job to queued and it was handed out a second time',
    );
    assert.equal(
      await worker.complete(job.id, lease!.token, 'done'),
      true,
      'the first lease holder may still complete the job',
    );
    assert.equal((await worker.get(job.id))?.status, 'succeeded');
  });
});

async function eventuallyValue<T>(check: () => Promise<T | null>, what: string): Promise<T> {
  const deadline = Date.now() + 3000;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`Timed out waiting for ${what}.`);
    await sleep(10);
  }
}

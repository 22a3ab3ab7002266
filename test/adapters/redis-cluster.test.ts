// The Redis broker on a real 3-master Redis Cluster (started here on loopback ports): the shared
// conformance suite, and the hash-tag design that keeps every script of a queue on one slot.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { Cluster } from 'ioredis';
import { RedisBroker } from '../../adapters/redis/redis.broker.js';
import { brokerConformance } from '../conformance/broker.conformance.js';
import { type RedisCluster, startCluster } from '../helpers/redis-server.js';

let cluster: RedisCluster;
/** One Cluster client shared by every broker, as an app would share its own. */
let client: Cluster;

before(async () => {
  cluster = await startCluster(3);
  client = new Cluster(cluster.startupNodes, { redisOptions: { connectTimeout: 2000 } });
  await client.ping();
});

after(async () => {
  await client?.quit().catch(() => client.disconnect());
  await cluster?.stop();
});

/** Every key matching `pattern`, with the master it was found on ("host:port"). */
async function keysOn(pattern: string): Promise<Map<string, string>> {
  const found = new Map<string, string>();
  for (const node of client.nodes('master')) {
    const where = `${node.options.host}:${node.options.port}`;
    let cursor = '0';
    do {
      const [next, keys] = await node.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
      cursor = next;
      for (const key of keys) found.set(key, where);
    } while (cursor !== '0');
  }
  return found;
}

/** Delete a prefix's keys: they all share one slot, so one DEL per batch is legal in a cluster. */
async function deletePrefix(prefix: string): Promise<void> {
  const keys = [...(await keysOn(`${prefix}:*`)).keys()];
  for (let i = 0; i < keys.length; i += 500) await client.del(...keys.slice(i, i + 500));
}

async function keyslot(key: string): Promise<number> {
  return Number(await client.cluster('KEYSLOT', key));
}

/** The master ("host:port") serving `slot`, from CLUSTER SLOTS. */
async function ownerOf(slot: number): Promise<string> {
  for (const [from, to, master] of await client.cluster('SLOTS')) {
    if (master && slot >= from && slot <= to) return `${master[0]}:${master[1]}`;
  }
  throw new Error(`No master serves slot ${slot}`);
}

const prefixes = new WeakMap<RedisBroker, string>();

brokerConformance(
  'RedisBroker on a 3-master Redis Cluster',
  () => {
    const prefix = `offload-cluster-${randomUUID().slice(0, 8)}`;
    const broker = new RedisBroker({ connection: client, prefix });
    prefixes.set(broker, prefix);
    return broker;
  },
  { cleanup: (broker) => deletePrefix(prefixes.get(broker as RedisBroker)!) },
);

describe('RedisBroker keys in a Redis Cluster', () => {
  it('puts every key of one queue in the slot of its {queue} hash tag', async () => {
    const prefix = `offload-slot-${randomUUID().slice(0, 8)}`;
    const broker = new RedisBroker({ connection: client, prefix, queue: 'reports' });
    try {
      const a = await broker.enqueue({ task: 'alpha', payload: 1, owner: 'alice', maxAttempts: 2 });
      await broker.enqueue({
        task: 'beta',
        payload: 2,
        owner: null,
        maxAttempts: 1,
        idempotencyKey: 'k',
        payloadHash: 'h',
        runAt: Date.now() + 60_000,
      });
      const [lease] = await broker.claim({
        tasks: ['alpha'],
        limit: 1,
        leaseMs: 5000,
        workerId: 'slot-test',
      });
      assert.equal(lease?.job.id, a.job.id);
      assert.equal(await broker.log(a.job.id, lease.token, 'a line'), true);
      assert.equal(await broker.complete(a.job.id, lease.token, { ok: true }), true);

      const keys = await keysOn(`${prefix}:*`);
      // Job hash, events, logs, ready list, delayed set, running/finished/all/owner sets,
      // idempotency key, counts, counters: far more than "a couple".
      assert.ok(keys.size >= 8, `the broker created its keys (found ${[...keys.keys()].join(', ')})`);
      const expected = await keyslot('{reports}');
      for (const key of keys.keys()) {
        assert.match(key, new RegExp(`^${prefix}:\\{reports\\}:`), `${key} carries the {reports} hash tag`);
        assert.equal(await keyslot(key), expected, `${key} is in slot ${expected}`);
      }
      const nodes = new Set(keys.values());
      assert.equal(nodes.size, 1, `all keys on one master, found on ${[...nodes].join(', ')}`);
      assert.equal([...nodes][0], await ownerOf(expected), 'on the master that serves the slot');
    } finally {
      await deletePrefix(prefix);
      await broker.close();
    }
  });

  it('lets two queues live on different masters, each working on its own', async () => {
    // Find two queue names whose hash tags are served by different masters.
    const names: string[] = [];
    const owners: string[] = [];
    for (let i = 0; names.length < 2 && i < 100; i++) {
      const name = `q${i}`;
      const owner = await ownerOf(await keyslot(`{${name}}`));
      if (!owners.includes(owner)) {
        names.push(name);
        owners.push(owner);
      }
    }
    assert.equal(names.length, 2, 'two queue names on different masters');
    const prefix = `offload-queues-${randomUUID().slice(0, 8)}`;
    const brokers = names.map((queue) => new RedisBroker({ connection: client, prefix, queue }));
    try {
      for (const [i, broker] of brokers.entries()) {
        const seen: string[] = [];
        const off = await broker.subscribe((event) => {
          if (event.type === 'status' && event.status) seen.push(event.status);
        });
        const { job } = await broker.enqueue({ task: 't', payload: i, owner: null, maxAttempts: 1 });
        const [lease] = await broker.claim({ tasks: ['t'], limit: 1, leaseMs: 5000, workerId: 'queues' });
        assert.equal(lease?.job.id, job.id, `queue ${names[i]} hands out its own job`);
        assert.equal(await broker.complete(job.id, lease.token, i), true);
        assert.equal((await broker.get(job.id))?.status, 'succeeded');
        // Published from a script on one master, heard by a subscriber that may sit on another.
        const deadline = Date.now() + 2000;
        while (!seen.includes('succeeded') && Date.now() < deadline)
          await new Promise((r) => setTimeout(r, 10));
        assert.deepEqual(seen, ['queued', 'running', 'succeeded'], `events of queue ${names[i]}`);
        off();
        const keys = await keysOn(`${prefix}:{${names[i]}}:*`);
        assert.ok(keys.size > 0, `queue ${names[i]} has keys`);
        assert.deepEqual(
          new Set(keys.values()),
          new Set([owners[i]]),
          `queue ${names[i]} lives on ${owners[i]}`,
        );
      }
      assert.notEqual(owners[0], owners[1]);
      // Neither queue sees the other's jobs.
      const [first, second] = brokers as [RedisBroker, RedisBroker];
      assert.equal((await first.list({ limit: 10 })).jobs.length, 1);
      assert.equal((await second.list({ limit: 10 })).jobs.length, 1);
      assert.notEqual(
        (await first.list({ limit: 10 })).jobs[0]!.id,
        (await second.list({ limit: 10 })).jobs[0]!.id,
      );
    } finally {
      for (const name of names) {
        const keys = [...(await keysOn(`${prefix}:{${name}}:*`)).keys()];
        if (keys.length) await client.del(...keys);
      }
      await Promise.all(brokers.map((b) => b.close()));
    }
  });
});

// The `offload/redis` entry point.
export { fromUrl, RedisBroker, type RedisBrokerOptions } from './redis.broker.js';

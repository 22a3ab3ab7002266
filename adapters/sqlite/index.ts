// The `offload/sqlite` entry point.
export { fromUrl, SqliteBroker, type SqliteBrokerOptions } from './sqlite.broker.js';

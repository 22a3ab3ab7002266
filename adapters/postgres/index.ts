// The `offload/postgres` entry point.
export { latestVersion, type Migration, migrate, migrationSql } from './migrations.js';
export { fromUrl, PostgresBroker, type PostgresBrokerOptions } from './postgres.broker.js';

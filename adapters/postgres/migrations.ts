import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Pool } from 'pg';
import { ConfigError } from '../../lib/errors.js';

/** One versioned step of the schema: `sql/NNN_name.sql`. */
export interface Migration {
  version: number;
  name: string;
  sql: string;
}

// This file runs from build/adapters/postgres/; the .sql files ship in adapters/postgres/sql.
const SQL_DIR = join(__dirname, '../../../adapters/postgres/sql');

let migrations: Migration[] | undefined;

/** The migrations, in version order, as written (with `{{schema}}` and `{{channel}}` in them). */
export function loadMigrations(): Migration[] {
  if (!migrations) {
    migrations = readdirSync(SQL_DIR)
      .map((file) => /^(\d+)_(.+)\.sql$/.exec(file))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => ({ version: Number(m[1]), name: m[2]!, sql: readFileSync(join(SQL_DIR, m[0]), 'utf8') }))
      .sort((a, b) => a.version - b.version);
  }
  return migrations;
}

/** The highest migration version this version of offload needs. */
export function latestVersion(): number {
  return loadMigrations().at(-1)!.version;
}

export function checkSchemaName(schema: string): void {
  // Also a NOTIFY channel prefix and part of prepared statement names: keep it plain.
  if (!/^[A-Za-z_][A-Za-z0-9_]{0,47}$/.test(schema)) {
    throw new ConfigError(
      `The PostgreSQL schema name ${JSON.stringify(schema)} must be letters, digits and _ (up to 48), not starting with a digit.`,
    );
  }
}

function render(sql: string, schema: string): string {
  return sql.replaceAll('{{schema}}', `"${schema}"`).replaceAll('{{channel}}', `'${schema}'`);
}

/** The SQL of the schema's own bookkeeping: the schema and its table of applied migrations. */
function bookkeeping(schema: string): string {
  return [
    `CREATE SCHEMA IF NOT EXISTS "${schema}";`,
    `CREATE TABLE IF NOT EXISTS "${schema}".migration (version integer PRIMARY KEY, name text NOT NULL,`,
    '  applied_at timestamptz NOT NULL DEFAULT now());',
  ].join('\n');
}

/**
 * The SQL that `migrate` would run on a database at `fromVersion` (0: a fresh one), for a DBA to
 * review or apply by hand (`new PostgresBroker({ migrate: false })` then only checks the version).
 */
export function migrationSql(options: { schema?: string; fromVersion?: number } = {}): string {
  const schema = options.schema ?? 'offload';
  checkSchemaName(schema);
  const parts = [bookkeeping(schema)];
  for (const m of loadMigrations()) {
    if (m.version <= (options.fromVersion ?? 0)) continue;
    parts.push(
      `-- migration ${m.version}: ${m.name}`,
      'BEGIN;',
      render(m.sql, schema).trim(),
      `INSERT INTO "${schema}".migration (version, name) VALUES (${m.version}, '${m.name}');`,
      'COMMIT;',
    );
  }
  return `${parts.join('\n\n')}\n`;
}

/**
 * Bring the schema to the latest version. Runs under a session advisory lock, so processes that
 * start together apply each migration once (the others wait, then find it applied); each
 * migration is one transaction, recorded in the same transaction. Returns the versions applied.
 */
export async function migrate(pool: Pool, schema: string): Promise<number[]> {
  checkSchemaName(schema);
  const client = await pool.connect();
  const lock = `offload:migrate:${schema}`;
  let released = false;
  try {
    await client.query('SELECT pg_advisory_lock(hashtext($1))', [lock]);
    await client.query(bookkeeping(schema));
    const { rows } = await client.query<{ version: number }>(`SELECT version FROM "${schema}".migration`);
    const applied = new Set(rows.map((r) => r.version));
    const done: number[] = [];
    for (const m of loadMigrations()) {
      if (applied.has(m.version)) continue;
      try {
        await client.query('BEGIN');
        await client.query(render(m.sql, schema));
        await client.query(`INSERT INTO "${schema}".migration (version, name) VALUES ($1, $2)`, [
          m.version,
          m.name,
        ]);
        await client.query('COMMIT');
      } catch (err) {
        await client.query('ROLLBACK').catch(() => {});
        throw new ConfigError(
          `Migration ${m.version} (${m.name}) of schema "${schema}" failed: ${(err as Error).message}`,
        );
      }
      done.push(m.version);
    }
    await client.query('SELECT pg_advisory_unlock(hashtext($1))', [lock]);
    return done;
  } catch (err) {
    // A connection that failed half-way may still hold the session lock: do not reuse it.
    client.release(err as Error);
    released = true;
    throw err;
  } finally {
    if (!released) client.release();
  }
}

/** The schema's version (0 when not created), for `migrate: false`. */
export async function schemaVersion(pool: Pool, schema: string): Promise<number> {
  const { rows } = await pool.query<{ version: number | null }>(
    `SELECT CASE WHEN to_regclass($1) IS NULL THEN 0 END AS version`,
    [`"${schema}".migration`],
  );
  if (rows[0]?.version === 0) return 0;
  const max = await pool.query<{ version: number | null }>(
    `SELECT max(version) AS version FROM "${schema}".migration`,
  );
  return max.rows[0]?.version ?? 0;
}

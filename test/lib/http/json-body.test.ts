import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { BadRequestError } from '../../../lib/errors.js';
import { assertNoPoisonKeys, parseJson } from '../../../lib/http/body.js';

describe('parseJson', () => {
  it('parses JSON, and an empty body as {}', () => {
    assert.deepEqual(parseJson('{"a":[1,{"b":null}]}'), { a: [1, { b: null }] });
    assert.deepEqual(parseJson('  '), {});
  });

  it('answers bad JSON with a 400 that says why', () => {
    assert.throws(
      () => parseJson('{"a":'),
      (err: BadRequestError) => err.status === 400 && err.code === 'ERR_OFFLOAD_BAD_JSON',
    );
  });

  it('refuses __proto__ and constructor.prototype at any depth, and pollutes nothing', () => {
    for (const text of [
      '{"__proto__":{"polluted":true}}',
      '{"a":[{"b":{"__proto__":{"polluted":true}}}]}',
      '{"constructor":{"prototype":{"polluted":true}}}',
      '[{"x":{"constructor":{"prototype":{}}}}]',
    ]) {
      assert.throws(
        () => parseJson(text),
        (err: BadRequestError) => err.code === 'ERR_OFFLOAD_FORBIDDEN_KEY',
        text,
      );
    }
    assert.equal(({} as Record<string, unknown>).polluted, undefined);
  });

  it('allows the words in values and harmless keys', () => {
    assert.deepEqual(parseJson('{"note":"__proto__ prototype","constructor":"x","prototype":1}'), {
      note: '__proto__ prototype',
      constructor: 'x',
      prototype: 1,
    });
    assert.doesNotThrow(() => assertNoPoisonKeys({ constructor: { name: 'y' } }));
  });
});

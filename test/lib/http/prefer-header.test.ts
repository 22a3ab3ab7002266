import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parsePrefer } from '../../../lib/http/prefer.js';

describe('parsePrefer (RFC 7240)', () => {
  it('reads respond-async and wait, in any case and order, across repeated headers', () => {
    assert.deepEqual(parsePrefer(undefined), { respondAsync: false, wait: null });
    assert.deepEqual(parsePrefer('respond-async'), { respondAsync: true, wait: null });
    assert.deepEqual(parsePrefer('wait=10'), { respondAsync: false, wait: 10 });
    assert.deepEqual(parsePrefer('Respond-Async, WAIT=5'), { respondAsync: true, wait: 5 });
    assert.deepEqual(parsePrefer(['handling=lenient', 'wait="3"']), { respondAsync: false, wait: 3 });
    assert.deepEqual(parsePrefer('wait=2; foo=bar'), { respondAsync: false, wait: 2 });
  });

  it('ignores malformed or unknown preferences', () => {
    assert.deepEqual(parsePrefer('wait=-1'), { respondAsync: false, wait: null });
    assert.deepEqual(parsePrefer('wait=abc'), { respondAsync: false, wait: null });
    assert.deepEqual(parsePrefer('wait=1.5'), { respondAsync: false, wait: null });
    assert.deepEqual(parsePrefer('wait='), { respondAsync: false, wait: null });
    assert.deepEqual(parsePrefer('return=minimal, ,,'), { respondAsync: false, wait: null });
  });
});

import { describe, expect, it } from 'vitest';

import { ErrorDeduplicator, errorKey } from '../src/errors';

describe('ErrorDeduplicator', () => {
  it('shows the first error, then only counts repeats (no toast per keystroke)', () => {
    let now = 0;
    const dedup = new ErrorDeduplicator(60000, 5000, () => now);
    expect(dedup.report('code:model_not_ready', 'loading')).toBe('show');
    const actions = [];
    for (let i = 0; i < 50; i++) {
      now += 100; // a keystroke every 100 ms for 5 s
      actions.push(dedup.report('code:model_not_ready', 'loading'));
    }
    expect(actions.filter(a => a === 'show')).toHaveLength(0);
    expect(actions.filter(a => a === 'update')).toHaveLength(1);
    expect(dedup.count('code:model_not_ready')).toBe(51);
  });

  it('shows again after the quiet window, or after clear()', () => {
    let now = 0;
    const dedup = new ErrorDeduplicator(1000, 100, () => now);
    expect(dedup.report('k', 'm')).toBe('show');
    now = 500;
    expect(dedup.report('k', 'm')).toBe('update');
    now = 1000;
    expect(dedup.report('k', 'm')).toBe('show');
    dedup.clear('k');
    expect(dedup.report('k', 'm')).toBe('show');
  });

  it('keeps different kinds of errors apart', () => {
    const dedup = new ErrorDeduplicator(1000, 100, () => 0);
    expect(dedup.report('a', 'm')).toBe('show');
    expect(dedup.report('b', 'm')).toBe('show');
    expect(dedup.report('a', 'm')).toBe('suppress');
  });
});

describe('errorKey', () => {
  it('prefers the code, then the status, then the message', () => {
    expect(errorKey({ code: 'timeout', message: 'x' })).toBe('code:timeout');
    expect(errorKey({ status: 503, message: 'x' })).toBe('status:503');
    expect(errorKey(new Error('boom'))).toBe('message:boom');
    expect(errorKey('plain')).toBe('message:plain');
  });
});

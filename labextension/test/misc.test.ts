import { describe, expect, it } from 'vitest';

import { LatestOnly } from '../src/debounce';
import { nextPollDelay, readHealth, statusText } from '../src/health';
import { LineSplitter, parseExplainBody, parseExplainLine } from '../src/ndjson';

describe('LatestOnly (debounce)', () => {
  it('lets only the latest ticket through after the wait', async () => {
    const sleeps: number[] = [];
    let release: () => void = () => undefined;
    const latest = new LatestOnly(ms => {
      sleeps.push(ms);
      return new Promise(resolve => (release = resolve));
    });
    const a = latest.next();
    const waitA = latest.wait(a, 250);
    const b = latest.next();
    release();
    expect(await waitA).toBe(false);
    expect(await latest.wait(b, 0)).toBe(true);
    expect(sleeps).toEqual([250]);
  });
});

describe('NDJSON explain stream', () => {
  it('splits chunks at newlines, across chunk boundaries', () => {
    const s = new LineSplitter();
    expect(s.push('{"a":')).toEqual([]);
    expect(s.push('1}\n{"b"')).toEqual(['{"a":1}']);
    expect(s.push(':2}\n\n')).toEqual(['{"b":2}']);
    expect(s.push('{"c":3}')).toEqual([]);
    expect(s.flush()).toEqual(['{"c":3}']);
  });

  it('reads cumulative text, then the success envelope', () => {
    const body =
      '{"type": "stream", "text": "This", "done": false}\n' +
      '{"type": "stream", "text": "This sums", "done": false}\n' +
      '{"status": "success", "data": {"text": "This sums squares.", "output": "This sums squares.", "done": true}, "timestamp": 1}\n';
    const events = parseExplainBody(body);
    expect(events.map(e => e.kind)).toEqual(['text', 'text', 'done']);
    expect(events[2]).toMatchObject({ kind: 'done', text: 'This sums squares.' });
  });

  it('reads error envelopes and ignores junk', () => {
    expect(
      parseExplainLine('{"status": "error", "error": {"code": "timeout", "message": "too slow"}}')
    ).toEqual({ kind: 'error', code: 'timeout', message: 'too slow' });
    expect(parseExplainLine('not json')).toBeNull();
    expect(parseExplainLine('[1,2]')).toBeNull();
  });
});

describe('health', () => {
  it('reads the model state', () => {
    expect(readHealth({ live: true, ready: false, model_state: 'loading', model: 'm' })).toEqual({
      state: 'loading',
      model: 'm',
      error: null
    });
    expect(readHealth({ ready: true }).state).toBe('ready');
    expect(readHealth(null).state).toBe('unknown');
  });

  it('polls often while loading, rarely when ready, backing off when offline', () => {
    expect(nextPollDelay('loading', 0)).toBe(2000);
    expect(nextPollDelay('ready', 0)).toBe(30000);
    expect([1, 2, 3, 4, 5, 6, 7].map(f => nextPollDelay('offline', f))).toEqual([
      2000, 4000, 8000, 16000, 32000, 60000, 60000
    ]);
  });

  it('formats the status text with the last latency once ready', () => {
    expect(statusText({ state: 'ready' }, 412.4)).toBe('jupyter-ds: ready · 412 ms');
    expect(statusText({ state: 'loading' }, 412)).toBe('jupyter-ds: loading');
    expect(statusText({ state: 'failed' }, null)).toBe('jupyter-ds: failed');
  });
});

import { describe, expect, it } from 'vitest';

import { StreamChannel } from '../src/stream';

async function collect(channel: StreamChannel): Promise<string[]> {
  const out: string[] = [];
  for await (const { response } of channel.iterate()) {
    out.push(
      `${response.insertText}|${response.isIncomplete ? 'more' : 'end'}${
        response.error ? '|error:' + response.error.message : ''
      }`
    );
  }
  return out;
}

const tick = () => new Promise(resolve => setTimeout(resolve, 0));

describe('StreamChannel', () => {
  it('yields cumulative text as it arrives, the last one done', async () => {
    const ch = new StreamChannel('t');
    const result = collect(ch);
    ch.push({ insertText: 'su', done: false });
    await tick();
    ch.push({ insertText: 'sum(x', done: false });
    await tick();
    ch.push({ insertText: 'sum(xs)', done: true, lowConfidence: false });
    expect(await result).toEqual(['su|more', 'sum(x|more', 'sum(xs)|end']);
    expect(ch.state).toBe('done');
  });

  it('coalesces chunks queued while the consumer was busy (text is cumulative)', async () => {
    const ch = new StreamChannel('t');
    ch.push({ insertText: 'a', done: false });
    ch.push({ insertText: 'ab', done: false });
    ch.push({ insertText: 'abc', done: false });
    const result = collect(ch);
    await tick();
    ch.push({ insertText: 'abcd', done: true });
    expect(await result).toEqual(['abc|more', 'abcd|end']);
  });

  it('skips chunks that did not change the text', async () => {
    const ch = new StreamChannel('t');
    const result = collect(ch);
    ch.push({ insertText: 'x', done: false });
    await tick();
    ch.push({ insertText: 'x', done: false });
    await tick();
    ch.push({ insertText: 'x', done: true });
    expect(await result).toEqual(['x|more', 'x|end']);
  });

  it('lets the final text be shorter than what was streamed', async () => {
    const ch = new StreamChannel('t');
    const result = collect(ch);
    ch.push({ insertText: 'foo(1, ', done: false });
    await tick();
    ch.push({ insertText: 'foo(1)', done: true });
    expect(await result).toEqual(['foo(1, |more', 'foo(1)|end']);
  });

  it('hides a low-confidence final answer unless asked to show it', async () => {
    const hidden = new StreamChannel('t');
    hidden.push({ insertText: 'maybe()', done: true, lowConfidence: true });
    expect(await collect(hidden)).toEqual(['|end']);
    const shown = new StreamChannel('t', true);
    shown.push({ insertText: 'maybe()', done: true, lowConfidence: true });
    expect(await collect(shown)).toEqual(['maybe()|end']);
  });

  it('ends without another item when cancelled, and ignores later chunks', async () => {
    const ch = new StreamChannel('t');
    const result = collect(ch);
    ch.push({ insertText: 'a', done: false });
    await tick();
    ch.cancel();
    ch.push({ insertText: 'ab', done: true });
    expect(await result).toEqual(['a|more']);
    expect(ch.state).toBe('cancelled');
  });

  it('ends with an error item when it fails', async () => {
    const ch = new StreamChannel('t');
    const result = collect(ch);
    ch.push({ insertText: 'a', done: false });
    await tick();
    ch.fail('generation timed out');
    expect(await result).toEqual(['a|more', '|end|error:generation timed out']);
  });

  it('still delivers a stream that finished before anyone iterated', async () => {
    const ch = new StreamChannel('t');
    ch.push({ insertText: 'done already', done: true });
    expect(await collect(ch)).toEqual(['done already|end']);
    expect(await collect(ch)).toEqual([]);
  });
});

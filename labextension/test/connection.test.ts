import { beforeEach, describe, expect, it } from 'vitest';

import {
  backoffDelay,
  CompletionClient,
  CompletionError,
  ICompletionDone,
  ITimers,
  IWebSocketLike
} from '../src/connection';
import { buildWsUrl } from '../src/api';

class FakeSocket implements IWebSocketLike {
  readyState = 0;
  sent: any[] = [];
  onopen: ((ev: unknown) => void) | null = null;
  onclose: ((ev: unknown) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  closed = false;
  constructor(readonly url: string) {}
  send(data: string): void {
    this.sent.push(JSON.parse(data));
  }
  close(): void {
    this.closed = true;
  }
  // test helpers
  open(): void {
    this.readyState = 1;
    this.onopen?.({});
  }
  drop(): void {
    this.readyState = 3;
    this.onclose?.({});
  }
  reply(msg: unknown): void {
    this.onmessage?.({ data: JSON.stringify(msg) });
  }
}

class FakeTimers implements ITimers {
  time = 0;
  timers: { at: number; fn: () => void; id: number }[] = [];
  private _id = 0;
  setTimeout(fn: () => void, ms: number): unknown {
    const id = ++this._id;
    this.timers.push({ at: this.time + ms, fn, id });
    return id;
  }
  clearTimeout(handle: unknown): void {
    this.timers = this.timers.filter(t => t.id !== handle);
  }
  now(): number {
    return this.time;
  }
  advance(ms: number): void {
    this.time += ms;
    const due = this.timers.filter(t => t.at <= this.time);
    this.timers = this.timers.filter(t => t.at > this.time);
    due.forEach(t => t.fn());
  }
  get delays(): number[] {
    return this.timers.map(t => t.at - this.time);
  }
}

const base = {
  prefix: 'x = ',
  suffix: '',
  mime: 'text/x-python',
  language: 'python',
  path: 'a.py',
  cell_id: null,
  stream: true
};

describe('buildWsUrl', () => {
  it('joins the server wsUrl (with its base URL) and the route, adding the token', () => {
    expect(buildWsUrl('ws://host:8888/user/alice/', 'tok en', true)).toBe(
      'ws://host:8888/user/alice/jupyter-ds/v1/complete/stream?token=tok%20en'
    );
    expect(buildWsUrl('wss://hub.example/user/bob', 'secret', false)).toBe(
      'wss://hub.example/user/bob/jupyter-ds/v1/complete/stream'
    );
    expect(buildWsUrl('ws://h/', '', true)).toBe('ws://h/jupyter-ds/v1/complete/stream');
  });
});

describe('backoffDelay', () => {
  it('doubles from the base up to the cap', () => {
    expect([0, 1, 2, 3, 4, 5, 6, 7].map(a => backoffDelay(a, 500, 30000))).toEqual([
      500, 1000, 2000, 4000, 8000, 16000, 30000, 30000
    ]);
  });
  it('adds bounded jitter', () => {
    expect(backoffDelay(1, 500, 30000, 0.2, () => 1)).toBe(1200);
    expect(backoffDelay(1, 500, 30000, 0.2, () => 0)).toBe(1000);
  });
});

describe('CompletionClient', () => {
  let sockets: FakeSocket[];
  let timers: FakeTimers;
  let done: ICompletionDone[];
  let client: CompletionClient;

  beforeEach(() => {
    sockets = [];
    timers = new FakeTimers();
    done = [];
    client = new CompletionClient({
      url: () => 'ws://h/jupyter-ds/v1/complete/stream',
      createSocket: url => {
        const s = new FakeSocket(url);
        sockets.push(s);
        return s;
      },
      timers,
      random: () => 0,
      onDone: d => done.push(d)
    });
  });

  it('connects lazily, queues until open, numbers requests from 1', async () => {
    expect(sockets).toHaveLength(0);
    const { number, reply } = client.request({ ...base, stream: false });
    expect(number).toBe(1);
    expect(sockets).toHaveLength(1);
    expect(sockets[0].sent).toEqual([]);
    sockets[0].open();
    expect(sockets[0].sent).toEqual([{ ...base, stream: false, number: 1 }]);
    timers.advance(120);
    sockets[0].reply({
      type: 'inline_completion',
      reply_to: 1,
      list: { items: [{ insertText: '42', isIncomplete: false }] },
      model: 'tiny',
      latency_ms: 80
    });
    const answer = await reply;
    expect(answer).toMatchObject({ number: 1, stale: false, model: 'tiny', latencyMs: 80 });
    expect(answer.items[0].insertText).toBe('42');
    expect(done).toEqual([{ number: 1, elapsedMs: 120, latencyMs: 80, model: 'tiny' }]);
    expect(client.pendingNumbers).toEqual([]);
  });

  it('uses one socket for many requests', () => {
    client.request(base);
    sockets[0].open();
    client.request(base);
    client.request(base);
    expect(sockets).toHaveLength(1);
    expect(sockets[0].sent.map(m => m.number)).toEqual([1, 2, 3]);
  });

  it('settles older requests as stale when a newer one is sent (server cancels them)', async () => {
    const first = client.request(base);
    sockets[0].open();
    const second = client.request(base);
    expect(await first.reply).toMatchObject({ number: 1, stale: true, items: [] });
    // A late reply to the stale request is ignored.
    sockets[0].reply({ type: 'inline_completion', reply_to: 1, list: { items: [{ insertText: 'old' }] } });
    sockets[0].reply({ type: 'inline_completion', reply_to: 2, list: { items: [{ insertText: 'new' }] } });
    expect((await second.reply).items[0].insertText).toBe('new');
  });

  it('only sends the newest of the requests queued while connecting', () => {
    client.request(base);
    client.request(base);
    client.request(base);
    sockets[0].open();
    expect(sockets[0].sent.map(m => m.number)).toEqual([3]);
  });

  it('streams cumulative text by token and reports done once', async () => {
    const { reply } = client.request(base);
    sockets[0].open();
    sockets[0].reply({
      type: 'inline_completion',
      reply_to: 1,
      list: { items: [{ insertText: '', isIncomplete: true, token: 'jds-1' }] }
    });
    const answer = await reply;
    expect(answer.items[0]).toMatchObject({ isIncomplete: true, token: 'jds-1' });
    const channel = client.stream('jds-1')!;
    expect(channel).not.toBeNull();
    const seen: string[] = [];
    const consumer = (async () => {
      for await (const r of channel.iterate()) {
        seen.push(r.response.insertText + (r.response.isIncomplete ? '…' : ''));
      }
    })();
    sockets[0].reply({ type: 'stream', reply_to: 1, response: { insertText: 'np', token: 'jds-1' }, done: false });
    await new Promise(r => setTimeout(r, 0));
    sockets[0].reply({
      type: 'stream',
      reply_to: 1,
      response: { insertText: 'np.mean(x)', token: 'jds-1' },
      done: true,
      low_confidence: false,
      latency_ms: 300
    });
    await consumer;
    expect(seen).toEqual(['np…', 'np.mean(x)']);
    expect(done.map(d => d.latencyMs)).toEqual([300]);
    expect(client.pendingNumbers).toEqual([]);
    // JupyterLab may ask for the stream after it finished: still there.
    expect(client.stream('jds-1')).toBe(channel);
  });

  it('cancel() tells the server and ends the local stream', async () => {
    client.request(base);
    sockets[0].open();
    sockets[0].reply({
      type: 'inline_completion',
      reply_to: 1,
      list: { items: [{ insertText: '', isIncomplete: true, token: 'jds-1' }] }
    });
    const channel = client.stream('jds-1')!;
    client.cancel(1);
    expect(sockets[0].sent[sockets[0].sent.length - 1]).toEqual({ type: 'cancel', number: 1 });
    expect(channel.state).toBe('cancelled');
    client.cancel(1); // twice is harmless
    expect(sockets[0].sent.filter(m => m.type === 'cancel')).toHaveLength(1);
    expect(done).toEqual([]);
  });

  it('a newer request ends the older stream locally', () => {
    client.request(base);
    sockets[0].open();
    sockets[0].reply({
      type: 'inline_completion',
      reply_to: 1,
      list: { items: [{ insertText: '', isIncomplete: true, token: 'jds-1' }] }
    });
    const channel = client.stream('jds-1')!;
    client.request(base);
    expect(channel.state).toBe('cancelled');
  });

  it('turns server errors into rejections and failed streams', async () => {
    const { reply } = client.request(base);
    sockets[0].open();
    sockets[0].reply({
      type: 'error',
      reply_to: 1,
      error: { code: 'model_not_ready', message: 'the model is loading' }
    });
    await expect(reply).rejects.toMatchObject({ code: 'model_not_ready' });
  });

  it('fails pending requests when the socket drops and reconnects with backoff', async () => {
    const first = client.request(base);
    sockets[0].open();
    sockets[0].drop();
    await expect(first.reply).rejects.toBeInstanceOf(CompletionError);
    await expect(first.reply).rejects.toMatchObject({ code: 'disconnected' });
    expect(client.state).toBe('closed');
    expect(timers.delays).toEqual([500]);
    // A request during the backoff waits for the timer, then connects.
    const second = client.request(base);
    expect(sockets).toHaveLength(1);
    timers.advance(500);
    expect(sockets).toHaveLength(2);
    // The connection fails again: the next delay doubles.
    sockets[1].drop();
    await expect(second.reply).rejects.toMatchObject({ code: 'disconnected' });
    expect(timers.delays).toEqual([1000]);
    client.request(base);
    timers.advance(1000);
    expect(sockets).toHaveLength(3);
    sockets[2].open();
    expect(client.attempts).toBe(0);
    expect(sockets[2].sent.map(m => m.number)).toEqual([3]);
  });

  it('does not reconnect while nobody needs the socket', () => {
    client.request(base);
    sockets[0].open();
    sockets[0].reply({ type: 'inline_completion', reply_to: 1, list: { items: [] } });
    sockets[0].drop();
    timers.advance(60000);
    expect(sockets).toHaveLength(1);
  });

  it('dispose closes the socket and rejects what is pending', async () => {
    const { reply } = client.request(base);
    sockets[0].open();
    client.dispose();
    expect(sockets[0].closed).toBe(true);
    await expect(reply).rejects.toMatchObject({ code: 'disposed' });
    await expect(client.request(base).reply).rejects.toMatchObject({ code: 'disposed' });
  });
});

import { Signal } from '@lumino/signaling';
import { beforeEach, describe, expect, it, vi } from 'vitest';

import { ITelemetryEvent, MAX_TELEMETRY_EVENTS } from '../src/api';
import { ITimers } from '../src/connection';
import { observeInlineCompleter } from '../src/inlineTelemetry';
import { ITrackedItem, SuggestionTracker, TelemetryBatcher } from '../src/telemetry';

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
}

const flushPromises = () => new Promise(resolve => setTimeout(resolve, 0));

function shown(id: string, i = 0): ITelemetryEvent {
  return { event: 'shown', request_id: `${id}-${i}`, client: 'jupyterlab' };
}

// -- batching ---------------------------------------------------------------------------

describe('TelemetryBatcher', () => {
  let timers: FakeTimers;
  let sent: ITelemetryEvent[][];
  let answer: () => Promise<unknown>;
  let batcher: TelemetryBatcher;
  let warn: ReturnType<typeof vi.fn>;

  beforeEach(() => {
    timers = new FakeTimers();
    sent = [];
    answer = () => Promise.resolve({ counted: 0, ignored: 0 });
    warn = vi.fn();
    batcher = new TelemetryBatcher({
      send: events => {
        sent.push(events);
        return answer();
      },
      timers,
      flushMs: 5000,
      maxBatch: 20,
      warn
    });
  });

  it('sends a few events together after the flush delay, not one request each', () => {
    batcher.add(shown('a', 1));
    batcher.add(shown('a', 2));
    batcher.add(shown('a', 3));
    expect(sent).toEqual([]); // nothing on the typing path
    timers.advance(4999);
    expect(sent).toEqual([]);
    timers.advance(1);
    expect(sent).toEqual([[shown('a', 1), shown('a', 2), shown('a', 3)]]);
    expect(batcher.pending).toBe(0);
    timers.advance(60000);
    expect(sent.length).toBe(1); // no empty requests
  });

  it('sends at once when a batch is full, and one request at a time', async () => {
    let release: () => void = () => undefined;
    answer = () => new Promise(resolve => (release = () => resolve(null)));
    for (let i = 0; i < 45; i++) {
      batcher.add(shown('b', i));
    }
    expect(sent.map(b => b.length)).toEqual([20]); // the second waits for the first
    release();
    await flushPromises();
    expect(sent.map(b => b.length)).toEqual([20, 25]); // all that queued meanwhile, ≤ 100
    release();
    await flushPromises();
    expect(sent.length).toBe(2);
    expect(batcher.pending).toBe(0);
  });

  it('never sends more than the server takes in one request', () => {
    const big = new TelemetryBatcher({
      send: events => {
        sent.push(events);
        return new Promise(() => undefined); // never answers
      },
      timers,
      maxBatch: 1000,
      maxQueue: 1000
    });
    for (let i = 0; i < 150; i++) {
      big.add(shown('c', i));
    }
    expect(sent.map(b => b.length)).toEqual([MAX_TELEMETRY_EVENTS]);
  });

  it('swallows failures, logs the first only, and keeps working', async () => {
    answer = () => Promise.reject(new Error('HTTP 500'));
    batcher.add(shown('d', 1));
    timers.advance(5000);
    await flushPromises();
    batcher.add(shown('d', 2));
    timers.advance(5000);
    await flushPromises();
    expect(sent.length).toBe(2);
    expect(warn).toHaveBeenCalledTimes(1);
    // A send that throws instead of rejecting is swallowed too.
    const throwing = new TelemetryBatcher({
      send: () => {
        throw new Error('offline');
      },
      timers,
      maxBatch: 1,
      warn
    });
    expect(() => throwing.add(shown('d', 3))).not.toThrow();
    await flushPromises();
    expect(warn).toHaveBeenCalledTimes(2); // its own first failure
  });

  it('says once when the server counted nothing of a batch, not when some counted', async () => {
    // The symptom of reporting as another user than the completions' (api.ts,
    // socketCallerSettings): every answer a 200 with nothing counted, and no warning.
    answer = () => Promise.resolve({ counted: 1, ignored: 1 });
    batcher.add(shown('g', 1));
    timers.advance(5000);
    await flushPromises();
    expect(warn).not.toHaveBeenCalled();
    answer = () => Promise.resolve({ counted: 0, ignored: 2 });
    batcher.add(shown('g', 2));
    batcher.add(shown('g', 3));
    timers.advance(5000);
    await flushPromises();
    expect(warn).toHaveBeenCalledTimes(1);
    expect(warn.mock.calls[0][0]).toMatch(/counted none/);
    expect(warn.mock.calls[0][1]).toEqual({ sent: 2, ignored: 2 });
    batcher.add(shown('g', 4));
    timers.advance(5000);
    await flushPromises();
    expect(warn).toHaveBeenCalledTimes(1); // once
    expect(sent.length).toBe(3); // and it keeps sending
  });

  it('keeps only the newest events while the server does not answer', () => {
    const stuck = new TelemetryBatcher({
      send: events => {
        sent.push(events);
        return new Promise(() => undefined);
      },
      timers,
      maxBatch: 2,
      maxQueue: 5
    });
    for (let i = 0; i < 12; i++) {
      stuck.add(shown('e', i));
    }
    expect(sent).toEqual([[shown('e', 0), shown('e', 1)]]);
    expect(stuck.pending).toBe(5);
  });

  it('sends what is left when disposed, then takes nothing', () => {
    batcher.add(shown('f', 1));
    batcher.dispose();
    expect(sent).toEqual([[shown('f', 1)]]);
    batcher.add(shown('f', 2));
    timers.advance(10000);
    expect(sent.length).toBe(1);
  });
});

// -- event mapping ----------------------------------------------------------------------

describe('SuggestionTracker', () => {
  let events: ITelemetryEvent[];
  let enabled: boolean;
  let tracker: SuggestionTracker;

  beforeEach(() => {
    events = [];
    enabled = true;
    tracker = new SuggestionTracker(
      e => events.push(e),
      () => enabled
    );
  });

  const kinds = () => events.map(e => [e.event, e.request_id, e.accepted_chars]);

  it('reports shown then accepted for an accepted suggestion, once', () => {
    const item = { insertText: 'return a + b' };
    tracker.register(item, 1);
    tracker.resolve(1, 'r1');
    tracker.offered(item);
    tracker.accepted(item);
    tracker.closed(item); // the completer resets after accepting
    tracker.accepted(item);
    expect(kinds()).toEqual([
      ['shown', 'r1', undefined],
      ['accepted', 'r1', undefined]
    ]);
    expect(events.every(e => e.client === 'jupyterlab')).toBe(true);
    expect(JSON.stringify(events)).not.toContain('return a'); // never any text
  });

  it('reports dismissed for a suggestion that went away untouched', () => {
    const item = { insertText: 'x = 1' };
    tracker.register(item, 2);
    tracker.resolve(2, 'r2');
    tracker.offered(item);
    tracker.closed(item);
    expect(kinds()).toEqual([
      ['shown', 'r2', undefined],
      ['dismissed', 'r2', undefined]
    ]);
  });

  it('reports the characters typed through as a partial acceptance', () => {
    const item = { insertText: 'return a + b' };
    tracker.register(item, 3);
    tracker.resolve(3, 'r3');
    tracker.offered(item);
    item.insertText = item.insertText.slice(3); // JupyterLab trims what was typed
    tracker.typedThrough(item);
    item.insertText = item.insertText.slice(4);
    tracker.typedThrough(item);
    tracker.closed(item); // then the user typed something else
    expect(kinds()).toEqual([
      ['shown', 'r3', undefined],
      ['partially_accepted', 'r3', 7]
    ]);
  });

  it('counts a suggestion typed through to its end as accepted', () => {
    const item = { insertText: 'pass' };
    tracker.register(item, 4);
    tracker.resolve(4, 'r4');
    tracker.offered(item);
    item.insertText = '';
    tracker.typedThrough(item);
    tracker.closed(item);
    expect(kinds()).toEqual([
      ['shown', 'r4', undefined],
      ['accepted', 'r4', undefined]
    ]);
  });

  it('reports nothing for items it never handed out, or that were never seen', () => {
    const foreign = { insertText: 'other provider' };
    tracker.offered(foreign);
    tracker.accepted(foreign);
    expect(tracker.isOurs(foreign)).toBe(false);
    const unseen = { insertText: 'y' };
    tracker.register(unseen, 5);
    tracker.resolve(5, 'r5');
    tracker.closed(unseen); // superseded before the completer showed it
    expect(events).toEqual([]);
  });

  it('holds a stream’s events until it has text and an id, in order', () => {
    const item = { insertText: '' }; // the placeholder
    tracker.register(item, 6, 'jds-6');
    tracker.offered(item);
    expect(events).toEqual([]); // nothing to see yet
    tracker.streamEnded('jds-6', 'df.head()');
    item.insertText = 'df.head()';
    tracker.accepted(item);
    expect(events).toEqual([]); // the id comes with the stream's last chunk
    tracker.resolve(6, 'r6');
    tracker.resolve(6, 'r6-again'); // one id per request
    expect(kinds()).toEqual([
      ['shown', 'r6', undefined],
      ['accepted', 'r6', undefined]
    ]);
  });

  it('reports a suggestion accepted mid-stream as shown and accepted', () => {
    const item = { insertText: '' };
    tracker.register(item, 7, 'jds-7');
    tracker.resolve(7, 'r7'); // the placeholder reply names the request
    tracker.offered(item);
    item.insertText = 'import num'; // streamed so far, shown as ghost text
    tracker.accepted(item);
    expect(kinds()).toEqual([
      ['shown', 'r7', undefined],
      ['accepted', 'r7', undefined]
    ]);
  });

  it('reports each kind once per completion, whatever its items do', () => {
    const a = { insertText: 'a' };
    const b = { insertText: 'b' };
    tracker.register(a, 8);
    tracker.register(b, 8);
    tracker.resolve(8, 'r8');
    tracker.offered(a);
    tracker.offered(b);
    tracker.closed(a);
    tracker.closed(b);
    expect(kinds()).toEqual([
      ['shown', 'r8', undefined],
      ['dismissed', 'r8', undefined]
    ]);
  });

  it('reports nothing when the user turned telemetry off', () => {
    enabled = false;
    const item = { insertText: 'z' };
    tracker.register(item, 9);
    tracker.resolve(9, 'r9');
    tracker.offered(item);
    tracker.accepted(item);
    expect(events).toEqual([]);
  });
});

// -- the inline completer's signals -------------------------------------------------------

type Item = ITrackedItem & { filterText?: string };

/** The public behaviour of JupyterLab's `InlineCompleter.Model` that telemetry reads. */
class FakeModel {
  completions: { items: Item[] } | null = null;
  readonly suggestionsChanged = new Signal<this, { event: 'set' | 'append' | 'clear' }>(this);
  readonly filterTextChanged = new Signal<this, Map<number, number>>(this);

  setCompletions(items: Item[]): void {
    this.completions = { items };
    this.suggestionsChanged.emit({ event: 'set' });
  }
  appendCompletions(items: Item[]): void {
    this.completions?.items.push(...items);
    this.suggestionsChanged.emit({ event: 'append' });
  }
  reset(): void {
    this.completions = null;
    this.suggestionsChanged.emit({ event: 'clear' });
  }
  /** The user typed `text`: items it is a prefix of stay, trimmed; others are dropped. */
  type(text: string): void {
    const completions = this.completions;
    if (!completions) {
      return;
    }
    completions.items = completions.items.filter(item => {
      if (!item.insertText.startsWith(text)) {
        return false;
      }
      item.insertText = item.insertText.slice(text.length);
      return true;
    });
    if (completions.items.length === 0) {
      this.completions = null;
    }
    this.filterTextChanged.emit(new Map());
  }
}

class FakeCompleter {
  readonly model = new FakeModel();
  readonly disposed = new Signal<this, void>(this);
  index = 0;
  inserted: string[] = [];
  get current(): Item | null {
    return this.model.completions?.items[this.index] ?? null;
  }
  accept(): void {
    const current = this.current;
    if (current) {
      this.inserted.push(current.insertText);
      this.model.reset();
    }
  }
}

describe('observeInlineCompleter', () => {
  let events: ITelemetryEvent[];
  let tracker: SuggestionTracker;
  let widget: FakeCompleter;

  beforeEach(() => {
    events = [];
    tracker = new SuggestionTracker(e => events.push(e));
    widget = new FakeCompleter();
    observeInlineCompleter(widget as any, tracker);
  });

  const ours = (text: string, number: number): Item => {
    const item = { insertText: text };
    tracker.register(item, number);
    tracker.resolve(number, `r${number}`);
    return item;
  };
  const kinds = () => events.map(e => `${e.event}:${e.request_id}`);

  it('maps accept (Tab, the toolbar button) to accepted, and still inserts', () => {
    widget.model.setCompletions([ours('return 1', 1)]);
    widget.accept();
    expect(widget.inserted).toEqual(['return 1']);
    expect(kinds()).toEqual(['shown:r1', 'accepted:r1']);
  });

  it('maps a reset (Escape, a click, a cursor move) to dismissed', () => {
    widget.model.setCompletions([ours('x + 1', 2)]);
    widget.model.reset();
    expect(kinds()).toEqual(['shown:r2', 'dismissed:r2']);
  });

  it('maps typing through and then away to a partial acceptance', () => {
    widget.model.setCompletions([ours('print(df)', 3)]);
    widget.model.type('pri');
    widget.model.type('n');
    widget.model.type('X'); // no longer matches: the item is dropped
    expect(events.map(e => [e.event, e.accepted_chars])).toEqual([
      ['shown', undefined],
      ['partially_accepted', 4]
    ]);
  });

  it('maps a newer suggestion replacing the shown one to dismissed', () => {
    widget.model.setCompletions([ours('a', 4)]);
    widget.model.setCompletions([ours('b', 5)]);
    widget.accept();
    expect(kinds()).toEqual(['shown:r4', 'dismissed:r4', 'shown:r5', 'accepted:r5']);
  });

  it('leaves other providers’ items alone and credits only the current one', () => {
    const foreign: Item = { insertText: 'from another provider' };
    widget.model.setCompletions([foreign]);
    widget.model.appendCompletions([ours('mine', 6)]);
    widget.accept(); // the other provider's item is current
    expect(widget.inserted).toEqual(['from another provider']);
    expect(kinds()).toEqual(['shown:r6', 'dismissed:r6']);
  });

  it('stops listening when the completer is disposed', () => {
    const item = ours('y', 7);
    widget.model.setCompletions([item]);
    widget.disposed.emit();
    widget.model.reset();
    expect(kinds()).toEqual(['shown:r7']);
  });
});

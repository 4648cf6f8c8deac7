/**
 * Acceptance telemetry of jupyter-ds suggestions: what became of each one the inline
 * completer got from this extension (shown, accepted, partially accepted, dismissed),
 * reported to the server by the completion's `request_id` (`POST jupyter-ds/v1/telemetry`),
 * never with any text.
 *
 * - `SuggestionTracker` follows suggestions by the very item objects the provider hands to
 *   JupyterLab (its inline completer keeps those objects, and mutates them as it streams
 *   and as the user types through them), and turns what the completer does with them into
 *   events: each kind at most once per completion.
 * - `TelemetryBatcher` sends the events in batches (every few seconds, or at once when a
 *   batch is full), one request at a time, off the typing path; failures are swallowed
 *   and logged once (so is a batch the server took but counted nothing of): telemetry
 *   must never get in the user's way.
 *
 * Pure: no JupyterLab import; timers and the send function are injected. The JupyterLab
 * side (which completer events feed the tracker) is in `inlineTelemetry.ts`.
 */
import {
  ITelemetryEvent,
  ITelemetryResult,
  MAX_TELEMETRY_EVENTS,
  TelemetryKind
} from './api';
import { defaultTimers, ITimers } from './connection';

/** The client name the extension reports as. */
export const TELEMETRY_CLIENT = 'jupyterlab';

// -- batching ---------------------------------------------------------------------------

export interface IBatcherOptions {
  /** Sends one batch (at most `MAX_TELEMETRY_EVENTS`); its rejection is swallowed. */
  send: (events: ITelemetryEvent[]) => Promise<unknown>;
  timers?: ITimers;
  /** Send what is queued this long after the first event of a batch (default 5 s). */
  flushMs?: number;
  /** Send at once when this many events are queued (default 20). */
  maxBatch?: number;
  /** Keep at most this many events while the server does not answer; the oldest go. */
  maxQueue?: number;
  /**
   * Where the first failure, and the first batch the server counted nothing of, are
   * logged (default `console.warn`); later ones are not.
   */
  warn?: (message: string, error: unknown) => void;
}

export class TelemetryBatcher {
  constructor(options: IBatcherOptions) {
    this._send = options.send;
    this._timers = options.timers ?? defaultTimers;
    this._flushMs = options.flushMs ?? 5000;
    this._maxBatch = Math.max(1, Math.min(options.maxBatch ?? 20, MAX_TELEMETRY_EVENTS));
    this._maxQueue = Math.max(this._maxBatch, options.maxQueue ?? 500);
    this._warn = options.warn ?? ((message, error) => console.warn(message, error));
  }

  /** Events waiting to be sent. */
  get pending(): number {
    return this._queue.length;
  }

  /** Queue one event; returns at once (the send happens later, or in the background). */
  add(event: ITelemetryEvent): void {
    if (this._disposed) {
      return;
    }
    this._queue.push(event);
    if (this._queue.length > this._maxQueue) {
      this._queue.splice(0, this._queue.length - this._maxQueue);
    }
    if (this._queue.length >= this._maxBatch) {
      this.flush();
    } else if (this._timer === null) {
      this._timer = this._timers.setTimeout(() => {
        this._timer = null;
        this.flush();
      }, this._flushMs);
    }
  }

  /** Send what is queued now (one batch at a time; the rest follows when it is answered). */
  flush(): void {
    if (this._timer !== null) {
      this._timers.clearTimeout(this._timer);
      this._timer = null;
    }
    if (this._inFlight || this._queue.length === 0) {
      return;
    }
    const batch = this._queue.splice(0, Math.min(this._queue.length, MAX_TELEMETRY_EVENTS));
    this._inFlight = true;
    let sending: Promise<unknown>;
    try {
      sending = this._send(batch);
    } catch (error) {
      sending = Promise.reject(error);
    }
    void sending
      .then(answer => this._checkAnswer(answer, batch.length))
      .catch(error => {
        if (!this._warned) {
          this._warned = true;
          this._warn('jupyter-ds: could not report suggestion telemetry (not retried)', error);
        }
      })
      .finally(() => {
        this._inFlight = false;
        if (this._queue.length >= this._maxBatch || (this._disposed && this._queue.length)) {
          this.flush();
        } else if (this._queue.length > 0 && this._timer === null && !this._disposed) {
          this._timer = this._timers.setTimeout(() => {
            this._timer = null;
            this.flush();
          }, this._flushMs);
        }
      });
  }

  /**
   * A batch the server took but counted nothing of (`{counted: 0, ignored: n}`): said
   * once, as a warning, since nothing else would tell. A few events may be ignored for
   * good reasons (a restarted server, a completion older than an hour); a page whose every
   * event is ignored reports as another user than the one its completions were made for
   * (see `socketCallerSettings` in api.ts), which went unnoticed when this was silent.
   */
  private _checkAnswer(answer: unknown, sent: number): void {
    const result = answer as Partial<ITelemetryResult> | null;
    if (
      this._warnedIgnored ||
      !result ||
      typeof result !== 'object' ||
      result.counted !== 0 ||
      typeof result.ignored !== 'number' ||
      result.ignored <= 0
    ) {
      return;
    }
    this._warnedIgnored = true;
    this._warn(
      'jupyter-ds: the server counted none of the suggestion telemetry it was sent ' +
        '(it does not know those completions for this user, or they expired)',
      { sent, ignored: result.ignored }
    );
  }

  /** Send what is left and take no more. */
  dispose(): void {
    this._disposed = true;
    this.flush();
  }

  private _send: (events: ITelemetryEvent[]) => Promise<unknown>;
  private _timers: ITimers;
  private _flushMs: number;
  private _maxBatch: number;
  private _maxQueue: number;
  private _warn: (message: string, error: unknown) => void;
  private _queue: ITelemetryEvent[] = [];
  private _timer: unknown = null;
  private _inFlight = false;
  private _warned = false;
  private _warnedIgnored = false;
  private _disposed = false;
}

// -- following suggestions --------------------------------------------------------------

/** What the tracker needs of an item: JupyterLab's `IInlineCompletionItem` is one. */
export interface ITrackedItem {
  insertText: string;
}

/** One completion request: its server id (once known) and what was reported for it. */
interface IRequestRecord {
  requestId: string | null;
  /** Kinds already reported for this completion (each once). */
  sent: Set<TelemetryKind>;
  /** Events waiting for the request id (a stream's id comes with its last chunk). */
  waiting: ITelemetryEvent[];
}

/** One suggestion of a request, as the inline completer holds it. */
interface ISuggestion {
  record: IRequestRecord;
  /** The whole suggestion's length, once known (streams: when they end). */
  length: number | null;
  /** In the inline completer's list. */
  offered: boolean;
  /** Its text was non-empty while offered: the user could see it. */
  visible: boolean;
  /** Characters the user typed through (they matched the suggestion). */
  typed: number;
  /** The length of the item's remaining text when last seen. */
  lastLength: number;
  done: boolean;
}

/** Most requests kept waiting for their id or their stream's end. */
const MAX_RECORDS = 64;

/**
 * Turns what JupyterLab's inline completer does with this extension's items into
 * telemetry events:
 *
 * - `shown`: the item was in the completer's list with some text (the ghost text, or a
 *   candidate the user can cycle to);
 * - `accepted`: the completer's accept ran (Tab, the toolbar button) while it was the
 *   current candidate, or the user typed the whole suggestion themselves;
 * - `partially_accepted` (`accepted_chars`): the user typed through part of it (the
 *   completer keeps a suggestion while what is typed matches it), then it went away;
 * - `dismissed`: it went away (typing on, moving the cursor, Escape, a newer suggestion)
 *   with nothing of it kept.
 *
 * Each kind is reported at most once per completion (the server counts it once anyway).
 * A suggestion whose request never got an id (cancelled, superseded) reports nothing.
 */
export class SuggestionTracker {
  constructor(
    private readonly _emit: (event: ITelemetryEvent) => void,
    private readonly _enabled: () => boolean = () => true,
    private readonly _client: string = TELEMETRY_CLIENT
  ) {}

  /**
   * The provider handed `item` to JupyterLab as an answer of request `number`.
   * `streamToken`: the token of a stream placeholder, whose text comes later.
   */
  register(item: ITrackedItem, number: number, streamToken?: string): void {
    const record = this._record(number);
    this._items.set(item, {
      record,
      length: streamToken ? null : item.insertText.length,
      offered: false,
      visible: false,
      typed: 0,
      lastLength: item.insertText.length,
      done: false
    });
    if (streamToken) {
      this._tokens.set(streamToken, item);
      while (this._tokens.size > MAX_RECORDS) {
        this._tokens.delete(this._tokens.keys().next().value as string);
      }
    }
  }

  /** The server named request `number`'s completion `requestId`. */
  resolve(number: number, requestId: string): void {
    const record = this._record(number);
    if (record.requestId !== null) {
      return;
    }
    record.requestId = requestId;
    const waiting = record.waiting;
    record.waiting = [];
    for (const event of waiting) {
      this._send({ ...event, request_id: requestId });
    }
  }

  /** The stream of `token` ended with `text` (what the completer now shows). */
  streamEnded(token: string, text: string): void {
    const item = this._tokens.get(token);
    this._tokens.delete(token);
    const s = item ? this._items.get(item) : undefined;
    if (!s) {
      return;
    }
    s.length = text.length;
    s.lastLength = text.length - s.typed;
    if (s.offered && text) {
      s.visible = true;
      this._report(s, 'shown');
    }
  }

  /** Whether `item` is one of this extension's suggestions. */
  isOurs(item: unknown): item is ITrackedItem {
    return typeof item === 'object' && item !== null && this._items.has(item as ITrackedItem);
  }

  /** `item` is in the inline completer's list now. */
  offered(item: ITrackedItem): void {
    const s = this._items.get(item);
    if (!s || s.done) {
      return;
    }
    s.offered = true;
    this._observe(s, item);
  }

  /** The user typed and `item` is still in the list (its remaining text is shorter). */
  typedThrough(item: ITrackedItem): void {
    const s = this._items.get(item);
    if (!s || s.done) {
      return;
    }
    const remaining = item.insertText.length;
    if (remaining < s.lastLength) {
      s.typed += s.lastLength - remaining;
    }
    this._observe(s, item);
  }

  /** The completer accepts `item` (its accept ran with `item` current). */
  accepted(item: ITrackedItem): void {
    const s = this._items.get(item);
    if (!s || s.done) {
      return;
    }
    this._observe(s, item);
    s.done = true;
    if (s.visible || s.typed > 0) {
      this._report(s, 'shown');
      this._report(s, 'accepted');
    }
  }

  /** `item` left the completer's list without being accepted. */
  closed(item: ITrackedItem): void {
    const s = this._items.get(item);
    if (!s || s.done) {
      return;
    }
    s.done = true;
    if (!s.visible && s.typed === 0) {
      return; // never seen: nothing to report
    }
    this._report(s, 'shown');
    if (s.typed === 0) {
      this._report(s, 'dismissed');
    } else if (s.length !== null && s.typed >= s.length) {
      this._report(s, 'accepted');
    } else {
      this._report(s, 'partially_accepted', s.typed);
    }
  }

  private _observe(s: ISuggestion, item: ITrackedItem): void {
    s.lastLength = item.insertText.length;
    if (s.offered && item.insertText && !s.visible) {
      s.visible = true;
      this._report(s, 'shown');
    }
  }

  private _report(s: ISuggestion, kind: TelemetryKind, acceptedChars?: number): void {
    const record = s.record;
    if (record.sent.has(kind) || !this._enabled()) {
      return;
    }
    record.sent.add(kind);
    const event: ITelemetryEvent = { event: kind, request_id: record.requestId ?? '' };
    if (acceptedChars !== undefined) {
      event.accepted_chars = acceptedChars;
    }
    event.client = this._client;
    if (record.requestId === null) {
      record.waiting.push(event);
    } else {
      this._send(event);
    }
  }

  private _send(event: ITelemetryEvent): void {
    try {
      this._emit(event);
    } catch {
      // telemetry never breaks the completer
    }
  }

  private _record(number: number): IRequestRecord {
    let record = this._records.get(number);
    if (!record) {
      record = { requestId: null, sent: new Set(), waiting: [] };
      this._records.set(number, record);
      while (this._records.size > MAX_RECORDS) {
        const oldest = this._records.keys().next().value as number;
        this._records.delete(oldest);
      }
    }
    return record;
  }

  // Items are JupyterLab's to keep or drop: a weak map never holds one alive.
  private _items = new WeakMap<ITrackedItem, ISuggestion>();
  private _records = new Map<number, IRequestRecord>();
  private _tokens = new Map<string, ITrackedItem>();
}

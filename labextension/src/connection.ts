/**
 * One WebSocket to `jupyter-ds/v1/complete/stream`, shared by every editor.
 *
 * Bookkeeping: each request gets the next `number`; replies are matched by `reply_to`.
 * A newer number makes the server cancel every older generation on the socket, so when
 * a request is sent, older pending ones are settled locally at once (empty answer, their
 * streams end). `cancel(number)` also tells the server (`{type: "cancel", number}`).
 * When the socket closes, pending requests fail and a reconnect is scheduled with
 * exponential backoff; a request made while disconnected connects again (not sooner
 * than the backoff allows) and waits for the socket to open.
 *
 * Pure: the WebSocket constructor, its URL (`apiWsUrl` in api.ts) and the timers are
 * injected, no JupyterLab import. The protocol is described in docs/websocket.md.
 */
import { ICompletionRequestMessage, IServerItem } from './request';
import { StreamChannel } from './stream';

/** The part of the browser WebSocket this client uses. */
export interface IWebSocketLike {
  readonly readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onclose: ((ev: unknown) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketFactory = (url: string) => IWebSocketLike;

export interface ITimers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
  now(): number;
}

export const defaultTimers: ITimers = {
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: handle => clearTimeout(handle as ReturnType<typeof setTimeout>),
  now: () => Date.now()
};

const OPEN = 1;

/**
 * Delay before reconnect attempt `attempt` (0-based): base·2^attempt capped at max,
 * with up to `jitter` (a fraction) added, drawn from `random`.
 */
export function backoffDelay(
  attempt: number,
  baseMs = 500,
  maxMs = 30000,
  jitter = 0,
  random: () => number = Math.random
): number {
  const raw = Math.min(maxMs, baseMs * Math.pow(2, Math.max(0, attempt)));
  return Math.round(raw + raw * jitter * random());
}

/** An error reported by the server or by the connection. */
export class CompletionError extends Error {
  constructor(
    message: string,
    readonly code: string
  ) {
    super(message);
    this.name = 'CompletionError';
  }
}

/** The answer to one request: the items, plus the server's model/latency when given. */
export interface ICompletionReply {
  number: number;
  items: IServerItem[];
  model?: string;
  latencyMs?: number;
  /** The server's id of this completion (not streaming), for telemetry. */
  requestId?: string;
  /** True when the request was superseded or cancelled before its answer. */
  stale: boolean;
}

/** Reported once per finished request (for the status bar). */
export interface ICompletionDone {
  number: number;
  /** Client-side time from send to the final answer. */
  elapsedMs: number;
  latencyMs?: number;
  model?: string;
  /** The server's id of this completion (`request_id` of its final reply), for telemetry. */
  requestId?: string;
}

interface IPending {
  number: number;
  sentAt: number;
  resolve: (reply: ICompletionReply) => void;
  reject: (error: Error) => void;
  settled: boolean;
  channel: StreamChannel | null;
  showLowConfidence: boolean;
}

export interface ICompletionClientOptions {
  url: () => string;
  createSocket: WebSocketFactory;
  timers?: ITimers;
  baseBackoffMs?: number;
  maxBackoffMs?: number;
  random?: () => number;
  /** Called when a request finished (any outcome but stale/cancelled). */
  onDone?: (done: ICompletionDone) => void;
  /** Called when the connection state changes. */
  onConnection?: (state: ConnectionState) => void;
}

/** The `request_id` of a reply (the final one of a request), if it has one. */
function requestIdOf(msg: Record<string, any>): string | undefined {
  return typeof msg.request_id === 'string' && msg.request_id ? msg.request_id : undefined;
}

export type ConnectionState = 'idle' | 'connecting' | 'open' | 'closed' | 'disposed';

export class CompletionClient {
  constructor(options: ICompletionClientOptions) {
    this._options = options;
    this._timers = options.timers ?? defaultTimers;
  }

  get state(): ConnectionState {
    return this._state;
  }

  /** Failed connection attempts since the socket was last open. */
  get attempts(): number {
    return this._attempts;
  }

  /** Numbers of the requests still waiting for an answer or streaming. */
  get pendingNumbers(): number[] {
    return [...this._pending.keys()];
  }

  /** The number the next request will get. */
  get nextNumber(): number {
    return this._number + 1;
  }

  /**
   * Send a request. Resolves with the first reply (for streams: the placeholder item
   * whose `token` names the stream, see `stream`). Older pending requests are settled
   * as stale: the server cancels them because this number is newer.
   */
  request(
    message: Omit<ICompletionRequestMessage, 'number'>,
    showLowConfidence = false
  ): { number: number; reply: Promise<ICompletionReply> } {
    if (this._state === 'disposed') {
      return {
        number: -1,
        reply: Promise.reject(new CompletionError('client disposed', 'disposed'))
      };
    }
    const number = ++this._number;
    for (const older of [...this._pending.values()]) {
      if (older.number < number) {
        this._settleStale(older);
      }
    }
    const reply = new Promise<ICompletionReply>((resolve, reject) => {
      this._pending.set(number, {
        number,
        sentAt: this._timers.now(),
        resolve,
        reject,
        settled: false,
        channel: null,
        showLowConfidence
      });
    });
    this._send(JSON.stringify({ ...message, number }));
    return { number, reply };
  }

  /** The stream for a token handed out in a placeholder item, if it is still alive. */
  stream(token: string): StreamChannel | null {
    for (const pending of this._pending.values()) {
      if (pending.channel && pending.channel.token === token) {
        return pending.channel;
      }
    }
    return this._orphans.get(token) ?? null;
  }

  /** Stop a request here and on the server. */
  cancel(number: number): void {
    const pending = this._pending.get(number);
    if (!pending) {
      return;
    }
    this._settleStale(pending);
    if (this._socket && this._socket.readyState === OPEN) {
      this._socket.send(JSON.stringify({ type: 'cancel', number }));
    }
  }

  /** Close the socket for good. */
  dispose(): void {
    if (this._state === 'disposed') {
      return;
    }
    this._failAll(new CompletionError('client disposed', 'disposed'));
    this._clearReconnect();
    this._setState('disposed');
    const socket = this._socket;
    this._socket = null;
    if (socket) {
      socket.onclose = null;
      socket.onmessage = null;
      socket.onerror = null;
      socket.onopen = null;
      socket.close();
    }
  }

  // -- socket --------------------------------------------------------------------------

  private _send(data: string): void {
    if (this._socket && this._socket.readyState === OPEN) {
      this._socket.send(data);
      return;
    }
    // Only the newest request matters: a queued older one would be cancelled anyway.
    this._queue = [data];
    this._ensureConnected();
  }

  private _ensureConnected(): void {
    if (this._state === 'connecting' || this._state === 'open' || this._reconnectTimer) {
      return;
    }
    if (this._state === 'disposed') {
      return;
    }
    this._connect();
  }

  private _connect(): void {
    this._reconnectTimer = null;
    this._setState('connecting');
    let socket: IWebSocketLike;
    try {
      socket = this._options.createSocket(this._options.url());
    } catch (err) {
      this._onClosed(null);
      return;
    }
    this._socket = socket;
    socket.onopen = () => {
      if (this._socket !== socket) {
        return;
      }
      this._attempts = 0;
      this._setState('open');
      const queue = this._queue;
      this._queue = [];
      for (const data of queue) {
        socket.send(data);
      }
    };
    socket.onmessage = ev => {
      if (this._socket === socket) {
        this._onMessage(ev.data);
      }
    };
    socket.onerror = () => {
      // A close event always follows; handled there.
    };
    socket.onclose = () => {
      if (this._socket === socket) {
        this._onClosed(socket);
      }
    };
  }

  private _onClosed(socket: IWebSocketLike | null): void {
    if (socket) {
      socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
    }
    this._socket = null;
    this._queue = [];
    this._failAll(new CompletionError('connection to the jupyter-ds server lost', 'disconnected'));
    this._setState('closed');
    const delay = backoffDelay(
      this._attempts,
      this._options.baseBackoffMs ?? 500,
      this._options.maxBackoffMs ?? 30000,
      0.2,
      this._options.random ?? Math.random
    );
    this._attempts += 1;
    // Reconnect only when needed: the next request connects once the delay is over.
    this._reconnectTimer = this._timers.setTimeout(() => {
      this._reconnectTimer = null;
      if (this._queue.length > 0 || this._pending.size > 0) {
        this._connect();
      }
    }, delay);
  }

  private _clearReconnect(): void {
    if (this._reconnectTimer) {
      this._timers.clearTimeout(this._reconnectTimer);
      this._reconnectTimer = null;
    }
  }

  private _setState(state: ConnectionState): void {
    if (this._state !== state) {
      this._state = state;
      this._options.onConnection?.(state);
    }
  }

  // -- messages ------------------------------------------------------------------------

  private _onMessage(data: unknown): void {
    let msg: Record<string, any>;
    try {
      msg = JSON.parse(String(data));
    } catch {
      return;
    }
    if (!msg || typeof msg !== 'object') {
      return;
    }
    const pending = this._pending.get(msg.reply_to);
    if (!pending) {
      return; // a reply to a request settled as stale
    }
    switch (msg.type) {
      case 'inline_completion':
        this._onList(pending, msg);
        break;
      case 'stream':
        this._onStream(pending, msg);
        break;
      case 'error': {
        const e = msg.error ?? {};
        this._fail(
          pending,
          new CompletionError(String(e.message ?? 'completion failed'), String(e.code ?? 'error'))
        );
        break;
      }
    }
  }

  private _onList(pending: IPending, msg: Record<string, any>): void {
    const items: IServerItem[] = Array.isArray(msg.list?.items) ? msg.list.items : [];
    const streaming = items.find(i => i && i.isIncomplete && typeof i.token === 'string');
    if (streaming) {
      pending.channel = new StreamChannel(streaming.token as string, pending.showLowConfidence);
    } else {
      this._pending.delete(pending.number);
      this._reportDone(pending, msg);
    }
    if (!pending.settled) {
      pending.settled = true;
      pending.resolve({
        number: pending.number,
        items,
        model: msg.model,
        latencyMs: msg.latency_ms,
        requestId: requestIdOf(msg),
        stale: false
      });
    }
  }

  private _onStream(pending: IPending, msg: Record<string, any>): void {
    const channel = pending.channel;
    if (!channel) {
      return;
    }
    const done = Boolean(msg.done);
    channel.push({
      insertText: String(msg.response?.insertText ?? ''),
      done,
      lowConfidence: done ? Boolean(msg.low_confidence) : false
    });
    if (done) {
      this._pending.delete(pending.number);
      this._keepOrphan(channel);
      if (!msg.cancelled) {
        this._reportDone(pending, msg);
      }
    }
  }

  private _reportDone(pending: IPending, msg: Record<string, any>): void {
    this._options.onDone?.({
      number: pending.number,
      elapsedMs: this._timers.now() - pending.sentAt,
      latencyMs: typeof msg.latency_ms === 'number' ? msg.latency_ms : undefined,
      model: typeof msg.model === 'string' ? msg.model : undefined,
      requestId: requestIdOf(msg)
    });
  }

  /**
   * A stream may finish before JupyterLab asks for it (`stream(token)` comes after
   * `fetch` resolved); keep the few most recent finished channels so it still gets the
   * final text.
   */
  private _keepOrphan(channel: StreamChannel): void {
    this._orphans.set(channel.token, channel);
    while (this._orphans.size > 8) {
      const first = this._orphans.keys().next().value as string;
      this._orphans.delete(first);
    }
  }

  private _settleStale(pending: IPending): void {
    this._pending.delete(pending.number);
    if (pending.channel) {
      pending.channel.cancel();
      this._keepOrphan(pending.channel);
    }
    if (!pending.settled) {
      pending.settled = true;
      pending.resolve({ number: pending.number, items: [], stale: true });
    }
  }

  private _fail(pending: IPending, error: CompletionError): void {
    this._pending.delete(pending.number);
    if (pending.channel) {
      pending.channel.fail(error.message);
      this._keepOrphan(pending.channel);
    }
    if (!pending.settled) {
      pending.settled = true;
      pending.reject(error);
    }
  }

  private _failAll(error: CompletionError): void {
    for (const pending of [...this._pending.values()]) {
      this._fail(pending, error);
    }
  }

  private _options: ICompletionClientOptions;
  private _timers: ITimers;
  private _socket: IWebSocketLike | null = null;
  private _state: ConnectionState = 'idle';
  private _number = 0;
  private _attempts = 0;
  private _pending = new Map<number, IPending>();
  private _orphans = new Map<string, StreamChannel>();
  private _queue: string[] = [];
  private _reconnectTimer: unknown = null;
}

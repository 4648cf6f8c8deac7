/**
 * Error de-duplication: repeated errors (the server is down, the model failed to load)
 * would otherwise come once per keystroke. The first occurrence of a kind of error is
 * shown; repeats within the quiet window only bump its count (the caller may update
 * the notification already on screen); after the window it may be shown again.
 *
 * Pure: the clock is injected.
 */

export type ErrorAction = 'show' | 'update' | 'suppress';

interface IEntry {
  firstAt: number;
  lastShownAt: number;
  lastUpdatedAt: number;
  count: number;
  message: string;
}

export class ErrorDeduplicator {
  /**
   * @param windowMs repeats of the same key within this time are not shown again
   * @param updateEveryMs at most one `update` per key per this interval
   */
  constructor(
    readonly windowMs = 60000,
    readonly updateEveryMs = 5000,
    private readonly _now: () => number = () => Date.now()
  ) {}

  /** Record one occurrence and say what to do with it. */
  report(key: string, message: string): ErrorAction {
    const now = this._now();
    const entry = this._entries.get(key);
    if (!entry || now - entry.lastShownAt >= this.windowMs) {
      this._entries.set(key, {
        firstAt: now,
        lastShownAt: now,
        lastUpdatedAt: now,
        count: 1,
        message
      });
      return 'show';
    }
    entry.count += 1;
    entry.message = message;
    if (now - entry.lastUpdatedAt >= this.updateEveryMs) {
      entry.lastUpdatedAt = now;
      return 'update';
    }
    return 'suppress';
  }

  /** How many times `key` happened since it was last shown. */
  count(key: string): number {
    return this._entries.get(key)?.count ?? 0;
  }

  /** Forget `key` (the condition cleared: e.g. the connection is back). */
  clear(key: string): void {
    this._entries.delete(key);
  }

  private _entries = new Map<string, IEntry>();
}

/** A stable key for an error: its code, else its HTTP status, else its message. */
export function errorKey(error: unknown): string {
  if (error && typeof error === 'object') {
    const e = error as { code?: unknown; status?: unknown; message?: unknown };
    if (typeof e.code === 'string' && e.code) {
      return `code:${e.code}`;
    }
    if (typeof e.status === 'number') {
      return `status:${e.status}`;
    }
    if (typeof e.message === 'string') {
      return `message:${e.message}`;
    }
  }
  return `message:${String(error)}`;
}

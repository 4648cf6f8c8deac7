/**
 * Stream reconciliation: the server sends cumulative text for a suggestion
 * (`{type: "stream", response: {insertText, token}, done}`); JupyterLab's inline
 * completer pulls `{response}` objects from `provider.stream(token)`. A `StreamChannel`
 * sits between the two: chunks are pushed as they arrive, the consumer iterates.
 *
 * - Text is cumulative, so when the consumer is slower than the server only the newest
 *   chunk matters: queued chunks are coalesced, never replayed one by one.
 * - A chunk whose text did not change is not yielded again (unless it ends the stream).
 * - The final chunk (`done`) may be shorter than what was streamed (the server keeps
 *   only the longest valid prefix) and may be hidden (`low_confidence`).
 * - `cancel()` ends the iteration at once; an error ends it with an error item.
 *
 * Pure: no JupyterLab import.
 */

export interface IStreamChunk {
  insertText: string;
  done: boolean;
  lowConfidence?: boolean;
}

export interface IStreamItem {
  insertText: string;
  isIncomplete: boolean;
  token: string;
  error?: { message: string };
}

export type StreamState = 'open' | 'done' | 'cancelled' | 'failed';

export class StreamChannel {
  constructor(
    readonly token: string,
    private readonly _showLowConfidence: boolean = false
  ) {}

  get state(): StreamState {
    return this._state;
  }

  /** The text the consumer saw last. */
  get shownText(): string {
    return this._shown;
  }

  /** Take one cumulative chunk from the server. Ignored once the stream has ended. */
  push(chunk: IStreamChunk): void {
    if (this._state !== 'open') {
      return;
    }
    this._latest = chunk;
    if (chunk.done) {
      this._state = 'done';
    }
    this._wake();
  }

  /** Stop: the consumer's loop ends without another item. */
  cancel(): void {
    if (this._state !== 'open') {
      return;
    }
    this._state = 'cancelled';
    this._latest = null;
    this._wake();
  }

  /** End with an error item (shown by JupyterLab as the item's error). */
  fail(message: string): void {
    if (this._state !== 'open') {
      return;
    }
    this._state = 'failed';
    this._error = message;
    this._wake();
  }

  /** What JupyterLab's `stream(token)` yields: `{response}` per new text, the last done. */
  async *iterate(): AsyncGenerator<{ response: IStreamItem }, undefined, unknown> {
    for (;;) {
      const item = this._take();
      if (item === 'end') {
        return undefined;
      }
      if (item !== null) {
        yield { response: item };
        if (!item.isIncomplete) {
          return undefined;
        }
        continue;
      }
      await new Promise<void>(resolve => {
        this._waiter = resolve;
      });
    }
  }

  /** The next item to yield, null to wait, 'end' when finished. */
  private _take(): IStreamItem | null | 'end' {
    if (this._finished) {
      return 'end';
    }
    if (this._state === 'cancelled') {
      this._finished = true;
      return 'end';
    }
    if (this._state === 'failed') {
      this._finished = true;
      return {
        insertText: '',
        isIncomplete: false,
        token: this.token,
        error: { message: this._error }
      };
    }
    const chunk = this._latest;
    if (chunk === null) {
      return null;
    }
    this._latest = null;
    if (chunk.done) {
      this._finished = true;
      const hide = chunk.lowConfidence === true && !this._showLowConfidence;
      const text = hide ? '' : chunk.insertText;
      this._shown = text;
      return { insertText: text, isIncomplete: false, token: this.token };
    }
    if (chunk.insertText === this._shown) {
      return null;
    }
    this._shown = chunk.insertText;
    return { insertText: chunk.insertText, isIncomplete: true, token: this.token };
  }

  private _wake(): void {
    const waiter = this._waiter;
    this._waiter = null;
    waiter?.();
  }

  private _state: StreamState = 'open';
  private _latest: IStreamChunk | null = null;
  private _shown = '';
  private _error = '';
  private _finished = false;
  private _waiter: (() => void) | null = null;
}

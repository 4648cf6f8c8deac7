/** The status bar item: model state from the health endpoint and the last latency. */
import { ServerConnection } from '@jupyterlab/services';
import { Widget } from '@lumino/widgets';

import { request } from './api';
import { IHealth, nextPollDelay, readHealth, statusText } from './health';

export class DsStatus extends Widget {
  constructor(
    private readonly _settings: ServerConnection.ISettings = ServerConnection.makeSettings()
  ) {
    super();
    this.addClass('jp-ds-Status');
    this.node.title = 'jupyter-ds model state';
    this._render();
  }

  get health(): IHealth {
    return this._health;
  }

  /** Start polling (idempotent). */
  start(): void {
    if (this._timer === null && !this.isDisposed) {
      void this._poll();
    }
  }

  /** Record the latency of the last finished completion. */
  setLatency(ms: number): void {
    this._latency = ms;
    this._render();
  }

  /** Poll now (e.g. after a completion failed with "model not ready"). */
  refresh(): void {
    if (this._timer !== null) {
      clearTimeout(this._timer);
      this._timer = null;
    }
    void this._poll();
  }

  dispose(): void {
    if (this._timer !== null) {
      clearTimeout(this._timer);
      this._timer = null;
    }
    super.dispose();
  }

  private async _poll(): Promise<void> {
    try {
      const data = await request<Record<string, unknown> | null>('health', {
        settings: this._settings
      });
      this._health = readHealth(data);
      this._failures = 0;
    } catch {
      this._failures += 1;
      this._health = { state: 'offline' };
    }
    this._render();
    if (!this.isDisposed) {
      this._timer = setTimeout(() => {
        this._timer = null;
        void this._poll();
      }, nextPollDelay(this._health.state, this._failures));
    }
  }

  private _render(): void {
    this.node.textContent = statusText(this._health, this._latency);
    this.node.dataset.state = this._health.state;
    const parts = ['jupyter-ds model'];
    if (this._health.model) {
      parts.push(this._health.model);
    }
    parts.push(this._health.state);
    if (this._health.error) {
      parts.push(this._health.error);
    }
    if (this._latency !== null) {
      parts.push(`last completion ${Math.round(this._latency)} ms`);
    }
    this.node.title = parts.join(' · ');
  }

  private _health: IHealth = { state: 'unknown' };
  private _latency: number | null = null;
  private _failures = 0;
  private _timer: ReturnType<typeof setTimeout> | null = null;
}

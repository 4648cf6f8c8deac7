/**
 * Model state for the status bar, from `GET jupyter-ds/v1/health`, and when to ask
 * again: often while the model loads, rarely once it is ready or failed, backing off
 * while the server does not answer.
 *
 * Pure: no JupyterLab import.
 */

export type ModelState = 'unknown' | 'unloaded' | 'loading' | 'ready' | 'failed' | 'offline';

export interface IHealth {
  state: ModelState;
  model?: string;
  error?: string | null;
}

/** The `data` of a health envelope as a state. */
export function readHealth(data: Record<string, unknown> | null | undefined): IHealth {
  if (!data) {
    return { state: 'unknown' };
  }
  const raw = String(data.model_state ?? '');
  const known: ModelState[] = ['unloaded', 'loading', 'ready', 'failed'];
  const state = (known as string[]).includes(raw)
    ? (raw as ModelState)
    : data.ready === true
      ? 'ready'
      : 'unknown';
  return {
    state,
    model: typeof data.model === 'string' ? data.model : undefined,
    error: typeof data.error === 'string' ? data.error : null
  };
}

/**
 * Milliseconds until the next health poll.
 * @param failures consecutive polls that got no answer
 */
export function nextPollDelay(state: ModelState, failures: number): number {
  if (failures > 0) {
    return Math.min(60000, 2000 * Math.pow(2, failures - 1));
  }
  switch (state) {
    case 'loading':
    case 'unloaded':
    case 'unknown':
      return 2000;
    case 'ready':
      return 30000;
    case 'failed':
      return 60000;
    default:
      return 10000;
  }
}

/** The status bar text. */
export function statusText(health: IHealth, lastLatencyMs: number | null): string {
  const label: Record<ModelState, string> = {
    unknown: '…',
    unloaded: 'not loaded',
    loading: 'loading',
    ready: 'ready',
    failed: 'failed',
    offline: 'offline'
  };
  let text = `jupyter-ds: ${label[health.state]}`;
  if (lastLatencyMs !== null && health.state === 'ready') {
    text += ` · ${Math.round(lastLatencyMs)} ms`;
  }
  return text;
}

/** One deduplicated JupyterLab notification per kind of error. */
import { Notification } from '@jupyterlab/apputils';

import { ErrorDeduplicator, errorKey } from './errors';

export class ErrorNotifier {
  constructor(private readonly _dedup = new ErrorDeduplicator()) {}

  /** Report an error; shows or updates at most one notification per kind. */
  report(error: unknown, context: string): void {
    const key = errorKey(error);
    const message = `jupyter-ds: ${context}: ${describe(error)}`;
    const action = this._dedup.report(key, message);
    if (action === 'show') {
      const id = Notification.error(message, { autoClose: 10000 });
      this._ids.set(key, id);
    } else if (action === 'update') {
      const id = this._ids.get(key);
      const count = this._dedup.count(key);
      if (id === undefined || !Notification.update({ id, message: `${message} (×${count})` })) {
        // The notification was closed: do not re-open it before the window is over.
      }
    }
  }

  /** The condition behind `code` cleared (e.g. reconnected): a new one shows again. */
  clear(code: string): void {
    this._dedup.clear(`code:${code}`);
  }

  private _ids = new Map<string, string>();
}

function describe(error: unknown): string {
  if (error && typeof error === 'object' && 'message' in error) {
    return String((error as { message: unknown }).message);
  }
  return String(error);
}

/** The inline completion provider: JupyterLab's completer ⇄ the completion socket. */
import {
  CompletionHandler,
  IInlineCompletionContext,
  IInlineCompletionItem,
  IInlineCompletionList,
  IInlineCompletionProvider,
  InlineCompletionTriggerKind
} from '@jupyterlab/completer';
import { ServerConnection } from '@jupyterlab/services';
import { Widget } from '@lumino/widgets';

import { apiWsUrl, COMPLETION_SOCKET } from './api';
import { CompletionClient, ICompletionDone, IWebSocketLike } from './connection';
import { LatestOnly } from './debounce';
import { ErrorNotifier } from './notifier';
import { buildRequest, filterItems, IServerItem } from './request';
import { IDsSettings } from './settings';
import { SuggestionTracker } from './telemetry';

export const PROVIDER_ID = 'jupyter-ds';

export interface IProviderOptions {
  settings: () => IDsSettings;
  notifier: ErrorNotifier;
  onDone?: (done: ICompletionDone) => void;
  serverSettings?: ServerConnection.ISettings;
  /** Follows what becomes of the items this provider hands out (acceptance telemetry). */
  tracker?: SuggestionTracker;
}

export class JupyterDsInlineProvider implements IInlineCompletionProvider {
  readonly name = 'jupyter-ds';
  readonly identifier = PROVIDER_ID;
  /**
   * Defaults of this provider in the inline completer's own settings
   * (`@jupyterlab/completer-extension:inline-completer` → `providers` → `jupyter-ds`):
   * on by default; jupyter-ds debounces by itself (`debounceMs`), so no extra delay;
   * a generous timeout because a CPU model may take a while when not streaming.
   */
  readonly schema = {
    default: {
      enabled: true,
      debouncerDelay: 0,
      timeout: 30000
    }
  };

  constructor(options: IProviderOptions) {
    this._options = options;
    const server = options.serverSettings ?? ServerConnection.makeSettings();
    this._client = new CompletionClient({
      url: () => apiWsUrl(COMPLETION_SOCKET, server),
      createSocket: url => new server.WebSocket(url) as unknown as IWebSocketLike,
      onDone: done => {
        if (done.requestId) {
          options.tracker?.resolve(done.number, done.requestId);
        }
        options.onDone?.(done);
      },
      onConnection: state => {
        if (state === 'open') {
          options.notifier.clear('disconnected');
        }
      }
    });
  }

  async fetch(
    request: CompletionHandler.IRequest,
    context: IInlineCompletionContext
  ): Promise<IInlineCompletionList<IInlineCompletionItem>> {
    const settings = this._options.settings();
    const ticket = this._latest.next();
    // The user typed again: whatever is still generating for older text is stale.
    if (this._inFlight !== null) {
      this._client.cancel(this._inFlight);
      this._inFlight = null;
    }
    const where = describeWidget(context.widget);
    const message = buildRequest(
      {
        text: request.text,
        offset: request.offset,
        mimeType: request.mimeType,
        path: where.path,
        cellId: where.cellId
      },
      settings
    );
    if (message === null || (!message.prefix.trim() && !message.suffix.trim())) {
      return { items: [] };
    }
    if (context.triggerKind !== InlineCompletionTriggerKind.Invoke) {
      if (!(await this._latest.wait(ticket, settings.debounceMs))) {
        return { items: [] };
      }
    }
    const { number, reply } = this._client.request(message, settings.showLowConfidence);
    this._inFlight = number;
    try {
      const answer = await reply;
      if (answer.stale) {
        return { items: [] };
      }
      const items = filterItems(answer.items, settings.showLowConfidence).map(toLabItem);
      this._track(items, number, answer.requestId);
      return { items };
    } catch (error) {
      if (this._latest.isLatest(ticket)) {
        this._options.notifier.report(error, 'inline completion failed');
      }
      return { items: [] };
    } finally {
      if (this._inFlight === number && !this._client.pendingNumbers.includes(number)) {
        this._inFlight = null;
      }
    }
  }

  async *stream(token: string): AsyncGenerator<{ response: IInlineCompletionItem }> {
    const channel = this._client.stream(token);
    if (!channel) {
      return;
    }
    for await (const reply of channel.iterate()) {
      if (reply.response.error) {
        this._options.tracker?.streamEnded(token, '');
        // Shown once by the notifier; the ghost text just ends without an error badge.
        this._options.notifier.report(
          { code: 'stream_error', message: reply.response.error.message },
          'inline completion failed'
        );
        yield { response: { ...reply.response, error: undefined } };
        return;
      }
      if (!reply.response.isIncomplete) {
        this._options.tracker?.streamEnded(token, reply.response.insertText);
      }
      yield reply;
    }
  }

  /**
   * Hand the tracker the items JupyterLab gets: its inline completer keeps these very
   * objects, which is how their fate is told apart from other providers' items.
   */
  private _track(items: IInlineCompletionItem[], number: number, requestId?: string): void {
    const tracker = this._options.tracker;
    if (!tracker) {
      return;
    }
    for (const item of items) {
      tracker.register(item, number, item.isIncomplete ? item.token : undefined);
    }
    if (requestId) {
      tracker.resolve(number, requestId);
    }
  }

  dispose(): void {
    this._client.dispose();
  }

  private _options: IProviderOptions;
  private _client: CompletionClient;
  private _latest = new LatestOnly();
  private _inFlight: number | null = null;
}

function toLabItem(item: IServerItem): IInlineCompletionItem {
  const out: IInlineCompletionItem = { insertText: item.insertText ?? '' };
  if (item.isIncomplete) {
    out.isIncomplete = true;
    out.token = item.token;
  }
  if (typeof item.filterText === 'string') {
    out.filterText = item.filterText;
  }
  return out;
}

/**
 * Path and cell id of what is being edited, by duck typing so that notebooks, file
 * editors and consoles all work: `context.path` of a document widget, the active
 * cell's model id of a notebook panel.
 */
export function describeWidget(widget: Widget | null | undefined): {
  path: string | null;
  cellId: string | null;
} {
  const w = widget as any;
  let path: string | null = null;
  let cellId: string | null = null;
  try {
    if (w?.context && typeof w.context.path === 'string') {
      path = w.context.path;
    } else if (w?.sessionContext && typeof w.sessionContext.path === 'string') {
      path = w.sessionContext.path;
    }
    const cell = w?.content?.activeCell;
    if (cell?.model && typeof cell.model.id === 'string') {
      cellId = cell.model.id;
    }
  } catch {
    // a widget being disposed: no context
  }
  return { path, cellId };
}

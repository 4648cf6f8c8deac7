/** "jupyter-ds: Explain": streams a markdown explanation into a side panel. */
import { JupyterFrontEnd } from '@jupyterlab/application';
import { CodeEditor } from '@jupyterlab/codeeditor';
import { IEditorTracker } from '@jupyterlab/fileeditor';
import { INotebookTracker } from '@jupyterlab/notebook';
import { IRenderMimeRegistry, MimeModel } from '@jupyterlab/rendermime';
import { ServerConnection } from '@jupyterlab/services';
import { Panel, Widget } from '@lumino/widgets';

import { requestStream } from './api';
import { ExplainEvent, parseExplainLine } from './ndjson';
import { ErrorNotifier } from './notifier';
import { mimeToLanguage } from './request';

export const EXPLAIN_PANEL_ID = 'jupyter-ds-explain';

/** The code to explain: the selection, else the selected/active cells, else the file. */
export interface ICodeToExplain {
  code: string;
  language: string;
  source: string;
}

/** The selected text of an editor and where it starts ('' when nothing is selected). */
export function selectionOf(editor: CodeEditor.IEditor): { text: string; start: number } {
  const source = editor.model.sharedModel.getSource();
  const sel = editor.getSelection();
  const a = editor.getOffsetAt(sel.start);
  const b = editor.getOffsetAt(sel.end);
  const start = Math.min(a, b);
  return { text: a === b ? '' : source.slice(start, Math.max(a, b)), start };
}

function selectedText(editor: CodeEditor.IEditor): string {
  return selectionOf(editor).text;
}

/** Whether a command should act on the current notebook rather than the file editor. */
export function notebookIsCurrent(
  app: JupyterFrontEnd,
  notebooks: INotebookTracker | null,
  editors: IEditorTracker | null
): boolean {
  const current = app.shell.currentWidget;
  const nb = notebooks?.currentWidget;
  return Boolean(
    nb && (current === nb || !editors?.currentWidget || current !== editors.currentWidget)
  );
}

export function findCode(
  app: JupyterFrontEnd,
  notebooks: INotebookTracker | null,
  editors: IEditorTracker | null
): ICodeToExplain | null {
  const nb = notebooks?.currentWidget;
  if (nb && notebookIsCurrent(app, notebooks, editors)) {
    const notebook = nb.content;
    const active = notebook.activeCell;
    if (active) {
      const language = mimeToLanguage(active.model.mimeType);
      const selected = active.editor ? selectedText(active.editor) : '';
      if (selected.trim()) {
        return { code: selected, language, source: 'selection' };
      }
      const cells = notebook.widgets.filter(c => notebook.isSelectedOrActive(c));
      const code = cells
        .map(c => c.model.sharedModel.getSource())
        .filter(s => s.trim())
        .join('\n\n');
      if (code.trim()) {
        return { code, language, source: cells.length > 1 ? `${cells.length} cells` : 'cell' };
      }
    }
  }
  const doc = editors?.currentWidget;
  if (doc) {
    const editor = doc.content.editor;
    const language = mimeToLanguage(editor.model.mimeType);
    const selected = selectedText(editor);
    if (selected.trim()) {
      return { code: selected, language, source: 'selection' };
    }
    const code = editor.model.sharedModel.getSource();
    if (code.trim()) {
      return { code, language, source: doc.context.path };
    }
  }
  return null;
}

/** The side panel: a header line and the rendered markdown, re-rendered as it streams. */
export class ExplainPanel extends Panel {
  constructor(private readonly _rendermime: IRenderMimeRegistry) {
    super();
    this.id = EXPLAIN_PANEL_ID;
    this.addClass('jp-ds-ExplainPanel');
    this.title.label = 'Explain';
    this.title.caption = 'jupyter-ds: Explain';
    this.title.closable = true;
    this._header = new Widget();
    this._header.addClass('jp-ds-ExplainPanel-header');
    this._body = new Widget();
    this._body.addClass('jp-ds-ExplainPanel-body');
    this.addWidget(this._header);
    this.addWidget(this._body);
  }

  /** Start showing a new explanation; returns the signal that aborts it. */
  start(what: ICodeToExplain): AbortSignal {
    this._abort?.abort();
    this._abort = new AbortController();
    this._text = '';
    this._rendered = null;
    this.setStatus(`Explaining ${what.source} (${what.language})…`, 'streaming');
    this._body.node.textContent = '';
    this._renderer?.dispose();
    this._renderer = this._rendermime.createRenderer('text/markdown');
    this._renderer.addClass('jp-ds-ExplainPanel-markdown');
    this._body.node.appendChild(this._renderer.node);
    return this._abort.signal;
  }

  setStatus(text: string, state: 'streaming' | 'done' | 'error'): void {
    this._header.node.textContent = text;
    this.node.dataset.state = state;
  }

  /** Show the (cumulative) markdown; renders are serialized and coalesced. */
  updateText(text: string): void {
    this._text = text;
    void this._render();
  }

  /** Resolves once the newest text is on screen. */
  async flush(): Promise<void> {
    await this._render();
    while (this._rendering) {
      await this._rendering;
    }
  }

  protected onCloseRequest(msg: any): void {
    this._abort?.abort();
    super.onCloseRequest(msg);
  }

  private async _render(): Promise<void> {
    if (this._rendering) {
      return; // the running render picks up the newest text when it ends
    }
    const renderer = this._renderer;
    if (!renderer) {
      return;
    }
    this._rendering = (async () => {
      while (this._rendered !== this._text && this._renderer === renderer) {
        const text = this._text;
        await renderer.renderModel(
          new MimeModel({ data: { 'text/markdown': text }, trusted: false })
        );
        this._rendered = text;
      }
    })();
    try {
      await this._rendering;
    } finally {
      this._rendering = null;
    }
  }

  private _header: Widget;
  private _body: Widget;
  private _renderer: ReturnType<IRenderMimeRegistry['createRenderer']> | null = null;
  private _text = '';
  private _rendered: string | null = null;
  private _rendering: Promise<void> | null = null;
  private _abort: AbortController | null = null;
}

/**
 * POST the code with `stream: true` and feed the NDJSON events to `onEvent`. A failed
 * request (an HTTP error, no connection, aborted) rejects with an `ApiError`.
 */
export async function streamExplain(
  code: ICodeToExplain,
  signal: AbortSignal,
  onEvent: (event: ExplainEvent) => void,
  settings?: ServerConnection.ISettings
): Promise<void> {
  await requestStream(
    'explain',
    {
      method: 'POST',
      body: { code: code.code, language: code.language, stream: true },
      signal,
      settings
    },
    parseExplainLine,
    onEvent
  );
}

/** Run one explanation into the panel. */
export async function runExplain(
  panel: ExplainPanel,
  code: ICodeToExplain,
  notifier: ErrorNotifier
): Promise<void> {
  const signal = panel.start(code);
  let finished = false;
  try {
    await streamExplain(code, signal, event => {
      if (signal.aborted) {
        return;
      }
      switch (event.kind) {
        case 'text':
          panel.updateText(event.text);
          break;
        case 'done':
          finished = true;
          panel.updateText(event.text);
          panel.setStatus(`Explanation of ${code.source} (${code.language})`, 'done');
          break;
        case 'error':
          finished = true;
          panel.setStatus(`Explain failed: ${event.message}`, 'error');
          notifier.report(event, 'explain failed');
          break;
      }
    });
    if (!finished && !signal.aborted) {
      panel.setStatus('Explain ended without an answer', 'error');
    }
  } catch (error) {
    if (signal.aborted) {
      return;
    }
    const message = error instanceof Error ? error.message : String(error);
    panel.setStatus(`Explain failed: ${message}`, 'error');
    notifier.report(error, 'explain failed');
  }
  await panel.flush();
}

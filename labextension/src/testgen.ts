/**
 * "jupyter-ds: Generate tests": streams candidate tests and their sandbox verdicts into a
 * side panel; "Insert" writes the kept ones into the matching test file ("Copy" gives the
 * test file's text where the code has no file, as in a notebook cell).
 */
import { JupyterFrontEnd } from '@jupyterlab/application';
import { Clipboard } from '@jupyterlab/apputils';
import { IEditorTracker } from '@jupyterlab/fileeditor';
import { INotebookTracker } from '@jupyterlab/notebook';
import { ServerConnection } from '@jupyterlab/services';
import { Panel, Widget } from '@lumino/widgets';

import { ApiError, request, requestStream } from './api';
import { notebookIsCurrent, selectionOf } from './explain';
import { ErrorNotifier } from './notifier';
import { mimeToLanguage } from './request';
import {
  IInsertRequest,
  IInsertResult,
  ITestEntry,
  ITestsInput,
  ITestsRequest,
  ITestsState,
  TestsEvent,
  buildInsertRequest,
  buildTestsRequest,
  canCopy,
  canInsert,
  coverageTexts,
  finishTestsState,
  funnelText,
  initialTestsState,
  parseTestsLine,
  readInsertResult,
  reasonLabel,
  reduceTestsEvent,
  sandboxTexts,
  statusText,
  verdictText
} from './testgenModel';
import { el } from './dom';

export const TESTS_PANEL_ID = 'jupyter-ds-tests';

/** What to generate tests for, and how to name it in the panel. */
export interface ITestsTarget {
  request: ITestsRequest;
  /** "mean() in stats.py", "the cell", … */
  what: string;
}

/** The code under the cursor: the active cell, else the current file editor. */
export function findTestsTarget(
  app: JupyterFrontEnd,
  notebooks: INotebookTracker | null,
  editors: IEditorTracker | null
): ITestsTarget | { error: string } | null {
  let input: ITestsInput | null = null;
  let where = '';
  let language = 'python';
  const cell = notebooks?.currentWidget?.content.activeCell;
  if (cell && notebookIsCurrent(app, notebooks, editors)) {
    if (cell.model.type !== 'code') {
      return { error: 'select a code cell' };
    }
    language = mimeToLanguage(cell.model.mimeType);
    const sel = cell.editor ? selectionOf(cell.editor) : { text: '', start: 0 };
    input = {
      text: cell.model.sharedModel.getSource(),
      selection: sel.text,
      selectionStart: sel.start,
      notebook: true
    };
    where = 'the cell';
  } else if (editors?.currentWidget) {
    const doc = editors.currentWidget;
    const editor = doc.content.editor;
    language = mimeToLanguage(editor.model.mimeType);
    const sel = selectionOf(editor);
    input = {
      text: editor.model.sharedModel.getSource(),
      selection: sel.text,
      selectionStart: sel.start,
      path: doc.context.path,
      saved: doc.context.contentsModel !== null
    };
    where = doc.context.path.split('/').pop() || doc.context.path;
  }
  if (!input) {
    return null;
  }
  if (language !== 'python') {
    return { error: `tests are generated for Python code, not ${language}` };
  }
  if (!input.text.trim()) {
    return { error: 'there is no code to test here' };
  }
  const request = buildTestsRequest(input);
  const what = request.target ? `${request.target}() in ${where}` : where;
  return { request, what };
}

/**
 * POST the request and feed the NDJSON events to `onEvent`. A failed request (an HTTP
 * error, no connection, aborted) rejects with an `ApiError`.
 */
export async function streamTests(
  req: ITestsRequest,
  signal: AbortSignal,
  onEvent: (event: TestsEvent) => void,
  settings?: ServerConnection.ISettings
): Promise<void> {
  await requestStream(
    'tests',
    { method: 'POST', body: req, signal, settings },
    parseTestsLine,
    onEvent
  );
}

/** POST the kept tests to `tests/insert`; resolves to where they were written. */
export async function insertTests(
  body: IInsertRequest,
  settings?: ServerConnection.ISettings
): Promise<IInsertResult> {
  return readInsertResult(await request('tests/insert', { method: 'POST', body, settings }));
}

export interface ITestsPanelOptions {
  notifier: ErrorNotifier;
  /** Open a file (the test file written by "Insert"); absent: only show its path. */
  open?: (path: string) => void;
  insert?: (body: IInsertRequest) => Promise<IInsertResult>;
  copy?: (text: string) => void;
}


/**
 * The side panel. DOM (for users' styles and the browser tests):
 * `#jupyter-ds-tests.jp-ds-TestsPanel[data-state=streaming|done|error]` holding
 * `.jp-ds-TestsPanel-header` (status line), `.jp-ds-TestsPanel-sandbox[data-mode]` with
 * `.jp-ds-TestsPanel-warning` when not fully isolated, `.jp-ds-TestsPanel-coverage`
 * (`[data-kind=lines|branches]`), `.jp-ds-TestsPanel-funnel`, the buttons
 * `.jp-ds-TestsPanel-insert` / `.jp-ds-TestsPanel-copy`, `.jp-ds-TestsPanel-result`
 * (`[data-test-path]` after an insert) and the list `.jp-ds-TestsPanel-list` of
 * `.jp-ds-TestsPanel-test[data-name][data-round][data-status=candidate|kept|rejected][data-reason]`.
 */
export class TestsPanel extends Panel {
  constructor(private readonly _options: ITestsPanelOptions) {
    super();
    this.id = TESTS_PANEL_ID;
    this.addClass('jp-ds-TestsPanel');
    this.title.label = 'Tests';
    this.title.caption = 'jupyter-ds: Generate tests';
    this.title.closable = true;
    this._header = new Widget();
    this._header.addClass('jp-ds-TestsPanel-header');
    this._body = new Widget();
    this._body.addClass('jp-ds-TestsPanel-body');
    this.addWidget(this._header);
    this.addWidget(this._body);

    const body = this._body.node;
    this._sandbox = el('div', 'jp-ds-TestsPanel-sandbox');
    this._coverage = el('div', 'jp-ds-TestsPanel-coverage');
    this._funnel = el('div', 'jp-ds-TestsPanel-funnel');
    const actions = el('div', 'jp-ds-TestsPanel-actions');
    this._insert = el('button', 'jp-ds-TestsPanel-insert jp-mod-styled jp-mod-accept', 'Insert');
    this._insert.title = 'Write the kept tests into the matching test file';
    this._insert.addEventListener('click', () => void this._onInsert());
    this._copy = el('button', 'jp-ds-TestsPanel-copy jp-mod-styled', 'Copy');
    this._copy.title = 'Copy the test file with the kept tests';
    this._copy.addEventListener('click', () => this._onCopy());
    this._result = el('div', 'jp-ds-TestsPanel-result');
    actions.append(this._insert, this._copy);
    this._list = el('ol', 'jp-ds-TestsPanel-list');
    body.append(this._sandbox, this._coverage, this._funnel, actions, this._result, this._list);
    this._render();
  }

  /** The state on screen (read-only). */
  get state(): ITestsState {
    return this._state;
  }

  /** Start showing a new generation; returns the signal that aborts it. */
  start(target: ITestsTarget): AbortSignal {
    this._abort?.abort();
    this._abort = new AbortController();
    this._target = target;
    this._state = initialTestsState();
    this._inserted = false;
    this._result.textContent = '';
    delete this._result.dataset.testPath;
    delete this._result.dataset.state;
    this._list.textContent = '';
    this._items = [];
    this._render();
    return this._abort.signal;
  }

  /** Apply one streamed event. */
  apply(event: TestsEvent): void {
    this._state = reduceTestsEvent(this._state, event);
    this._render();
  }

  /** The stream ended (an answer without its final line becomes an error). */
  finish(): void {
    this._state = finishTestsState(this._state);
    this._render();
  }

  /** Show a failure that happened outside the stream (network, abort by the server). */
  fail(code: string, message: string): void {
    this.apply({ kind: 'error', code, message });
  }

  protected onCloseRequest(msg: any): void {
    this._abort?.abort();
    super.onCloseRequest(msg);
  }

  private get _path(): string | undefined {
    return this._target?.request.path;
  }

  private _render(): void {
    const state = this._state;
    this.node.dataset.state = state.phase;
    this._header.node.textContent = this._target
      ? statusText(state, this._target.what)
      : 'Select a function and run "jupyter-ds: Generate tests".';

    const sandbox = sandboxTexts(state.sandbox);
    this._sandbox.textContent = '';
    this._sandbox.hidden = !sandbox;
    if (sandbox && state.sandbox) {
      this._sandbox.dataset.mode = state.sandbox.mode;
      this._sandbox.append(el('span', 'jp-ds-TestsPanel-sandboxMode', sandbox.text));
      if (sandbox.warning) {
        this._sandbox.append(el('div', 'jp-ds-TestsPanel-warning', `⚠ ${sandbox.warning}`));
      }
    }

    const coverage = coverageTexts(state.coverage);
    this._coverage.textContent = '';
    this._coverage.hidden = !coverage;
    if (coverage) {
      for (const kind of ['lines', 'branches'] as const) {
        const line = el('div', 'jp-ds-TestsPanel-coverageLine', coverage[kind]);
        line.dataset.kind = kind;
        this._coverage.append(line);
      }
    }
    this._funnel.textContent = funnelText(state.funnel);
    this._funnel.hidden = !state.funnel;

    const hasPath = Boolean(this._path);
    this._insert.hidden = !this._target || !hasPath;
    this._insert.disabled = this._inserted || this._inserting || !canInsert(state, this._path);
    this._copy.hidden = !this._target || hasPath;
    this._copy.disabled = !canCopy(state);

    state.tests.forEach((entry, i) => {
      let item = this._items[i];
      if (!item) {
        item = this._newItem();
        this._items.push(item);
        this._list.append(item.node);
      }
      this._updateItem(item, entry);
    });
  }

  private _newItem(): ITestItem {
    const node = el('li', 'jp-ds-TestsPanel-test');
    const head = el('div', 'jp-ds-TestsPanel-testHead');
    const name = el('span', 'jp-ds-TestsPanel-testName');
    const badge = el('span', 'jp-ds-TestsPanel-badge');
    head.append(badge, name);
    const verdict = el('div', 'jp-ds-TestsPanel-verdict');
    const details = el('details', 'jp-ds-TestsPanel-details');
    details.append(el('summary', '', 'source'));
    const source = el('pre', 'jp-ds-TestsPanel-source');
    details.append(source);
    node.append(head, verdict, details);
    return { node, name, badge, verdict, source };
  }

  private _updateItem(item: ITestItem, entry: ITestEntry): void {
    const data = item.node.dataset;
    data.name = entry.name ?? '';
    data.round = String(entry.round);
    data.status = entry.status;
    if (entry.reason) {
      data.reason = entry.reason;
    } else {
      delete data.reason;
    }
    item.name.textContent = entry.name ?? '(unnamed)';
    item.badge.textContent =
      entry.status === 'candidate' ? '…' : entry.status === 'kept' ? 'kept' : reasonLabel(entry.reason);
    item.verdict.textContent = verdictText(entry);
    if (item.source.textContent !== entry.source) {
      item.source.textContent = entry.source;
    }
  }

  private async _onInsert(): Promise<void> {
    const path = this._path;
    if (!path || !canInsert(this._state, path) || this._inserting) {
      return;
    }
    const insert = this._options.insert ?? insertTests;
    const body = buildInsertRequest(this._state, path);
    const signal = this._abort?.signal;
    this._inserting = true;
    this._render();
    try {
      const result = await insert(body);
      if (signal?.aborted) {
        return;
      }
      this._inserted = true;
      this._result.dataset.state = 'done';
      this._result.dataset.testPath = result.test_path;
      const n = result.added;
      this._result.textContent =
        `${n} test${n === 1 ? '' : 's'} written to ${result.test_path}` +
        (result.created ? ' (new file)' : '');
      this._options.open?.(result.test_path);
    } catch (error) {
      if (signal?.aborted) {
        return;
      }
      const message = error instanceof Error ? error.message : String(error);
      this._result.dataset.state = 'error';
      this._result.textContent = `Insert failed: ${message}`;
      this._options.notifier.report(error, 'inserting tests failed');
    } finally {
      this._inserting = false;
      this._render();
    }
  }

  private _onCopy(): void {
    if (!canCopy(this._state)) {
      return;
    }
    (this._options.copy ?? Clipboard.copyToSystem)(this._state.testFile);
    this._result.dataset.state = 'copied';
    this._result.textContent = 'Test file copied to the clipboard';
  }

  private _header: Widget;
  private _body: Widget;
  private _sandbox: HTMLDivElement;
  private _coverage: HTMLDivElement;
  private _funnel: HTMLDivElement;
  private _insert: HTMLButtonElement;
  private _copy: HTMLButtonElement;
  private _result: HTMLDivElement;
  private _list: HTMLOListElement;
  private _items: ITestItem[] = [];
  private _state: ITestsState = initialTestsState();
  private _target: ITestsTarget | null = null;
  private _abort: AbortController | null = null;
  private _inserting = false;
  private _inserted = false;
}

interface ITestItem {
  node: HTMLLIElement;
  name: HTMLSpanElement;
  badge: HTMLSpanElement;
  verdict: HTMLDivElement;
  source: HTMLPreElement;
}

/** Run one generation into the panel. */
export async function runTests(
  panel: TestsPanel,
  target: ITestsTarget,
  notifier: ErrorNotifier
): Promise<void> {
  const signal = panel.start(target);
  try {
    await streamTests(target.request, signal, event => {
      if (!signal.aborted) {
        panel.apply(event);
        if (event.kind === 'error') {
          notifier.report(event, 'test generation failed');
        }
      }
    });
    if (!signal.aborted) {
      panel.finish();
      if (panel.state.error?.code === 'incomplete') {
        notifier.report(panel.state.error, 'test generation failed');
      }
    }
  } catch (error) {
    if (signal.aborted) {
      return;
    }
    const message = error instanceof Error ? error.message : String(error);
    // An answer with an HTTP error keeps the server's code; no answer at all is 'network'.
    panel.fail(error instanceof ApiError && error.status > 0 ? error.code : 'network', message);
    notifier.report(error, 'test generation failed');
  }
}

/**
 * "jupyter-ds: Git status": a right side panel for the repository of the file browser's
 * folder (or the server root) — branch line, staged / changed / untracked / conflicted
 * files with stage, unstage and discard, recent commits, and a commit box whose
 * "Draft message" asks the local model for a message from the staged diff (never
 * committing by itself). "jupyter-ds: Draft commit message" opens it and drafts.
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { ServerConnection } from '@jupyterlab/services';
import { Panel, Widget } from '@lumino/widgets';

import { ApiError, request } from './api';
import {
  ACTION_TEXTS,
  FileAction,
  FileVerb,
  ICommitResult,
  IDraft,
  IFileRow,
  IGitBranches,
  IGitCommit,
  IGitDiff,
  IGitLog,
  IGitCall,
  IGitStatus,
  ISection,
  LOG_PAGE,
  SUMMARY_MAX,
  actionVerb,
  appendLog,
  branchLine,
  branchesCall,
  buildCommitMessageRequest,
  buildCommitRequest,
  buildFilesRequest,
  buildSwitchRequest,
  checkMessage,
  commitDoneText,
  commitEnablement,
  countsText,
  diffCall,
  discardQuestion,
  draftEnablement,
  draftInfoText,
  gitErrorText,
  gitCall,
  logCall,
  readBranches,
  readCommit,
  readDiff,
  readDraft,
  readLog,
  readStatus,
  readStatusAfterChange,
  relativeDate,
  repoCandidates,
  serverPath,
  shouldNotify,
  statusSections,
  statusCall,
  tryParentAfter
} from './gitModel';
import { ErrorNotifier } from './notifier';
import { el } from './dom';

export const GIT_PANEL_ID = 'jupyter-ds-git';

/** The git API of the server (`jupyter-ds/v1/git/<verb>`). */
export interface IGitApi {
  status(repo: string): Promise<IGitStatus>;
  log(repo: string, skip: number): Promise<IGitLog>;
  diff(repo: string, file: string, staged: boolean): Promise<IGitDiff>;
  change(verb: FileVerb, repo: string, files: string[]): Promise<IGitStatus>;
  commit(repo: string, message: string, amend: boolean): Promise<ICommitResult>;
  draft(repo: string): Promise<IDraft>;
  branches(repo: string): Promise<IGitBranches>;
  switchTo(repo: string, name: string): Promise<void>;
}

/** `IGitApi` over the API client (base URL, token and XSRF as JupyterLab does). */
export class GitClient implements IGitApi {
  constructor(private readonly _settings: ServerConnection.ISettings = ServerConnection.makeSettings()) {}

  async status(repo: string): Promise<IGitStatus> {
    return readStatus(await this._get(statusCall(repo)));
  }

  async log(repo: string, skip: number): Promise<IGitLog> {
    return readLog(await this._get(logCall(repo, skip, LOG_PAGE)));
  }

  async diff(repo: string, file: string, staged: boolean): Promise<IGitDiff> {
    return readDiff(await this._get(diffCall(repo, file, staged)));
  }

  async change(verb: FileVerb, repo: string, files: string[]): Promise<IGitStatus> {
    const data = await this._post(gitCall(verb), buildFilesRequest(repo, files));
    return readStatusAfterChange(data);
  }

  async commit(repo: string, message: string, amend: boolean): Promise<ICommitResult> {
    return readCommit(
      await this._post(gitCall('commit'), buildCommitRequest(repo, message, amend))
    );
  }

  async draft(repo: string): Promise<IDraft> {
    return readDraft(
      await this._post(gitCall('commit-message'), buildCommitMessageRequest(repo))
    );
  }

  async branches(repo: string): Promise<IGitBranches> {
    return readBranches(await this._get(branchesCall(repo)));
  }

  async switchTo(repo: string, name: string): Promise<void> {
    await this._post(gitCall('switch'), buildSwitchRequest(repo, name));
  }

  private _get(call: IGitCall): Promise<unknown> {
    return request(call.path, { query: call.query, settings: this._settings });
  }

  private _post(call: IGitCall, body: unknown): Promise<unknown> {
    return request(call.path, {
      method: 'POST',
      query: call.query,
      body,
      settings: this._settings
    });
  }
}

export interface IGitPanelOptions {
  notifier: ErrorNotifier;
  /** The file browser's folder (relative to the server root); '' for the root. */
  folder: () => string;
  api?: IGitApi;
  /** Ask before discarding changes; resolves to whether to go on. */
  confirm?: (question: string) => Promise<boolean>;
  /** Open a file (a click on a file name with Alt/double click). */
  open?: (path: string) => void;
}


function button(className: string, label: string, title: string): HTMLButtonElement {
  const node = el('button', `jp-ds-GitPanel-button ${className}`, label);
  node.type = 'button';
  node.title = title;
  node.setAttribute('aria-label', title);
  return node;
}

async function confirmDiscard(question: string): Promise<boolean> {
  const result = await showDialog({
    title: 'Discard changes',
    body: question,
    buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Discard' })]
  });
  return result.button.accept;
}

/**
 * The side panel. DOM (for users' styles and the browser tests):
 * `#jupyter-ds-git.jp-ds-GitPanel[data-state=loading|ready|error][data-repo]` holding
 * `.jp-ds-GitPanel-header` (`.jp-ds-GitPanel-branch[data-branch][data-detached]` with
 * `.jp-ds-GitPanel-branchName`, `.jp-ds-GitPanel-tracking`, `.jp-ds-GitPanel-state`;
 * `button.jp-ds-GitPanel-refresh`), `.jp-ds-GitPanel-repo`, `.jp-ds-GitPanel-error`
 * (inline: a conflict and what to do, no repository), the sections
 * `.jp-ds-GitPanel-section[data-section=staged|changes|untracked|conflicted][data-count]`
 * each with `ul.jp-ds-GitPanel-files` of
 * `li.jp-ds-GitPanel-file[data-path][data-status]` (`.jp-ds-GitPanel-path`, buttons
 * `.jp-ds-GitPanel-stage` / `.jp-ds-GitPanel-unstage` / `.jp-ds-GitPanel-discard`), the
 * commit box `.jp-ds-GitPanel-commitBox` (`textarea.jp-ds-GitPanel-message`,
 * `.jp-ds-GitPanel-count`, `.jp-ds-GitPanel-warning`, `button.jp-ds-GitPanel-draft`,
 * `.jp-ds-GitPanel-draftInfo[data-fallback]`, `input.jp-ds-GitPanel-amend`,
 * `button.jp-ds-GitPanel-commit`, `.jp-ds-GitPanel-commitError`, `.jp-ds-GitPanel-result`)
 * and the recent commits `ol.jp-ds-GitPanel-log` of
 * `li.jp-ds-GitPanel-logEntry[data-sha]` with `button.jp-ds-GitPanel-more`.
 */
export class GitPanel extends Panel {
  constructor(private readonly _options: IGitPanelOptions) {
    super();
    this._api = _options.api ?? new GitClient();
    this.id = GIT_PANEL_ID;
    this.addClass('jp-ds-GitPanel');
    this.title.label = 'Git';
    this.title.caption = 'jupyter-ds: Git status';
    this.title.closable = true;
    this.node.dataset.state = 'loading';

    const header = new Widget();
    header.addClass('jp-ds-GitPanel-header');
    this._branch = el('div', 'jp-ds-GitPanel-branch');
    this._branchName = el('span', 'jp-ds-GitPanel-branchName');
    this._tracking = el('span', 'jp-ds-GitPanel-tracking');
    this._state = el('span', 'jp-ds-GitPanel-state');
    this._branch.append(this._branchName, this._tracking, this._state);
    this._switch = button('jp-ds-GitPanel-switch', '⇄', 'Switch branch');
    this._switch.addEventListener('click', () => void this._showBranches());
    this._branchSelect = el('select', 'jp-ds-GitPanel-branches');
    this._branchSelect.hidden = true;
    this._branchSelect.addEventListener('change', () => void this._onSwitch());
    this._refresh = button('jp-ds-GitPanel-refresh', '⟳', 'Refresh');
    this._refresh.addEventListener('click', () => void this.refresh());
    header.node.append(this._branch, this._branchSelect, this._switch, this._refresh);

    const body = new Widget();
    body.addClass('jp-ds-GitPanel-body');
    this._repoLine = el('div', 'jp-ds-GitPanel-repo');
    this._error = el('div', 'jp-ds-GitPanel-error');
    this._error.setAttribute('role', 'alert');
    this._sections = el('div', 'jp-ds-GitPanel-sections');
    this._commitBox = this._buildCommitBox();
    const logHead = el('div', 'jp-ds-GitPanel-sectionHead', 'Recent commits');
    this._logList = el('ol', 'jp-ds-GitPanel-log');
    this._more = button('jp-ds-GitPanel-more', 'More', 'Show older commits');
    this._more.textContent = 'more…';
    this._more.addEventListener('click', () => void this._loadMore());
    const logBox = el('div', 'jp-ds-GitPanel-logBox');
    logBox.append(logHead, this._logList, this._more);
    body.node.append(this._repoLine, this._error, this._sections, this._commitBox, logBox);

    this.addWidget(header);
    this.addWidget(body);
    this._render();
  }

  /** The repository shown ('' for the server root; null before it was found). */
  get repo(): string | null {
    return this._repo;
  }

  get status(): IGitStatus | null {
    return this._status;
  }

  /** Reload the status and the first page of commits for the file browser's folder. */
  refresh(): Promise<void> {
    const running = this._refreshOnce();
    this._refreshing = running;
    void running.finally(() => {
      if (this._refreshing === running) {
        this._refreshing = null;
      }
    });
    return running;
  }

  /** The running refresh, if any (a new one replaces it), else a new one. */
  private _currentRefresh(): Promise<void> {
    return this._refreshing ?? this.refresh();
  }

  private async _refreshOnce(): Promise<void> {
    const generation = ++this._generation;
    const folder = this._options.folder();
    // `loading` only while there is nothing to show; a refresh of the same repository
    // keeps what is on screen (marked `data-refreshing`) until the new status is in.
    if (!this._status || this._folder !== folder) {
      this.node.dataset.state = 'loading';
    }
    this.node.dataset.refreshing = 'true';
    this._refresh.disabled = true;
    try {
      let status: IGitStatus | null = null;
      let repo: string | null = this._folder === folder ? this._repo : null;
      if (repo !== null) {
        try {
          status = await this._api.status(repo);
        } catch (error) {
          if (!(error instanceof ApiError && error.status === 404)) {
            throw error;
          }
          repo = null; // the repository went away: look again
        }
      }
      let lastNotFound: unknown = null;
      if (repo === null) {
        for (const candidate of repoCandidates(folder)) {
          try {
            status = await this._api.status(candidate);
            repo = candidate;
            break;
          } catch (error) {
            if (error instanceof ApiError && error.status === 404) {
              lastNotFound = error;
              if (tryParentAfter(error)) {
                continue;
              }
              break;
            }
            throw error;
          }
        }
      }
      // The server names the repository's top folder: file paths are relative to it.
      if (repo !== null && status?.repo !== null && status?.repo !== undefined) {
        repo = status.repo;
      }
      if (generation !== this._generation) {
        return;
      }
      if (repo === null || !status) {
        this._setNoRepo(folder, lastNotFound);
        return;
      }
      if (repo !== this._repo) {
        this._message.value = '';
        this._draftInfo.textContent = '';
        this._result.textContent = '';
      }
      this._folder = folder;
      this._repo = repo;
      this._status = status;
      this._clearError();
      const log = await this._api.log(repo, 0).catch(error => {
        this._report(error, 'log');
        return null;
      });
      if (generation !== this._generation) {
        return;
      }
      if (log) {
        this._log = log.commits;
        this._hasMore = log.hasMore;
      }
      this.node.dataset.state = 'ready';
      this._render();
    } catch (error) {
      if (generation !== this._generation) {
        return;
      }
      this.node.dataset.state = 'error';
      this._status = null;
      this._showError(error, 'status');
      this._render();
    } finally {
      if (generation === this._generation) {
        this._refresh.disabled = false;
        this.node.dataset.refreshing = 'false';
      }
    }
  }

  /** Ask the model for a message from the staged diff and put it in the textarea. */
  async draft(): Promise<void> {
    if (this._drafting) {
      return;
    }
    if (this._repo === null || this._refreshing) {
      await this._currentRefresh();
      if (this._repo === null) {
        return;
      }
    }
    const repo = this._repo;
    this._drafting = true;
    this._commitError.textContent = '';
    this._draftInfo.textContent = 'Drafting a message from the staged diff…';
    delete this._draftInfo.dataset.fallback;
    this._render();
    try {
      const draft = await this._api.draft(repo);
      if (repo !== this._repo) {
        return;
      }
      this._message.value = draft.message;
      this._draftInfo.textContent = draftInfoText(draft);
      if (draft.fallback) {
        this._draftInfo.dataset.fallback = 'true';
      }
      this._message.focus();
    } catch (error) {
      this._draftInfo.textContent = '';
      this._commitError.textContent = gitErrorText(error, 'commit-message', repo);
      if (shouldNotify(error)) {
        this._options.notifier.report(error, 'drafting a commit message failed');
      }
    } finally {
      this._drafting = false;
      this._render();
    }
  }

  protected onAfterShow(msg: any): void {
    super.onAfterShow(msg);
    void this.refresh();
  }

  private _buildCommitBox(): HTMLDivElement {
    const box = el('div', 'jp-ds-GitPanel-commitBox');
    this._message = el('textarea', 'jp-ds-GitPanel-message');
    this._message.placeholder = `Commit message (summary ≤ ${SUMMARY_MAX} characters, blank line, body)`;
    this._message.rows = 4;
    this._message.spellcheck = true;
    this._message.addEventListener('input', () => this._render());
    this._message.addEventListener('keydown', event => {
      if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        void this._onCommit();
      }
    });
    this._count = el('div', 'jp-ds-GitPanel-count');
    this._warning = el('div', 'jp-ds-GitPanel-warning');
    this._draftInfo = el('div', 'jp-ds-GitPanel-draftInfo');
    this._commitError = el('div', 'jp-ds-GitPanel-commitError');
    this._commitError.setAttribute('role', 'alert');
    this._result = el('div', 'jp-ds-GitPanel-result');

    const actions = el('div', 'jp-ds-GitPanel-commitActions');
    this._draft = el('button', 'jp-ds-GitPanel-draft jp-mod-styled', 'Draft message');
    this._draft.type = 'button';
    this._draft.addEventListener('click', () => void this.draft());
    const amendLabel = el('label', 'jp-ds-GitPanel-amendLabel');
    this._amend = el('input', 'jp-ds-GitPanel-amend');
    this._amend.type = 'checkbox';
    this._amend.addEventListener('change', () => this._onAmend());
    amendLabel.append(this._amend, document.createTextNode(' Amend'));
    amendLabel.title = 'Replace the last commit (its message and the staged changes)';
    this._commit = el('button', 'jp-ds-GitPanel-commit jp-mod-styled jp-mod-accept', 'Commit');
    this._commit.type = 'button';
    this._commit.addEventListener('click', () => void this._onCommit());
    actions.append(this._draft, amendLabel, this._commit);

    box.append(
      this._message,
      this._count,
      this._warning,
      this._draftInfo,
      actions,
      this._commitError,
      this._result
    );
    return box;
  }

  private _setNoRepo(folder: string, error: unknown): void {
    this._repo = null;
    this._folder = folder;
    this._status = null;
    this._log = [];
    this._hasMore = false;
    this.node.dataset.state = 'error';
    const where = folder ? `“${folder}” or above it` : 'the server root';
    const detail = error instanceof Error && error.message ? ` (${error.message})` : '';
    this._error.dataset.status = '404';
    this._error.textContent =
      `No git repository at ${where}${detail}. ` +
      'Open a folder of a repository in the file browser, then refresh.';
    this._render();
  }

  private _clearError(): void {
    this._error.textContent = '';
    delete this._error.dataset.status;
  }

  private _showError(error: unknown, verb: string): void {
    this._error.textContent = gitErrorText(error, verb, this._repo ?? '');
    if (error instanceof ApiError) {
      this._error.dataset.status = String(error.status);
    } else {
      delete this._error.dataset.status;
    }
    if (shouldNotify(error)) {
      this._options.notifier.report(error, `git ${verb} failed`);
    }
  }

  private _report(error: unknown, verb: string): void {
    if (shouldNotify(error)) {
      this._options.notifier.report(error, `git ${verb} failed`);
    }
  }

  private _render(): void {
    const status = this._status;
    const busy = this._busy > 0;
    this.node.dataset.busy = busy ? 'true' : 'false';
    if (this._repo !== null) {
      this.node.dataset.repo = this._repo;
    } else {
      delete this.node.dataset.repo;
    }
    this._repoLine.textContent =
      this._repo === null ? '' : `repository: ${this._repo || 'the server root'}`;
    this._repoLine.hidden = this._repo === null;
    this._error.hidden = !this._error.textContent;

    if (status) {
      const line = branchLine(status);
      this._branch.hidden = false;
      this._branch.dataset.branch = status.branch ?? '';
      this._branch.dataset.detached = String(status.detached);
      this._branch.dataset.repoState = status.state;
      this._branchName.textContent = line.branch;
      this._tracking.textContent = line.tracking;
      this._tracking.hidden = !line.tracking;
      this._state.textContent = line.state ?? '';
      this._state.hidden = !line.state;
      this._branch.title = countsText(status);
      this.title.caption = `jupyter-ds: Git — ${line.branch}: ${countsText(status)}`;
    } else {
      this._branch.hidden = this.node.dataset.state !== 'loading';
      this._branchName.textContent = this.node.dataset.state === 'loading' ? 'Loading…' : '';
      this._tracking.hidden = true;
      this._state.hidden = true;
    }
    this._switch.hidden = !status;
    this._switch.disabled = busy;

    this._renderSections(status ? statusSections(status) : [], busy);
    this._commitBox.hidden = !status;
    this._renderCommitBox(status, busy);
    this._renderLog();
  }

  private _renderSections(sections: ISection[], busy: boolean): void {
    this._sections.textContent = '';
    for (const section of sections) {
      const node = el('section', 'jp-ds-GitPanel-section');
      node.dataset.section = section.id;
      node.dataset.count = String(section.files.length);
      node.hidden = section.files.length === 0 && section.id !== 'staged' && section.id !== 'changes';
      const head = el('div', 'jp-ds-GitPanel-sectionHead');
      head.append(
        el('span', 'jp-ds-GitPanel-sectionTitle', section.title),
        el('span', 'jp-ds-GitPanel-sectionCount', String(section.files.length))
      );
      if (section.bulk && section.files.length) {
        const bulk = section.bulk;
        const text = bulk === 'stage' ? 'Stage all' : 'Unstage all';
        const all = button(`jp-ds-GitPanel-${bulk}All`, ACTION_TEXTS[bulk].label, text);
        all.disabled = busy;
        all.addEventListener('click', () =>
          void this._onAction(bulk, section.files.map(f => f.path))
        );
        head.append(all);
      }
      const list = el('ul', 'jp-ds-GitPanel-files');
      for (const row of section.files) {
        list.append(this._fileItem(row, busy));
      }
      if (!section.files.length) {
        list.append(
          el(
            'li',
            'jp-ds-GitPanel-empty',
            section.id === 'staged' ? 'nothing staged' : 'no changes'
          )
        );
      }
      node.append(head, list);
      this._sections.append(node);
    }
  }

  private _fileItem(row: IFileRow, busy: boolean): HTMLLIElement {
    const item = el('li', 'jp-ds-GitPanel-file');
    item.dataset.path = row.path;
    item.dataset.status = row.status;
    const name = el('span', 'jp-ds-GitPanel-path');
    // `dir/` (an untracked folder) reads as `dir/`, not as a nameless file in `dir`.
    const shown = row.path.replace(/\/+$/, '');
    const slash = shown.lastIndexOf('/');
    const base = shown.slice(slash + 1) + (shown.length < row.path.length ? '/' : '');
    name.append(el('span', 'jp-ds-GitPanel-fileName', base));
    if (slash > 0) {
      name.append(el('span', 'jp-ds-GitPanel-dir', shown.slice(0, slash)));
    }
    name.title = row.oldPath
      ? `${row.oldPath} → ${row.path} (${row.label}); click: diff, double click: open`
      : `${row.path} (${row.label}); click: diff, double click: open`;
    name.addEventListener('click', () => void this._toggleDiff(item, row));
    name.addEventListener('dblclick', () => {
      if (this._repo !== null) {
        this._options.open?.(serverPath(this._repo, row.path));
      }
    });
    const badge = el('span', 'jp-ds-GitPanel-badge', row.label === 'untracked' ? 'U' : row.status.charAt(0).toUpperCase());
    badge.title = row.label;
    const actions = el('span', 'jp-ds-GitPanel-actions');
    for (const action of row.actions) {
      const text = ACTION_TEXTS[action];
      const act = button(`jp-ds-GitPanel-${action}`, text.label, `${text.title} ${row.path}`);
      act.disabled = busy;
      act.addEventListener('click', event => {
        event.stopPropagation();
        void this._onAction(action, [row.path]);
      });
      actions.append(act);
    }
    item.append(name, actions, badge);
    return item;
  }

  private async _toggleDiff(item: HTMLLIElement, row: IFileRow): Promise<void> {
    const shown = item.querySelector('.jp-ds-GitPanel-diff');
    if (shown) {
      shown.remove();
      return;
    }
    if (this._repo === null || row.status === 'untracked') {
      return;
    }
    const pre = el('pre', 'jp-ds-GitPanel-diff', 'loading the diff…');
    item.append(pre);
    try {
      const diff = await this._api.diff(this._repo, row.path, row.staged);
      pre.textContent = diff.text || '(no textual difference)';
    } catch (error) {
      pre.textContent = gitErrorText(error, 'diff', this._repo ?? '');
      pre.dataset.error = 'true';
    }
  }

  private _renderCommitBox(status: IGitStatus | null, busy: boolean): void {
    const check = checkMessage(this._message.value);
    const staged = status?.staged.length ?? 0;
    this._count.textContent = check.summary ? `${check.summary.length}/${SUMMARY_MAX}` : '';
    this._count.dataset.over = String(check.summary.length > SUMMARY_MAX);
    this._warning.textContent = check.warnings.join(' ');
    this._warning.hidden = !check.warnings.length;
    this._draftInfo.hidden = !this._draftInfo.textContent;
    this._commitError.hidden = !this._commitError.textContent;
    this._result.hidden = !this._result.textContent;

    const draft = draftEnablement(staged, this._drafting);
    this._draft.disabled = !draft.enabled || busy;
    this._draft.title = draft.reason;
    this._draft.textContent = this._drafting ? 'Drafting…' : 'Draft message';
    this._amend.disabled = busy || !status?.head;
    const commit = commitEnablement({
      message: this._message.value,
      stagedCount: staged,
      conflictedCount: status?.conflicted.length ?? 0,
      amend: this._amend.checked,
      hasHead: Boolean(status?.head),
      busy: busy || this._drafting
    });
    this._commit.disabled = !commit.enabled;
    this._commit.title = commit.reason;
    this._commit.textContent = this._amend.checked ? 'Amend' : 'Commit';
  }

  private _renderLog(): void {
    this._logList.textContent = '';
    for (const commit of this._log) {
      this._logList.append(this._logItem(commit));
    }
    if (!this._log.length && this._status) {
      this._logList.append(el('li', 'jp-ds-GitPanel-empty', 'no commits yet'));
    }
    this._more.hidden = !this._hasMore;
    this._more.disabled = this._loadingMore;
    this._logList.parentElement!.hidden = !this._status;
  }

  private _logItem(commit: IGitCommit): HTMLLIElement {
    const item = el('li', 'jp-ds-GitPanel-logEntry');
    item.dataset.sha = commit.sha;
    item.append(
      el('span', 'jp-ds-GitPanel-sha', commit.short),
      el('span', 'jp-ds-GitPanel-summary', commit.summary)
    );
    const meta = el('div', 'jp-ds-GitPanel-meta', `${commit.author} · ${relativeDate(commit.date)}`);
    meta.title = commit.date;
    item.append(meta);
    item.title = `${commit.sha}\n${commit.summary}`;
    return item;
  }

  private async _onAction(action: FileAction, files: string[]): Promise<void> {
    const repo = this._repo;
    if (repo === null || !files.length || this._busy) {
      return;
    }
    if (action === 'discard') {
      const confirm = this._options.confirm ?? confirmDiscard;
      if (!(await confirm(discardQuestion(files)))) {
        return;
      }
    }
    const verb = actionVerb(action);
    await this._whileBusy(async () => {
      try {
        const status = await this._api.change(verb, repo, files);
        if (repo === this._repo) {
          this._status = status;
          this._clearError();
        }
      } catch (error) {
        this._showError(error, verb);
        if (error instanceof ApiError && error.status === 409) {
          await this._reloadStatus();
        }
      }
    });
  }

  private async _onCommit(): Promise<void> {
    const repo = this._repo;
    const status = this._status;
    if (repo === null || !status) {
      return;
    }
    const amend = this._amend.checked;
    const check = commitEnablement({
      message: this._message.value,
      stagedCount: status.staged.length,
      conflictedCount: status.conflicted.length,
      amend,
      hasHead: Boolean(status.head),
      busy: this._busy > 0 || this._drafting
    });
    if (!check.enabled) {
      return;
    }
    this._commitError.textContent = '';
    await this._whileBusy(async () => {
      try {
        const result = await this._api.commit(repo, this._message.value, amend);
        this._result.textContent = commitDoneText(result, amend);
        this._result.dataset.sha = result.sha;
        this._message.value = '';
        this._draftInfo.textContent = '';
        this._amend.checked = false;
      } catch (error) {
        this._commitError.textContent = gitErrorText(error, 'commit', repo);
        if (shouldNotify(error)) {
          this._options.notifier.report(error, 'git commit failed');
        }
      }
    });
    await this.refresh();
  }

  private _onAmend(): void {
    // Amending usually rewords the last commit: start from its summary.
    if (this._amend.checked && !this._message.value.trim() && this._log.length) {
      const head = this._status?.head;
      const last = this._log[0];
      if (!head || head === last.sha || last.sha.startsWith(head) || head.startsWith(last.sha)) {
        this._message.value = last.summary;
      }
    }
    this._render();
  }

  private async _loadMore(): Promise<void> {
    const repo = this._repo;
    if (repo === null || this._loadingMore) {
      return;
    }
    this._loadingMore = true;
    this._render();
    try {
      const page = await this._api.log(repo, this._log.length);
      if (repo === this._repo) {
        this._log = appendLog(this._log, page.commits);
        this._hasMore = page.hasMore && page.commits.length > 0;
      }
    } catch (error) {
      this._showError(error, 'log');
    } finally {
      this._loadingMore = false;
      this._render();
    }
  }

  private async _showBranches(): Promise<void> {
    const repo = this._repo;
    if (repo === null) {
      return;
    }
    if (!this._branchSelect.hidden) {
      this._branchSelect.hidden = true;
      return;
    }
    try {
      const branches = await this._api.branches(repo);
      const select = this._branchSelect;
      select.textContent = '';
      const current = branches.current ?? '';
      const prompt = el('option', '', current ? `on ${current}: switch to…` : 'switch to…');
      prompt.value = '';
      select.append(prompt);
      for (const name of branches.local) {
        if (name !== current) {
          const option = el('option', '', name);
          option.value = name;
          select.append(option);
        }
      }
      select.value = '';
      select.hidden = false;
      select.focus();
    } catch (error) {
      this._showError(error, 'branches');
      this._render();
    }
  }

  private async _onSwitch(): Promise<void> {
    const repo = this._repo;
    const name = this._branchSelect.value;
    this._branchSelect.hidden = true;
    if (repo === null || !name) {
      return;
    }
    let switched = false;
    await this._whileBusy(async () => {
      try {
        await this._api.switchTo(repo, name);
        this._clearError();
        switched = true;
      } catch (error) {
        this._showError(error, 'switch');
      }
    });
    if (switched) {
      await this.refresh();
    }
  }

  private async _reloadStatus(): Promise<void> {
    if (this._repo === null) {
      return;
    }
    try {
      this._status = await this._api.status(this._repo);
    } catch {
      // the error on screen already says what went wrong
    }
  }

  private async _whileBusy(work: () => Promise<void>): Promise<void> {
    this._busy += 1;
    this._render();
    try {
      await work();
    } finally {
      this._busy -= 1;
      this._render();
    }
  }

  private readonly _api: IGitApi;
  private _repo: string | null = null;
  private _folder: string | null = null;
  private _status: IGitStatus | null = null;
  private _log: IGitCommit[] = [];
  private _hasMore = false;
  private _loadingMore = false;
  private _busy = 0;
  private _drafting = false;
  private _generation = 0;
  private _refreshing: Promise<void> | null = null;

  private _branch: HTMLDivElement;
  private _branchName: HTMLSpanElement;
  private _tracking: HTMLSpanElement;
  private _state: HTMLSpanElement;
  private _switch: HTMLButtonElement;
  private _branchSelect: HTMLSelectElement;
  private _refresh: HTMLButtonElement;
  private _repoLine: HTMLDivElement;
  private _error: HTMLDivElement;
  private _sections: HTMLDivElement;
  private _commitBox: HTMLDivElement;
  private _message!: HTMLTextAreaElement;
  private _count!: HTMLDivElement;
  private _warning!: HTMLDivElement;
  private _draftInfo!: HTMLDivElement;
  private _commitError!: HTMLDivElement;
  private _result!: HTMLDivElement;
  private _draft!: HTMLButtonElement;
  private _amend!: HTMLInputElement;
  private _commit!: HTMLButtonElement;
  private _logList: HTMLOListElement;
  private _more: HTMLButtonElement;
}

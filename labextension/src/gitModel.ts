/**
 * The git side panel, the pure part: the answers of `jupyter-ds/v1/git/<verb>` read into
 * plain objects, the status split into the panel's sections (with the actions each file
 * offers), the branch line, the commit box's checks (message, button enablement), the
 * requests (path, query, body), and the texts of the errors (what to do on a 409, a
 * clear "nothing staged" on a 400). Failed requests are the API client's `ApiError`.
 *
 * Pure: no DOM, no widgets; no request is sent here (see `GitClient` in git.ts).
 */
import { ApiError, ApiQuery } from './api';

/** The git API's paths, under the API's `jupyter-ds/v1/`. */
export const GIT_API = 'git';
/** How many commits one page of the recent-commits list holds. */
export const LOG_PAGE = 10;
/** Git's convention for the summary line (longer ones are cut in many tools). */
export const SUMMARY_MAX = 72;

// -- answers -----------------------------------------------------------------------

export interface IGitFile {
  path: string;
  /** The server's code for the change (`M`, `A`, `D`, `R`, … or a word). */
  status: string;
  /** For a rename or copy: where the file came from. */
  old_path?: string;
}

export interface IGitStatus {
  /** The repository's top folder relative to the server root ('' for the root), if said. */
  repo: string | null;
  branch: string | null;
  detached: boolean;
  head: string | null;
  upstream: string | null;
  ahead: number;
  behind: number;
  /** `clean`, `merging`, `rebasing`, … (what is in progress). */
  state: string;
  staged: IGitFile[];
  unstaged: IGitFile[];
  untracked: string[];
  conflicted: string[];
}

export interface IGitCommit {
  sha: string;
  short: string;
  author: string;
  date: string;
  summary: string;
}

export interface IGitLog {
  commits: IGitCommit[];
  hasMore: boolean;
}

export interface ICommitResult {
  sha: string;
  short: string;
  summary: string;
}

export interface IDraft {
  /** The whole message, ready for the textarea. */
  message: string;
  summary: string;
  body: string;
  /** Why the message is a fallback (not the model's), or null when the model wrote it. */
  fallback: string | null;
  model: string | null;
  latencyMs: number | null;
}

export interface IGitBranches {
  current: string | null;
  local: string[];
  remote: string[];
}

export interface IGitDiff {
  files: unknown[];
  text: string;
}

function str(value: unknown, fallback = ''): string {
  return typeof value === 'string' ? value : fallback;
}

function num(value: unknown, fallback = 0): number {
  return typeof value === 'number' && Number.isFinite(value) ? value : fallback;
}

function obj(value: unknown): Record<string, unknown> {
  return value && typeof value === 'object' && !Array.isArray(value)
    ? (value as Record<string, unknown>)
    : {};
}

function fileOf(value: unknown): IGitFile | null {
  if (typeof value === 'string') {
    return value ? { path: value, status: '' } : null;
  }
  const f = obj(value);
  const path = str(f.path);
  if (!path) {
    return null;
  }
  const file: IGitFile = { path, status: str(f.status) };
  if (typeof f.old_path === 'string' && f.old_path && f.old_path !== path) {
    file.old_path = f.old_path;
  }
  return file;
}

function files(value: unknown): IGitFile[] {
  return Array.isArray(value) ? value.map(fileOf).filter((f): f is IGitFile => f !== null) : [];
}

function paths(value: unknown): string[] {
  return files(value).map(f => f.path);
}

/** A repository folder as the panel keeps it: `.` and `./a/` → `` and `a`. */
export function normalRepo(path: string): string {
  return path
    .split('/')
    .filter(part => part && part !== '.')
    .join('/');
}

/** `GET status` → the status (missing fields read as empty). */
export function readStatus(data: unknown): IGitStatus {
  const d = obj(data);
  return {
    repo: typeof d.repo === 'string' ? normalRepo(d.repo) : null,
    branch: typeof d.branch === 'string' && d.branch ? d.branch : null,
    detached: Boolean(d.detached),
    head: typeof d.head === 'string' && d.head ? d.head : null,
    upstream: typeof d.upstream === 'string' && d.upstream ? d.upstream : null,
    ahead: num(d.ahead),
    behind: num(d.behind),
    state: str(d.state, 'clean'),
    staged: files(d.staged),
    unstaged: files(d.unstaged),
    untracked: paths(d.untracked),
    conflicted: paths(d.conflicted)
  };
}

/** The status of `POST add|restore|unstage` (`{status: …}`), or the status itself. */
export function readStatusAfterChange(data: unknown): IGitStatus {
  const d = obj(data);
  return readStatus(d.status && typeof d.status === 'object' ? d.status : d);
}

/** `GET log` → the commits of one page and whether there are more. */
export function readLog(data: unknown): IGitLog {
  const d = obj(data);
  const commits = (Array.isArray(d.commits) ? d.commits : [])
    .map(obj)
    .filter(c => typeof c.sha === 'string' && c.sha)
    .map(c => ({
      sha: str(c.sha),
      short: str(c.short) || str(c.sha).slice(0, 7),
      author: str(c.author),
      date: str(c.date),
      summary: str(c.summary)
    }));
  return { commits, hasMore: Boolean(d.has_more) };
}

/** The next page appended to the list on screen (a commit already shown is not repeated). */
export function appendLog(shown: IGitCommit[], page: IGitCommit[]): IGitCommit[] {
  const seen = new Set(shown.map(c => c.sha));
  return [...shown, ...page.filter(c => !seen.has(c.sha))];
}

/** `POST commit` → the new commit. */
export function readCommit(data: unknown): ICommitResult {
  const d = obj(data);
  const sha = str(d.sha);
  if (!sha) {
    throw new ApiError('the server did not name the new commit', 200, 'bad_answer');
  }
  return { sha, short: str(d.short) || sha.slice(0, 7), summary: str(d.summary) };
}

/** `POST commit-message` → the draft for the textarea. */
export function readDraft(data: unknown): IDraft {
  const d = obj(data);
  const summary = str(d.summary).trim();
  const body = str(d.body).trim();
  let message = str(d.output).trim();
  if (!message) {
    message = body ? `${summary}\n\n${body}` : summary;
  }
  let fallback: string | null = null;
  if (typeof d.fallback === 'string' && d.fallback.trim()) {
    fallback = d.fallback.trim();
  } else if (d.fallback === true) {
    fallback = 'the model gave no usable message';
  }
  return {
    message,
    summary: summary || firstLine(message),
    body,
    fallback,
    model: typeof d.model === 'string' && d.model ? d.model : null,
    latencyMs: typeof d.latency_ms === 'number' ? d.latency_ms : null
  };
}

/** `GET branches` → branch names. */
export function readBranches(data: unknown): IGitBranches {
  const d = obj(data);
  const names = (value: unknown): string[] =>
    (Array.isArray(value) ? value : [])
      .map(b => (typeof b === 'string' ? b : str(obj(b).name)))
      .filter(Boolean);
  return {
    current: typeof d.current === 'string' && d.current ? d.current : null,
    local: names(d.local),
    remote: names(d.remote)
  };
}

/** `GET diff` → its text. */
export function readDiff(data: unknown): IGitDiff {
  const d = obj(data);
  return { files: Array.isArray(d.files) ? d.files : [], text: str(d.text) };
}

// -- requests ----------------------------------------------------------------------

export type GitQuery = ApiQuery;

/** One call of the git API: its path under `jupyter-ds/v1/` and its query. */
export interface IGitCall {
  path: string;
  query: GitQuery;
}

/** `git/<verb>` with its query (`null` and `undefined` values are left out when sent). */
export function gitCall(verb: string, query: GitQuery = {}): IGitCall {
  return { path: `${GIT_API}/${verb}`, query };
}

export function statusCall(repo: string): IGitCall {
  return gitCall('status', { path: repo });
}

export function logCall(repo: string, skip = 0, limit = LOG_PAGE): IGitCall {
  return gitCall('log', { path: repo, skip, limit });
}

export function diffCall(repo: string, file: string, staged: boolean): IGitCall {
  return gitCall('diff', { path: repo, staged, file });
}

export function branchesCall(repo: string): IGitCall {
  return gitCall('branches', { path: repo });
}

export type FileVerb = 'add' | 'restore' | 'unstage';

/** The body of `POST add|restore|unstage`. */
export function buildFilesRequest(repo: string, paths: string[]): { path: string; files: string[] } {
  return { path: repo, files: [...new Set(paths.filter(Boolean))] };
}

/** The body of `POST commit`: the message cleaned up as git does for `-m`. */
export function buildCommitRequest(
  repo: string,
  message: string,
  amend = false
): { path: string; message: string; amend?: boolean } {
  const body: { path: string; message: string; amend?: boolean } = {
    path: repo,
    message: cleanMessage(message)
  };
  if (amend) {
    body.amend = true;
  }
  return body;
}

export function buildCommitMessageRequest(repo: string): { path: string } {
  return { path: repo };
}

export function buildSwitchRequest(repo: string, name: string): { path: string; name: string } {
  return { path: repo, name };
}

/**
 * The repository folders to try for a file-browser folder, nearest first:
 * `a/b` → `a/b`, `a`, `` (the server root). A drive prefix (`RTC:…`) is dropped.
 */
export function repoCandidates(folder: string | null | undefined): string[] {
  let path = (folder ?? '').replace(/^[^/]*:/, '');
  path = path
    .split('/')
    .filter(part => part && part !== '.')
    .join('/');
  const out: string[] = [];
  while (path) {
    out.push(path);
    const cut = path.lastIndexOf('/');
    path = cut < 0 ? '' : path.slice(0, cut);
  }
  out.push('');
  return out;
}

/**
 * After a 404 for a folder, whether its parent may still hold a repository: not when the
 * server says the folder is not in one (it looked above it already), yes when the folder
 * is gone or is no folder.
 */
export function tryParentAfter(error: unknown): boolean {
  if (!(error instanceof ApiError) || error.status !== 404) {
    return false;
  }
  return !/not (in|inside) a git repository/i.test(error.message);
}

/** A file of the repository as a path under the server root (to open it). */
export function serverPath(repo: string, file: string): string {
  return repo ? `${repo.replace(/\/+$/, '')}/${file}` : file;
}

// -- sections ----------------------------------------------------------------------

export type SectionId = 'staged' | 'changes' | 'untracked' | 'conflicted';
export type FileAction = 'stage' | 'unstage' | 'discard';

export interface IFileRow {
  path: string;
  /** `data-status`: the server's code, or `untracked` / `conflicted`. */
  status: string;
  /** A word for the status ("modified", "new file", …). */
  label: string;
  oldPath?: string;
  actions: FileAction[];
  /** Whether its diff is the staged one (index vs HEAD). */
  staged: boolean;
}

export interface ISection {
  id: SectionId;
  title: string;
  files: IFileRow[];
  /** What the section's own button does to all its files (null: no such button). */
  bulk: FileAction | null;
}

const STATUS_WORDS: Readonly<Record<string, string>> = {
  M: 'modified',
  A: 'new file',
  D: 'deleted',
  R: 'renamed',
  C: 'copied',
  T: 'type changed',
  U: 'conflicted',
  '?': 'untracked',
  '??': 'untracked',
  added: 'new file',
  new: 'new file'
};

/** A word for a status code: `M` → "modified", `R100` → "renamed"; words stay. */
export function statusLabel(code: string): string {
  const c = code.trim();
  if (!c) {
    return 'changed';
  }
  if (STATUS_WORDS[c]) {
    return STATUS_WORDS[c];
  }
  const letter = /^([MADRCTU])\d*$/.exec(c);
  if (letter) {
    return STATUS_WORDS[letter[1]];
  }
  return c.toLowerCase().replace(/_/g, ' ');
}

/** The four sections of the panel (always all four, in this order; some may be empty). */
export function statusSections(status: IGitStatus): ISection[] {
  const rows = (list: IGitFile[], actions: FileAction[], staged: boolean): IFileRow[] =>
    list.map(f => {
      const row: IFileRow = {
        path: f.path,
        status: f.status || 'modified',
        label: statusLabel(f.status),
        actions,
        staged
      };
      if (f.old_path) {
        row.oldPath = f.old_path;
      }
      return row;
    });
  const plain = (list: string[], status: string, actions: FileAction[]): IFileRow[] =>
    list.map(path => ({ path, status, label: status, actions, staged: false }));
  return [
    { id: 'staged', title: 'Staged', files: rows(status.staged, ['unstage'], true), bulk: 'unstage' },
    {
      id: 'changes',
      title: 'Changes',
      files: rows(status.unstaged, ['stage', 'discard'], false),
      bulk: 'stage'
    },
    {
      id: 'untracked',
      title: 'Untracked',
      files: plain(status.untracked, 'untracked', ['stage']),
      bulk: 'stage'
    },
    // Staging a conflicted file marks it resolved (after its markers were edited away).
    { id: 'conflicted', title: 'Conflicted', files: plain(status.conflicted, 'conflicted', ['stage']), bulk: null }
  ];
}

/** The API verb behind a file action. */
export function actionVerb(action: FileAction): FileVerb {
  return action === 'stage' ? 'add' : action === 'unstage' ? 'unstage' : 'restore';
}

export const ACTION_TEXTS: Readonly<Record<FileAction, { label: string; title: string }>> = {
  stage: { label: '+', title: 'Stage' },
  unstage: { label: '−', title: 'Unstage' },
  discard: { label: '↺', title: 'Discard changes' }
};

/** The question of the confirm dialog before a discard. */
export function discardQuestion(paths: string[]): string {
  const what = paths.length === 1 ? paths[0] : `${paths.length} files`;
  return `Discard the changes to ${what}? This cannot be undone.`;
}

/** Counts for the panel's title: "3 staged · 2 changed". */
export function countsText(status: IGitStatus): string {
  const parts: string[] = [];
  const add = (n: number, word: string): void => {
    if (n) {
      parts.push(`${n} ${word}`);
    }
  };
  add(status.staged.length, 'staged');
  add(status.unstaged.length, 'changed');
  add(status.untracked.length, 'untracked');
  add(status.conflicted.length, 'conflicted');
  return parts.length ? parts.join(' · ') : 'nothing to commit, working tree clean';
}

// -- branch line -------------------------------------------------------------------

const STATE_TEXTS: Readonly<Record<string, string>> = {
  merge: 'merge in progress',
  merging: 'merge in progress',
  rebase: 'rebase in progress',
  rebasing: 'rebase in progress',
  'cherry-pick': 'cherry-pick in progress',
  cherry_pick: 'cherry-pick in progress',
  'cherry-picking': 'cherry-pick in progress',
  revert: 'revert in progress',
  reverting: 'revert in progress',
  bisect: 'bisect in progress',
  bisecting: 'bisect in progress'
};

/** What is in progress ("merge in progress"), or null for a plain state. */
export function stateText(state: string): string | null {
  const s = state.trim().toLowerCase();
  if (!s || s === 'clean' || s === 'normal' || s === 'none' || s === 'dirty') {
    return null;
  }
  return STATE_TEXTS[s] ?? `${s.replace(/_/g, ' ')} in progress`;
}

export interface IBranchLine {
  /** "main", "detached at 1a2b3c4", "main (no commits yet)". */
  branch: string;
  /** "↑2 ↓1", "up to date", "no upstream". */
  tracking: string;
  /** "merge in progress" or null. */
  state: string | null;
}

export function branchLine(status: IGitStatus): IBranchLine {
  let branch: string;
  if (status.detached) {
    branch = `detached at ${status.head ? status.head.slice(0, 7) : 'an unknown commit'}`;
  } else {
    branch = status.branch ?? '(no branch)';
    if (!status.head) {
      branch += ' (no commits yet)';
    }
  }
  let tracking: string;
  if (!status.upstream) {
    tracking = status.detached ? '' : 'no upstream';
  } else if (!status.ahead && !status.behind) {
    tracking = `up to date with ${status.upstream}`;
  } else {
    const parts: string[] = [];
    if (status.ahead) {
      parts.push(`↑${status.ahead}`);
    }
    if (status.behind) {
      parts.push(`↓${status.behind}`);
    }
    tracking = `${parts.join(' ')} ${status.upstream}`;
  }
  return { branch, tracking, state: stateText(status.state) };
}

// -- the commit box ----------------------------------------------------------------

export function firstLine(message: string): string {
  const lines = message.replace(/\r\n?/g, '\n').split('\n');
  return (lines.find(line => line.trim()) ?? '').trim();
}

/**
 * The message as git keeps it with `-m`: trailing spaces cut, blank lines at the start and
 * end dropped, runs of blank lines made one.
 */
export function cleanMessage(message: string): string {
  const lines = message
    .replace(/\r\n?/g, '\n')
    .split('\n')
    .map(line => line.replace(/\s+$/, ''));
  const out: string[] = [];
  for (const line of lines) {
    if (!line && (!out.length || !out[out.length - 1])) {
      continue;
    }
    out.push(line);
  }
  while (out.length && !out[out.length - 1]) {
    out.pop();
  }
  return out.join('\n');
}

export interface IMessageCheck {
  /** Nothing but whitespace: no commit. */
  empty: boolean;
  summary: string;
  /** Advice that does not block the commit. */
  warnings: string[];
}

/** Checks of a commit message: empty, summary longer than 72, no blank line after it. */
export function checkMessage(message: string): IMessageCheck {
  const clean = cleanMessage(message);
  const lines = clean.split('\n');
  const summary = lines[0] ?? '';
  const warnings: string[] = [];
  if (summary.length > SUMMARY_MAX) {
    warnings.push(
      `The summary line has ${summary.length} characters; keep it to ${SUMMARY_MAX} or fewer.`
    );
  }
  if (lines.length > 1 && lines[1] !== '') {
    warnings.push('Leave a blank line between the summary and the body.');
  }
  return { empty: clean === '', summary, warnings };
}

export interface ICommitInputs {
  message: string;
  stagedCount: number;
  conflictedCount: number;
  amend: boolean;
  /** Whether the repository has a commit (to amend). */
  hasHead: boolean;
  /** A request of the panel is running. */
  busy: boolean;
}

/** Whether "Commit" may be pressed, and why not (for its tooltip). */
export function commitEnablement(inputs: ICommitInputs): { enabled: boolean; reason: string } {
  if (inputs.busy) {
    return { enabled: false, reason: 'Wait for the running git operation' };
  }
  if (inputs.conflictedCount) {
    return { enabled: false, reason: 'Resolve and stage the conflicted files first' };
  }
  if (inputs.amend && !inputs.hasHead) {
    return { enabled: false, reason: 'There is no commit to amend yet' };
  }
  // Amending may only reword the last commit: it needs no staged change.
  if (!inputs.stagedCount && !inputs.amend) {
    return { enabled: false, reason: 'Nothing is staged: stage files with + first' };
  }
  if (checkMessage(inputs.message).empty) {
    return { enabled: false, reason: 'Write a commit message (or draft one)' };
  }
  return {
    enabled: true,
    reason: inputs.amend ? 'Amend the last commit with the staged changes' : 'Commit the staged changes'
  };
}

/** Whether "Draft message" may be pressed, and why not. */
export function draftEnablement(
  stagedCount: number,
  busy: boolean
): { enabled: boolean; reason: string } {
  if (busy) {
    return { enabled: false, reason: 'A draft is being written' };
  }
  if (!stagedCount) {
    // Still allowed: the server answers with its clear "nothing staged" 400.
    return { enabled: true, reason: 'Nothing is staged yet: stage files, then draft' };
  }
  return { enabled: true, reason: 'Draft a commit message from the staged diff with the local model' };
}

/** The line under the textarea after a draft: who wrote it, or that it is a fallback. */
export function draftInfoText(draft: IDraft): string {
  if (draft.fallback) {
    return `fallback: ${draft.fallback} — edit it before committing`;
  }
  const who = draft.model ? `drafted by ${draft.model}` : 'drafted by the model';
  const time = draft.latencyMs !== null ? ` in ${formatMs(draft.latencyMs)}` : '';
  return `${who}${time} — edit it before committing`;
}

function formatMs(ms: number): string {
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

export function commitDoneText(result: ICommitResult, amend: boolean): string {
  return `${amend ? 'Amended' : 'Committed'} ${result.short}: ${result.summary}`;
}

// -- errors ------------------------------------------------------------------------

/** Whether a 400 says that the staged diff is empty. */
export function isNothingStaged(error: unknown): boolean {
  if (!(error instanceof ApiError) || error.status !== 400) {
    return false;
  }
  return (
    /nothing[_ ]?(is[_ ])?staged|no[_ ]staged|empty[_ ]staged|nothing to commit/i.test(error.code) ||
    /nothing (is )?staged|no staged|staged diff is empty|empty staged|nothing to commit/i.test(
      error.message
    )
  );
}

const CONFLICT_HINTS: Readonly<Record<string, string>> = {
  switch: 'Commit or stash your changes, then switch again.',
  commit: 'Resolve the conflicted files, stage them, then commit.',
  restore: 'Finish or abort the operation in progress, then try again.',
  add: 'Finish or abort the operation in progress, then try again.',
  unstage: 'Finish or abort the operation in progress, then try again.'
};

/** A message that already says what to do ("…, then …", "commit or stash", …). */
function saysWhatToDo(message: string): boolean {
  return /\b(then|first|commit or stash|stash|resolve|abort|continue|run |use )\b/i.test(message);
}

/** The inline text of a failed git request (`verb`: the API verb), for a user. */
export function gitErrorText(error: unknown, verb: string, repo = ''): string {
  if (!(error instanceof ApiError)) {
    const message = error instanceof Error ? error.message : String(error);
    return `git ${verb} failed: ${message || 'cannot reach the server'}`;
  }
  const message = error.message.replace(/\s+$/, '');
  switch (error.status) {
    case 400:
      if (isNothingStaged(error)) {
        return verb === 'commit-message'
          ? 'Nothing is staged: stage files with + first, then draft a message.'
          : 'Nothing is staged: stage files with + first, then commit.';
      }
      return `Invalid request${error.field ? ` (${error.field})` : ''}: ${message}`;
    case 403:
      return `Refused: ${message}`;
    case 404:
      return `Not a git repository: ${repo || 'the server root'} (${message})`;
    case 409: {
      const hint = saysWhatToDo(message) ? '' : ` ${CONFLICT_HINTS[verb] ?? 'Resolve it, then refresh.'}`;
      return `Conflict: ${message}${hint}`;
    }
    case 429:
      return `Too many requests: ${message}. Try again in a moment.`;
    case 503:
      return `The model is not ready: ${message}. Try again in a moment.`;
    case 504:
      return `The model took too long: ${message}`;
    default:
      return `git ${verb} failed: ${message}`;
  }
}

/**
 * Whether an error also goes to the (deduplicated) notifications: not the ones the panel
 * explains inline as a state of the repository (a conflict, nothing staged, not a repo).
 */
export function shouldNotify(error: unknown): boolean {
  if (!(error instanceof ApiError)) {
    return true;
  }
  return !(error.status === 409 || error.status === 404 || isNothingStaged(error));
}

// -- dates -------------------------------------------------------------------------

/** "just now", "5 min ago", "3 h ago", "2 days ago", else the date (YYYY-MM-DD). */
export function relativeDate(iso: string, now: number = Date.now()): string {
  const t = Date.parse(iso);
  if (!Number.isFinite(t)) {
    return iso;
  }
  const s = Math.round((now - t) / 1000);
  if (s < 0) {
    return new Date(t).toISOString().slice(0, 10);
  }
  if (s < 60) {
    return 'just now';
  }
  if (s < 3600) {
    return `${Math.floor(s / 60)} min ago`;
  }
  if (s < 86400) {
    return `${Math.floor(s / 3600)} h ago`;
  }
  if (s < 14 * 86400) {
    const d = Math.floor(s / 86400);
    return `${d} day${d === 1 ? '' : 's'} ago`;
  }
  return new Date(t).toISOString().slice(0, 10);
}

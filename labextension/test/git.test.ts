import { describe, expect, it } from 'vitest';

import { ApiError, apiUrl, readEnvelope } from '../src/api';
import {
  IGitCall,
  IGitStatus,
  SUMMARY_MAX,
  actionVerb,
  appendLog,
  branchLine,
  buildCommitMessageRequest,
  buildCommitRequest,
  buildFilesRequest,
  buildSwitchRequest,
  checkMessage,
  cleanMessage,
  commitDoneText,
  commitEnablement,
  countsText,
  diffCall,
  discardQuestion,
  draftEnablement,
  draftInfoText,
  gitErrorText,
  gitCall,
  isNothingStaged,
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
  stateText,
  statusLabel,
  statusSections,
  statusCall,
  normalRepo,
  tryParentAfter
} from '../src/gitModel';

/** A status as the server sends it (`GET jupyter-ds/v1/git/status`). */
const STATUS_DATA = {
  branch: 'main',
  detached: false,
  head: '1a2b3c4d5e6f7a8b9c0d1a2b3c4d5e6f7a8b9c0d',
  upstream: 'origin/main',
  ahead: 2,
  behind: 1,
  state: 'clean',
  staged: [
    { path: 'new.py', status: 'A' },
    { path: 'docs/guide.md', status: 'R', old_path: 'guide.md' }
  ],
  unstaged: [
    { path: 'calc.py', status: 'M' },
    { path: 'gone.txt', status: 'D' }
  ],
  untracked: ['scratch.ipynb'],
  conflicted: []
};

function status(overrides: Partial<IGitStatus> = {}): IGitStatus {
  return { ...readStatus(STATUS_DATA), ...overrides };
}

function envelopeError(code: string, message: string, field?: string): unknown {
  return { status: 'error', error: { code, message, field }, timestamp: 1 };
}

function errorOf(httpStatus: number, body: unknown): unknown {
  try {
    readEnvelope(httpStatus, body);
  } catch (error) {
    return error;
  }
  throw new Error('no error thrown');
}

describe('git answers', () => {
  it('reads the status and fills in what is missing', () => {
    const s = readStatus(STATUS_DATA);
    expect(s.branch).toBe('main');
    expect(s.ahead).toBe(2);
    expect(s.staged).toEqual([
      { path: 'new.py', status: 'A' },
      { path: 'docs/guide.md', status: 'R', old_path: 'guide.md' }
    ]);
    expect(s.untracked).toEqual(['scratch.ipynb']);
    expect(readStatus({})).toEqual({
      repo: null,
      branch: null,
      detached: false,
      head: null,
      upstream: null,
      ahead: 0,
      behind: 0,
      state: 'clean',
      staged: [],
      unstaged: [],
      untracked: [],
      conflicted: []
    });
    // the repository's top folder, as the server names it ('.' is the server root)
    expect(readStatus({ ...STATUS_DATA, repo: 'proj' }).repo).toBe('proj');
    expect(readStatus({ ...STATUS_DATA, repo: '.' }).repo).toBe('');
    // junk entries are dropped; plain strings are accepted where objects are expected
    expect(readStatus({ staged: [null, 3, { path: '' }, 'x.py'] }).staged).toEqual([
      { path: 'x.py', status: '' }
    ]);
  });

  it('reads the status that add / restore / unstage answer with', () => {
    expect(readStatusAfterChange({ status: STATUS_DATA }).branch).toBe('main');
    expect(readStatusAfterChange(STATUS_DATA).unstaged).toHaveLength(2);
  });

  it('reads errors as the API client\'s ApiError', () => {
    const error = errorOf(409, envelopeError('conflict', 'a merge is in progress', 'path'));
    expect(error).toBeInstanceOf(ApiError);
    expect(error).toMatchObject({
      status: 409,
      code: 'conflict',
      message: 'a merge is in progress',
      field: 'path'
    });
  });

  it('reads log pages and appends without repeating commits', () => {
    const page = readLog({
      commits: [
        { sha: 'aaaaaaaaaa', short: 'aaaaaaa', author: 'Ann', date: '2024-01-02T00:00:00Z', summary: 'one' },
        { sha: 'bbbbbbbbbb', author: 'Bob', date: '2024-01-01T00:00:00Z', summary: 'two' },
        { summary: 'no sha: dropped' }
      ],
      has_more: true
    });
    expect(page.hasMore).toBe(true);
    expect(page.commits.map(c => c.short)).toEqual(['aaaaaaa', 'bbbbbbb']);
    const next = readLog({ commits: [{ sha: 'bbbbbbbbbb' }, { sha: 'cccccccccc' }], has_more: false });
    expect(appendLog(page.commits, next.commits).map(c => c.sha)).toEqual([
      'aaaaaaaaaa',
      'bbbbbbbbbb',
      'cccccccccc'
    ]);
    expect(readLog(null)).toEqual({ commits: [], hasMore: false });
  });

  it('reads the commit, the draft, branches and diffs', () => {
    expect(readCommit({ sha: 'abcdef0123', summary: 'feat: x' })).toEqual({
      sha: 'abcdef0123',
      short: 'abcdef0',
      summary: 'feat: x'
    });
    expect(() => readCommit({})).toThrow(ApiError);

    const draft = readDraft({
      output: 'feat: add mean\n\nAdds mean().\n',
      summary: 'feat: add mean',
      body: 'Adds mean().',
      model: 'tiny',
      latency_ms: 1234
    });
    expect(draft).toEqual({
      message: 'feat: add mean\n\nAdds mean().',
      summary: 'feat: add mean',
      body: 'Adds mean().',
      fallback: null,
      model: 'tiny',
      latencyMs: 1234
    });
    // no output: summary and body make the message
    expect(readDraft({ summary: 'fix: y', body: 'Why.' }).message).toBe('fix: y\n\nWhy.');
    expect(readDraft({ summary: 'fix: y' }).message).toBe('fix: y');
    expect(readDraft({ output: 'chore: z', fallback: true }).fallback).toBe(
      'the model gave no usable message'
    );
    expect(readDraft({ output: 'chore: z', fallback: 'summary too long' }).fallback).toBe(
      'summary too long'
    );
    expect(readDraft({ output: 'chore: z', fallback: false }).fallback).toBeNull();

    expect(
      readBranches({ current: 'main', local: [{ name: 'main' }, { name: 'dev' }], remote: ['origin/main'] })
    ).toEqual({ current: 'main', local: ['main', 'dev'], remote: ['origin/main'] });
    expect(readDiff({ files: [{ path: 'a' }], text: '+x' })).toEqual({ files: [{ path: 'a' }], text: '+x' });
  });
});

describe('git requests', () => {
  it('builds URLs with encoded query parameters', () => {
    const settings = { baseUrl: 'http://localhost:8888/user/a/' } as any;
    const url = (call: IGitCall): string => apiUrl(call.path, call.query, settings);
    const base = 'http://localhost:8888/user/a/jupyter-ds/v1/git/';
    expect(url(statusCall(''))).toBe(`${base}status?path=`);
    expect(url(statusCall('my repo/ä'))).toBe(`${base}status?path=my%20repo%2F%C3%A4`);
    expect(url(logCall('r', 10))).toBe(`${base}log?path=r&skip=10&limit=10`);
    expect(url(diffCall('r', 'a&b.py', true))).toBe(`${base}diff?path=r&staged=true&file=a%26b.py`);
    expect(url(gitCall('add'))).toBe(`${base}add`);
    expect(url(gitCall('x', { a: null, b: undefined, c: 0 }))).toBe(`${base}x?c=0`);
  });

  it('builds the bodies of the POST verbs', () => {
    expect(buildFilesRequest('r', ['a.py', 'a.py', '', 'b.py'])).toEqual({
      path: 'r',
      files: ['a.py', 'b.py']
    });
    expect(buildCommitRequest('r', '  \nfeat: x  \n\n\n\nbody\n\n', false)).toEqual({
      path: 'r',
      message: 'feat: x\n\nbody'
    });
    expect(buildCommitRequest('', 'fix: y', true)).toEqual({ path: '', message: 'fix: y', amend: true });
    expect(buildCommitMessageRequest('r')).toEqual({ path: 'r' });
    expect(buildSwitchRequest('r', 'dev')).toEqual({ path: 'r', name: 'dev' });
    expect(actionVerb('stage')).toBe('add');
    expect(actionVerb('unstage')).toBe('unstage');
    expect(actionVerb('discard')).toBe('restore');
  });

  it('looks for the repository from the folder up to the server root', () => {
    expect(repoCandidates('a/b/c')).toEqual(['a/b/c', 'a/b', 'a', '']);
    expect(repoCandidates('')).toEqual(['']);
    expect(repoCandidates(null)).toEqual(['']);
    expect(repoCandidates('RTC:proj/src/')).toEqual(['proj/src', 'proj', '']);
    expect(repoCandidates('./x//y')).toEqual(['x/y', 'x', '']);
    expect(normalRepo('./a/b/')).toBe('a/b');
    // the server looked above the folder already: no need to ask for its parents
    const notInRepo = errorOf(
      404,
      envelopeError('not_found', "field 'path': 'a/b' is not in a git repository (under the server root)")
    );
    const gone = errorOf(404, envelopeError('not_found', "field 'path': 'a/b' does not exist"));
    expect(tryParentAfter(notInRepo)).toBe(false);
    expect(tryParentAfter(gone)).toBe(true);
    expect(tryParentAfter(errorOf(403, envelopeError('forbidden', 'outside')))).toBe(false);
    expect(serverPath('proj', 'src/a.py')).toBe('proj/src/a.py');
    expect(serverPath('', 'a.py')).toBe('a.py');
  });
});

describe('status → sections', () => {
  it('puts each file in its section with the actions it offers', () => {
    const sections = statusSections(status({ conflicted: ['both.py'] }));
    expect(sections.map(s => s.id)).toEqual(['staged', 'changes', 'untracked', 'conflicted']);
    const [staged, changes, untracked, conflicted] = sections;
    expect(staged.files.map(f => [f.path, f.status, f.label, f.actions])).toEqual([
      ['new.py', 'A', 'new file', ['unstage']],
      ['docs/guide.md', 'R', 'renamed', ['unstage']]
    ]);
    expect(staged.files[1].oldPath).toBe('guide.md');
    expect(staged.files.every(f => f.staged)).toBe(true);
    expect(changes.files.map(f => [f.path, f.label, f.actions])).toEqual([
      ['calc.py', 'modified', ['stage', 'discard']],
      ['gone.txt', 'deleted', ['stage', 'discard']]
    ]);
    expect(untracked.files).toEqual([
      { path: 'scratch.ipynb', status: 'untracked', label: 'untracked', actions: ['stage'], staged: false }
    ]);
    expect(conflicted.files.map(f => [f.path, f.status, f.actions])).toEqual([
      ['both.py', 'conflicted', ['stage']]
    ]);
    expect(sections.map(s => s.bulk)).toEqual(['unstage', 'stage', 'stage', null]);
  });

  it('names status codes in words', () => {
    expect(statusLabel('M')).toBe('modified');
    expect(statusLabel('R087')).toBe('renamed');
    expect(statusLabel('??')).toBe('untracked');
    expect(statusLabel('type_changed')).toBe('type changed');
    expect(statusLabel('')).toBe('changed');
  });

  it('counts the files for the title', () => {
    expect(countsText(status())).toBe('2 staged · 2 changed · 1 untracked');
    expect(countsText(readStatus({}))).toBe('nothing to commit, working tree clean');
  });

  it('asks before discarding', () => {
    expect(discardQuestion(['a.py'])).toBe('Discard the changes to a.py? This cannot be undone.');
    expect(discardQuestion(['a.py', 'b.py'])).toMatch(/^Discard the changes to 2 files\?/);
  });
});

describe('branch line', () => {
  it('shows the branch, ahead/behind and what is in progress', () => {
    expect(branchLine(status())).toEqual({
      branch: 'main',
      tracking: '↑2 ↓1 origin/main',
      state: null
    });
    expect(branchLine(status({ ahead: 0, behind: 0 })).tracking).toBe('up to date with origin/main');
    expect(branchLine(status({ upstream: null })).tracking).toBe('no upstream');
    expect(branchLine(status({ state: 'merging' })).state).toBe('merge in progress');
    expect(branchLine(status({ detached: true, branch: null, upstream: null }))).toEqual({
      branch: 'detached at 1a2b3c4',
      tracking: '',
      state: null
    });
    expect(branchLine(status({ head: null, upstream: null })).branch).toBe('main (no commits yet)');
    expect(stateText('REBASE')).toBe('rebase in progress');
    expect(stateText('am')).toBe('am in progress');
    expect(stateText('clean')).toBeNull();
  });
});

describe('commit box', () => {
  const base = {
    message: 'feat: add mean',
    stagedCount: 1,
    conflictedCount: 0,
    amend: false,
    hasHead: true,
    busy: false
  };

  it('enables Commit only with a message and staged changes', () => {
    expect(commitEnablement(base).enabled).toBe(true);
    expect(commitEnablement({ ...base, message: '  \n ' })).toEqual({
      enabled: false,
      reason: 'Write a commit message (or draft one)'
    });
    expect(commitEnablement({ ...base, stagedCount: 0 })).toEqual({
      enabled: false,
      reason: 'Nothing is staged: stage files with + first'
    });
    expect(commitEnablement({ ...base, busy: true }).enabled).toBe(false);
    expect(commitEnablement({ ...base, conflictedCount: 1 }).reason).toMatch(/conflicted/);
    // amending may reword the last commit without staged changes, but needs a commit
    expect(commitEnablement({ ...base, stagedCount: 0, amend: true }).enabled).toBe(true);
    expect(commitEnablement({ ...base, amend: true, hasHead: false }).enabled).toBe(false);
  });

  it('lets Draft ask even with nothing staged (the server explains)', () => {
    expect(draftEnablement(0, false).enabled).toBe(true);
    expect(draftEnablement(0, false).reason).toMatch(/Nothing is staged/);
    expect(draftEnablement(2, true).enabled).toBe(false);
  });

  it('warns about a long summary and a missing blank line, without blocking', () => {
    const long = 'x'.repeat(SUMMARY_MAX + 1);
    expect(checkMessage(long)).toEqual({
      empty: false,
      summary: long,
      warnings: ['The summary line has 73 characters; keep it to 72 or fewer.']
    });
    expect(checkMessage('x'.repeat(SUMMARY_MAX)).warnings).toEqual([]);
    expect(checkMessage('feat: x\nbody right below').warnings).toEqual([
      'Leave a blank line between the summary and the body.'
    ]);
    expect(checkMessage('\n\nfeat: x  \n\nbody').summary).toBe('feat: x');
    expect(checkMessage(' \n\t').empty).toBe(true);
    expect(commitEnablement({ ...base, message: long }).enabled).toBe(true);
  });

  it('cleans the message as git does for -m', () => {
    expect(cleanMessage('\r\n\r\nfeat: x \r\n\r\n\r\nbody\t\n\n')).toBe('feat: x\n\nbody');
    expect(cleanMessage('# keep: not an editor\n')).toBe('# keep: not an editor');
  });

  it('says who wrote the draft, or that it is a fallback', () => {
    const draft = readDraft({ output: 'feat: x', model: 'tiny', latency_ms: 2500 });
    expect(draftInfoText(draft)).toBe('drafted by tiny in 2.5 s — edit it before committing');
    expect(draftInfoText({ ...draft, latencyMs: 80 })).toBe(
      'drafted by tiny in 80 ms — edit it before committing'
    );
    expect(draftInfoText({ ...draft, fallback: 'summary was empty' })).toBe(
      'fallback: summary was empty — edit it before committing'
    );
    expect(commitDoneText({ sha: 'abcdef0123', short: 'abcdef0', summary: 'feat: x' }, false)).toBe(
      'Committed abcdef0: feat: x'
    );
    expect(commitDoneText({ sha: 'a', short: 'a', summary: 's' }, true)).toBe('Amended a: s');
  });
});

describe('git error texts', () => {
  it('makes an empty staged diff a clear "nothing staged"', () => {
    const byMessage = errorOf(400, envelopeError('invalid_request', 'nothing is staged: the staged diff is empty'));
    const byCode = errorOf(400, envelopeError('nothing_staged', 'empty'));
    expect(isNothingStaged(byMessage)).toBe(true);
    expect(isNothingStaged(byCode)).toBe(true);
    expect(gitErrorText(byMessage, 'commit-message')).toBe(
      'Nothing is staged: stage files with + first, then draft a message.'
    );
    expect(gitErrorText(byCode, 'commit')).toBe('Nothing is staged: stage files with + first, then commit.');
    expect(shouldNotify(byMessage)).toBe(false);
    const other = errorOf(400, envelopeError('invalid_request', 'files must be a list', 'files'));
    expect(isNothingStaged(other)).toBe(false);
    expect(gitErrorText(other, 'add')).toBe('Invalid request (files): files must be a list');
    expect(shouldNotify(other)).toBe(true);
  });

  it('says what to do on a 409, keeping the server advice when it gives some', () => {
    const bare = errorOf(409, envelopeError('conflict', 'your local changes would be overwritten'));
    expect(gitErrorText(bare, 'switch')).toBe(
      'Conflict: your local changes would be overwritten Commit or stash your changes, then switch again.'
    );
    const advised = errorOf(
      409,
      envelopeError('conflict', 'a merge is in progress: resolve the conflicts, then commit')
    );
    expect(gitErrorText(advised, 'commit')).toBe(
      'Conflict: a merge is in progress: resolve the conflicts, then commit'
    );
    expect(gitErrorText(bare, 'push')).toMatch(/Resolve it, then refresh\.$/);
    expect(shouldNotify(bare)).toBe(false);
  });

  it('explains 403, 404, 503 and network failures', () => {
    expect(gitErrorText(errorOf(404, envelopeError('not_found', 'not a git repository')), 'status', 'proj')).toBe(
      'Not a git repository: proj (not a git repository)'
    );
    expect(gitErrorText(errorOf(403, envelopeError('forbidden', 'outside the server root')), 'status')).toBe(
      'Refused: outside the server root'
    );
    const notReady = errorOf(503, envelopeError('model_not_ready', 'loading'));
    expect(gitErrorText(notReady, 'commit-message')).toBe(
      'The model is not ready: loading. Try again in a moment.'
    );
    expect(shouldNotify(notReady)).toBe(true);
    expect(gitErrorText(new TypeError('Failed to fetch'), 'status')).toBe('git status failed: Failed to fetch');
    // what the API client rejects with when no answer came
    const offline = new ApiError('Failed to fetch', 0, 'network_error');
    expect(gitErrorText(offline, 'status')).toBe('git status failed: Failed to fetch');
    expect(shouldNotify(offline)).toBe(true);
    expect(tryParentAfter(offline)).toBe(false);
    expect(shouldNotify(new TypeError('Failed to fetch'))).toBe(true);
    expect(gitErrorText(errorOf(500, envelopeError('internal', 'boom')), 'commit')).toBe(
      'git commit failed: boom'
    );
  });
});

describe('relative dates', () => {
  const now = Date.parse('2024-05-10T12:00:00Z');
  it('reads recent dates relative to now, older ones as dates', () => {
    expect(relativeDate('2024-05-10T11:59:30Z', now)).toBe('just now');
    expect(relativeDate('2024-05-10T11:55:00Z', now)).toBe('5 min ago');
    expect(relativeDate('2024-05-10T09:00:00+00:00', now)).toBe('3 h ago');
    expect(relativeDate('2024-05-09T12:00:00Z', now)).toBe('1 day ago');
    expect(relativeDate('2024-04-01T12:00:00Z', now)).toBe('2024-04-01');
    expect(relativeDate('not a date', now)).toBe('not a date');
  });
});

/**
 * Every panel talks to the server through the one API client (src/api.ts): the same URLs
 * under the base URL, the token, the envelope read and the errors typed as `ApiError`.
 * The widget libraries need a DOM, which these node tests do not have: they are replaced
 * by empty stand-ins, the requests themselves are real (`ServerConnection` with a fake
 * fetch).
 */
import { describe, expect, it, vi } from 'vitest';

vi.mock('@lumino/widgets', () => {
  class Widget {
    node: any = { dataset: {}, textContent: '', title: '' };
    isDisposed = false;
    addClass(): void {
      // nothing to style without a DOM
    }
    dispose(): void {
      this.isDisposed = true;
    }
  }
  class Panel extends Widget {}
  return { Widget, Panel };
});
vi.mock('@jupyterlab/apputils', () => ({
  Clipboard: {},
  Dialog: {},
  Notification: {},
  showDialog: async () => ({ button: { accept: false } })
}));
vi.mock('@jupyterlab/rendermime', () => ({ MimeModel: class {} }));

import { ApiError } from '../src/api';
import { streamExplain } from '../src/explain';
import { GitClient } from '../src/git';
import { ExplainEvent } from '../src/ndjson';
import { DsStatus } from '../src/status';
import { insertTests, streamTests } from '../src/testgen';
import { TestsEvent } from '../src/testgenModel';
import { BASE, fakeServer, json } from './fakeServer';

const ok = (data: unknown): Response => json(200, { status: 'success', data, timestamp: 1 });
const API = `${BASE}jupyter-ds/v1/`;

/** Each src file's text, for the check that no other module sends requests. */
const SOURCES: Record<string, string> = (import.meta as any).glob('../src/*.ts', {
  query: '?raw',
  import: 'default',
  eager: true
});

describe('one API client', () => {
  it('is the only module that builds server URLs or sends requests', () => {
    const names = Object.keys(SOURCES);
    expect(names).toContain('../src/api.ts');
    expect(names.length).toBeGreaterThan(10);
    const offenders = names.filter(
      name => name !== '../src/api.ts' && /makeRequest|URLExt\.join|\bfetch\(\s*['"`]/.test(SOURCES[name])
    );
    expect(offenders).toEqual([]);
  });
});

describe('Explain', () => {
  it('POSTs the code to explain with stream: true and feeds the events', async () => {
    const lines = [
      { type: 'stream', text: 'Adds', done: false },
      { status: 'success', data: { text: 'Adds two numbers.' } }
    ];
    const server = fakeServer(
      () => new Response(lines.map(l => JSON.stringify(l)).join('\n') + '\n', { status: 200 })
    );
    const events: ExplainEvent[] = [];
    await streamExplain(
      { code: 'a + b', language: 'python', source: 'selection' },
      new AbortController().signal,
      e => events.push(e),
      server.settings
    );
    expect(server.calls[0]).toMatchObject({
      method: 'POST',
      url: `${API}explain`,
      body: { code: 'a + b', language: 'python', stream: true }
    });
    expect(server.calls[0].headers['authorization']).toBe('token secret');
    expect(events.map(e => e.kind)).toEqual(['text', 'done']);
  });

  it('rejects a refused request with the server\'s message (shown as "Explain failed: …")', async () => {
    const server = fakeServer(() =>
      json(
        503,
        { status: 'error', error: { code: 'model_not_ready', message: 'the model is loading' } },
        { 'Retry-After': '5' }
      )
    );
    const failure = streamExplain(
      { code: 'x', language: 'python', source: 'cell' },
      new AbortController().signal,
      () => undefined,
      server.settings
    );
    await expect(failure).rejects.toBeInstanceOf(ApiError);
    await expect(failure).rejects.toMatchObject({
      status: 503,
      code: 'model_not_ready',
      message: 'the model is loading',
      retryAfter: 5
    });
  });
});

describe('Generate tests', () => {
  it('POSTs the request to tests and feeds the events', async () => {
    const server = fakeServer(
      () =>
        new Response(
          JSON.stringify({ status: 'error', error: { code: 'timeout', message: 'too slow' } }) + '\n',
          { status: 200 }
        )
    );
    const events: TestsEvent[] = [];
    await streamTests(
      { source: 'def f(): pass', target: 'f', stream: true } as any,
      new AbortController().signal,
      e => events.push(e),
      server.settings
    );
    expect(server.calls[0]).toMatchObject({
      method: 'POST',
      url: `${API}tests`,
      body: { source: 'def f(): pass', target: 'f', stream: true }
    });
    // an error the stream reports in its last line stays an event
    expect(events).toEqual([{ kind: 'error', code: 'timeout', message: 'too slow' }]);
  });

  it('inserts the kept tests and reads where they went', async () => {
    const server = fakeServer(() => ok({ test_path: 'tests/test_stats.py', created: false, added: 1 }));
    const body = { path: 'stats.py', tests: ['def test_mean(): pass'], imports: [] };
    expect(await insertTests(body, server.settings)).toEqual({
      test_path: 'tests/test_stats.py',
      created: false,
      added: 1
    });
    expect(server.calls[0]).toMatchObject({ method: 'POST', url: `${API}tests/insert`, body });
  });

  it('rejects a refused insert with the envelope\'s message and code', async () => {
    const server = fakeServer(() =>
      json(400, { status: 'error', error: { code: 'invalid_request', message: 'bad path', field: 'path' } })
    );
    await expect(
      insertTests({ path: '../x.py', tests: ['def test_x(): pass'], imports: [] }, server.settings)
    ).rejects.toMatchObject({ status: 400, code: 'invalid_request', message: 'bad path', field: 'path' });
  });
});

describe('Git', () => {
  it('sends every verb through the client, with the same URLs and bodies', async () => {
    const server = fakeServer(call => {
      if (call.url.includes('/git/commit-message')) {
        return ok({ output: 'feat: x', summary: 'feat: x', model: 'm' });
      }
      if (call.url.includes('/git/commit')) {
        return ok({ sha: 'abcdef0123', summary: 'feat: x' });
      }
      if (call.url.includes('/git/branches')) {
        return ok({ current: 'main', local: ['main', 'dev'], remote: [] });
      }
      if (call.url.includes('/git/log')) {
        return ok({ commits: [], has_more: false });
      }
      if (call.url.includes('/git/diff')) {
        return ok({ files: [], text: '+x' });
      }
      return ok({ branch: 'main', staged: [], unstaged: [], untracked: [], conflicted: [] });
    });
    const git = new GitClient(server.settings);
    expect((await git.status('my repo')).branch).toBe('main');
    await git.log('r', 10);
    expect((await git.diff('r', 'a&b.py', true)).text).toBe('+x');
    await git.change('add', 'r', ['a.py', 'a.py']);
    expect((await git.commit('r', 'feat: x', false)).short).toBe('abcdef0');
    expect((await git.draft('r')).message).toContain('feat: x');
    expect((await git.branches('r')).local).toEqual(['main', 'dev']);
    await git.switchTo('r', 'dev');
    expect(server.calls.map(c => `${c.method} ${c.url.slice(API.length)}`)).toEqual([
      'GET git/status?path=my%20repo',
      'GET git/log?path=r&skip=10&limit=10',
      'GET git/diff?path=r&staged=true&file=a%26b.py',
      'POST git/add',
      'POST git/commit',
      'POST git/commit-message',
      'GET git/branches?path=r',
      'POST git/switch'
    ]);
    expect(server.calls[3].body).toEqual({ path: 'r', files: ['a.py'] });
    expect(server.calls[7].body).toEqual({ path: 'r', name: 'dev' });
    expect(server.calls.every(c => c.headers['authorization'] === 'token secret')).toBe(true);
  });

  it('rejects a conflict as an ApiError with the status the panel checks', async () => {
    const server = fakeServer(() =>
      json(409, { status: 'error', error: { code: 'conflict', message: 'a merge is in progress' } })
    );
    await expect(new GitClient(server.settings).commit('r', 'x', false)).rejects.toMatchObject({
      status: 409,
      code: 'conflict',
      message: 'a merge is in progress'
    });
  });
});

describe('status bar', () => {
  it('polls health through the client', async () => {
    const server = fakeServer(() => ok({ ready: true, model_state: 'ready', model: 'smollm2' }));
    const status = new DsStatus(server.settings);
    status.start();
    await vi.waitFor(() => expect(status.health.state).toBe('ready'));
    status.dispose();
    expect(status.health.model).toBe('smollm2');
    expect(server.calls[0]).toMatchObject({ method: 'GET', url: `${API}health` });
  });

  it('shows offline when the server does not answer', async () => {
    const server = fakeServer(() => {
      throw new TypeError('Failed to fetch');
    });
    const status = new DsStatus(server.settings);
    status.start();
    await vi.waitFor(() => expect(status.health.state).toBe('offline'));
    status.dispose();
  });
});

import { describe, expect, it } from 'vitest';
import { ServerConnection } from '@jupyterlab/services';

import {
  ABORTED,
  ApiError,
  apiUrl,
  apiWsUrl,
  buildWsUrl,
  NETWORK_ERROR,
  parseRetryAfter,
  queryString,
  readEnvelope,
  request,
  requestStream,
  sendTelemetry,
  socketCallerSettings
} from '../src/api';
import { parseExplainLine } from '../src/ndjson';
import { fakeServer, json, BASE } from './fakeServer';

function errorOf(fn: () => unknown): ApiError {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(ApiError);
    return error as ApiError;
  }
  throw new Error('no error thrown');
}

async function rejection(promise: Promise<unknown>): Promise<ApiError> {
  try {
    await promise;
  } catch (error) {
    expect(error).toBeInstanceOf(ApiError);
    return error as ApiError;
  }
  throw new Error('no error thrown');
}

describe('URLs', () => {
  const settings = ServerConnection.makeSettings({
    baseUrl: 'http://localhost:8888/user/alice/',
    wsUrl: 'ws://localhost:8888/user/alice/',
    token: 'tok en',
    appendToken: true
  });

  it('puts every path under the base URL and jupyter-ds/v1/', () => {
    expect(apiUrl('explain', {}, settings)).toBe('http://localhost:8888/user/alice/jupyter-ds/v1/explain');
    expect(apiUrl('/tests/insert', undefined, settings)).toBe(
      'http://localhost:8888/user/alice/jupyter-ds/v1/tests/insert'
    );
    expect(apiUrl('git/diff', { path: 'my repo/ä', staged: true, file: 'a&b.py' }, settings)).toBe(
      'http://localhost:8888/user/alice/jupyter-ds/v1/git/diff?path=my%20repo%2F%C3%A4&staged=true&file=a%26b.py'
    );
  });

  it('leaves null and undefined query values out, keeps empty strings and zeros', () => {
    expect(queryString({ a: null, b: undefined, c: 0, d: '', e: false })).toBe('c=0&d=&e=false');
    expect(queryString()).toBe('');
  });

  it('builds the completion socket URL from the server wsUrl, with the token when asked', () => {
    expect(buildWsUrl('ws://host:8888/user/alice/', 'tok en', true)).toBe(
      'ws://host:8888/user/alice/jupyter-ds/v1/complete/stream?token=tok%20en'
    );
    expect(buildWsUrl('wss://hub.example/user/bob', 'secret', false)).toBe(
      'wss://hub.example/user/bob/jupyter-ds/v1/complete/stream'
    );
    expect(apiWsUrl(undefined, settings)).toBe(
      'ws://localhost:8888/user/alice/jupyter-ds/v1/complete/stream?token=tok%20en'
    );
  });
});

describe('readEnvelope', () => {
  it('gives the data of a success envelope, and JSON that is no envelope as it is', () => {
    expect(readEnvelope(200, { status: 'success', data: { a: 1 }, timestamp: 1 })).toEqual({ a: 1 });
    expect(readEnvelope(200, { a: 1 })).toEqual({ a: 1 });
    expect(readEnvelope(200, null)).toBeNull();
  });

  it('turns an error envelope into an ApiError with status, code, message, field', () => {
    const error = errorOf(() =>
      readEnvelope(409, {
        status: 'error',
        error: { code: 'conflict', message: 'a merge is in progress', field: 'path' }
      })
    );
    expect(error).toMatchObject({
      name: 'ApiError',
      status: 409,
      code: 'conflict',
      message: 'a merge is in progress',
      field: 'path',
      retryAfter: null,
      aborted: false
    });
    // an error envelope is an error whatever the status says
    expect(errorOf(() => readEnvelope(200, { status: 'error', error: { code: 'x', message: 'y' } })))
      .toMatchObject({ status: 200, code: 'x', message: 'y' });
  });

  it('makes an error from the status when the failed answer is no envelope', () => {
    expect(errorOf(() => readEnvelope(502, null))).toMatchObject({
      status: 502,
      code: 'http_502',
      message: 'HTTP 502'
    });
    expect(errorOf(() => readEnvelope(500, null, 'Internal Server Error')).message).toBe(
      'Internal Server Error'
    );
  });

  it('takes retryAfter from the header, else from the envelope', () => {
    const body = {
      status: 'error',
      error: { code: 'rate_limited', message: 'slow down', retry_after: 7 }
    };
    expect(errorOf(() => readEnvelope(429, body, '', 3)).retryAfter).toBe(3);
    expect(errorOf(() => readEnvelope(429, body)).retryAfter).toBe(7);
  });

  it('reads Retry-After in seconds or as an HTTP date', () => {
    const now = Date.parse('2025-01-01T00:00:00Z');
    expect(parseRetryAfter('5', now)).toBe(5);
    expect(parseRetryAfter(' 0 ', now)).toBe(0);
    expect(parseRetryAfter('Wed, 01 Jan 2025 00:00:10 GMT', now)).toBe(10);
    expect(parseRetryAfter('Tue, 31 Dec 2024 23:00:00 GMT', now)).toBe(0);
    expect(parseRetryAfter('soon', now)).toBeNull();
    expect(parseRetryAfter(null, now)).toBeNull();
  });
});

describe('request', () => {
  it('sends JSON with the token and resolves to the envelope data', async () => {
    const server = fakeServer(() => json(200, { status: 'success', data: { test_path: 't.py' } }));
    const data = await request<{ test_path: string }>('tests/insert', {
      method: 'POST',
      body: { path: 'a.py', tests: ['def test_x(): pass'] },
      settings: server.settings
    });
    expect(data.test_path).toBe('t.py');
    expect(server.calls).toHaveLength(1);
    const call = server.calls[0];
    expect(call.method).toBe('POST');
    expect(call.url).toBe(`${BASE}jupyter-ds/v1/tests/insert`);
    expect(call.headers['authorization']).toBe('token secret');
    expect(call.headers['content-type']).toBe('application/json');
    expect(call.body).toEqual({ path: 'a.py', tests: ['def test_x(): pass'] });
  });

  it('GETs with the query and no body by default', async () => {
    const server = fakeServer(() => json(200, { status: 'success', data: { ready: true } }));
    await request('git/status', { query: { path: '' }, settings: server.settings });
    expect(server.calls[0]).toMatchObject({
      method: 'GET',
      url: `${BASE}jupyter-ds/v1/git/status?path=`,
      body: null
    });
  });

  it('resolves to null for an empty success answer', async () => {
    const server = fakeServer(() => new Response('', { status: 200 }));
    expect(await request('git/switch', { method: 'POST', body: {}, settings: server.settings })).toBeNull();
  });

  it('rejects an error envelope with its status, code, message and Retry-After', async () => {
    const server = fakeServer(() =>
      json(
        429,
        { status: 'error', error: { code: 'rate_limited', message: 'rate limit exceeded' } },
        { 'Retry-After': '12' }
      )
    );
    const error = await rejection(request('health', { settings: server.settings }));
    expect(error).toMatchObject({
      status: 429,
      code: 'rate_limited',
      message: 'rate limit exceeded',
      retryAfter: 12
    });
  });

  it('rejects a 503 with Retry-After as model_not_ready', async () => {
    const server = fakeServer(() =>
      json(
        503,
        { status: 'error', error: { code: 'model_not_ready', message: 'loading', retry_after: 5 } },
        { 'Retry-After': '5' }
      )
    );
    const error = await rejection(request('explain', { method: 'POST', body: {}, settings: server.settings }));
    expect(error).toMatchObject({ status: 503, code: 'model_not_ready', retryAfter: 5 });
  });

  it('rejects a failed answer that is not JSON (a proxy page) by its status', async () => {
    const server = fakeServer(
      () => new Response('<html>Bad Gateway</html>', { status: 502, statusText: 'Bad Gateway' })
    );
    const error = await rejection(request('health', { settings: server.settings }));
    expect(error).toMatchObject({ status: 502, code: 'http_502', message: 'Bad Gateway', retryAfter: null });
  });

  it('rejects a success status whose body is not JSON', async () => {
    const server = fakeServer(() => new Response('<html>login</html>', { status: 200 }));
    const error = await rejection(request('health', { settings: server.settings }));
    expect(error).toMatchObject({ status: 200, code: 'invalid_response' });
  });

  it('rejects a network error as status 0, network_error, with the original message', async () => {
    const server = fakeServer(() => {
      throw new TypeError('Failed to fetch');
    });
    const error = await rejection(request('health', { settings: server.settings }));
    expect(error).toMatchObject({ status: 0, code: NETWORK_ERROR, message: 'Failed to fetch' });
  });

  it('passes the signal on and rejects as aborted when it fires', async () => {
    const server = fakeServer(() => new Promise<Response>(() => undefined)); // never answers
    const controller = new AbortController();
    const pending = request('tests/insert', {
      method: 'POST',
      body: {},
      signal: controller.signal,
      settings: server.settings
    });
    await server.received(1);
    expect(server.calls[0].signal?.aborted).toBe(false);
    controller.abort();
    const error = await rejection(pending);
    expect(error).toMatchObject({ status: 0, code: ABORTED, aborted: true });
    expect(server.calls[0].signal?.aborted).toBe(true);
  });

  it('rejects at once when the signal has fired already', async () => {
    const server = fakeServer(() => json(200, { status: 'success', data: {} }));
    const controller = new AbortController();
    controller.abort();
    const error = await rejection(request('health', { signal: controller.signal, settings: server.settings }));
    expect(error.aborted).toBe(true);
  });
});

describe('requestStream', () => {
  const lines = [
    { type: 'stream', text: 'A', done: false },
    { type: 'stream', text: 'A list', done: false },
    { status: 'success', data: { text: 'A list.', output: 'A list.' } }
  ];

  it('feeds each NDJSON line to onEvent as it arrives, across chunk borders', async () => {
    const text = lines.map(l => JSON.stringify(l)).join('\n') + '\n';
    const server = fakeServer(() => new Response(chunked(text, 5), { status: 200 }));
    const events: unknown[] = [];
    await requestStream(
      'explain',
      { method: 'POST', body: { code: 'x', stream: true }, settings: server.settings },
      parseExplainLine,
      event => events.push(event)
    );
    expect(events).toEqual([
      { kind: 'text', text: 'A' },
      { kind: 'text', text: 'A list' },
      { kind: 'done', text: 'A list.', data: { text: 'A list.', output: 'A list.' } }
    ]);
    expect(server.calls[0]).toMatchObject({
      method: 'POST',
      url: `${BASE}jupyter-ds/v1/explain`,
      body: { code: 'x', stream: true }
    });
  });

  it('rejects an HTTP error with the ApiError of its envelope, before any event', async () => {
    const server = fakeServer(() =>
      json(413, { status: 'error', error: { code: 'payload_too_large', message: 'too big', field: 'code' } })
    );
    const events: unknown[] = [];
    const error = await rejection(
      requestStream('explain', { method: 'POST', body: {}, settings: server.settings }, parseExplainLine, e =>
        events.push(e)
      )
    );
    expect(error).toMatchObject({ status: 413, code: 'payload_too_large', message: 'too big', field: 'code' });
    expect(events).toEqual([]);
  });

  it('rejects as aborted when the signal fires in the middle of the answer', async () => {
    const controller = new AbortController();
    const encoder = new TextEncoder();
    const server = fakeServer(
      () =>
        new Response(
          new ReadableStream<Uint8Array>({
            start(c) {
              c.enqueue(encoder.encode(JSON.stringify(lines[0]) + '\n'));
              // the rest never comes
            }
          }),
          { status: 200 }
        )
    );
    const events: unknown[] = [];
    const pending = requestStream(
      'explain',
      { method: 'POST', body: {}, signal: controller.signal, settings: server.settings },
      parseExplainLine,
      event => {
        events.push(event);
        controller.abort();
      }
    );
    const error = await rejection(pending);
    expect(error.aborted).toBe(true);
    expect(events).toEqual([{ kind: 'text', text: 'A' }]);
  });

  it('passes an error thrown by onEvent on as it is', async () => {
    const server = fakeServer(() => new Response(JSON.stringify(lines[0]) + '\n', { status: 200 }));
    const mine = new RangeError('mine');
    await expect(
      requestStream('explain', { method: 'POST', body: {}, settings: server.settings }, parseExplainLine, () => {
        throw mine;
      })
    ).rejects.toBe(mine);
  });
});

/** A body that arrives `size` bytes at a time. */
function chunked(text: string, size: number): ReadableStream<Uint8Array> {
  const bytes = new TextEncoder().encode(text);
  let at = 0;
  return new ReadableStream<Uint8Array>({
    pull(c) {
      if (at >= bytes.length) {
        c.close();
        return;
      }
      c.enqueue(bytes.slice(at, at + size));
      at += size;
    }
  });
}

/**
 * Who Jupyter's own identity provider takes a request for (jupyter_ds/identity.py): an
 * explicit token (`?token=` or `Authorization: token …`) names the `token-…` user;
 * without one, the login cookie names the browser session's user.
 */
function callerOf(url: string, headers: Record<string, string> = {}): string {
  const token =
    new URL(url).searchParams.get('token') ??
    (headers['authorization'] ?? '').replace(/^token\s+/i, '');
  return token ? `token:${token}` : 'login cookie';
}

describe('telemetry credentials', () => {
  const answer = () =>
    json(200, { status: 'success', data: { counted: 1, ignored: 0 }, timestamp: 1 });
  const events = [{ event: 'shown' as const, request_id: 'r1', client: 'jupyterlab' }];

  // The server counts an event only for the caller's own completion, remembered under
  // the user of the completion socket: telemetry must be sent as that same user.
  it.each([
    // A page and its server on one host, JupyterLab's usual case: the socket goes
    // without the token (the login cookie authenticates it), so must the telemetry.
    { appendToken: false, token: 'secret', caller: 'login cookie' },
    // Another host (or `appendToken` configured): the socket carries the token.
    { appendToken: true, token: 'secret', caller: 'token:secret' },
    // No token at all (a password login, JupyterHub): the cookie for both.
    { appendToken: false, token: '', caller: 'login cookie' },
    { appendToken: true, token: '', caller: 'login cookie' }
  ])(
    'reports as the completion socket’s caller (appendToken $appendToken, token "$token")',
    async ({ appendToken, token, caller }) => {
      const server = fakeServer(answer, { appendToken, token });
      expect(await sendTelemetry(events, server.settings)).toEqual({ counted: 1, ignored: 0 });
      const [call] = server.calls;
      expect(call).toMatchObject({ method: 'POST', url: `${BASE}jupyter-ds/v1/telemetry` });
      expect(call.body).toEqual({ events });
      const socket = apiWsUrl(undefined, server.settings);
      expect(callerOf(socket)).toBe(caller);
      expect(callerOf(call.url, call.headers)).toBe(callerOf(socket));
    }
  );

  it('leaves the other requests and the given settings as they were', async () => {
    const server = fakeServer(answer, { appendToken: false });
    expect(socketCallerSettings(server.settings)).not.toBe(server.settings);
    expect(socketCallerSettings(server.settings).token).toBe('');
    expect(server.settings.token).toBe('secret');
    await request('git/status', { settings: server.settings });
    expect(server.calls[0].headers['authorization']).toBe('token secret');
    const appended = fakeServer(answer, { appendToken: true });
    expect(socketCallerSettings(appended.settings)).toBe(appended.settings);
  });
});

/**
 * A jupyter_ds server for the tests: `ServerConnection` settings whose `fetch` records
 * each request (method, URL without JupyterLab's cache buster, headers, JSON body, signal)
 * and answers with `answer(call)`.
 */
import { ServerConnection } from '@jupyterlab/services';

export const BASE = 'http://localhost:8888/user/alice/';

export interface ICall {
  method: string;
  /** The URL as sent, without the `?<time>` / `&<time>` cache buster. */
  url: string;
  headers: Record<string, string>;
  /** The decoded JSON body; null when there was none. */
  body: any;
  signal: AbortSignal | null;
}

export interface IFakeServer {
  settings: ServerConnection.ISettings;
  calls: ICall[];
  /** Resolves once `n` requests came in. */
  received(n: number): Promise<void>;
}

export interface IFakeServerOptions {
  /** `ServerConnection`'s `appendToken` (default true, as under node). */
  appendToken?: boolean;
  /** The page's token (default `secret`; '' for none). */
  token?: string;
}

export function fakeServer(
  answer: (call: ICall) => Response | Promise<Response>,
  options: IFakeServerOptions = {}
): IFakeServer {
  const calls: ICall[] = [];
  const fetch = async (input: RequestInfo | URL): Promise<Response> => {
    const req = input as Request;
    const text = await req.text();
    const headers: Record<string, string> = {};
    req.headers.forEach((value, key) => {
      headers[key.toLowerCase()] = value;
    });
    const call: ICall = {
      method: req.method,
      url: req.url.replace(/[?&]\d{10,}$/, ''),
      headers,
      body: text ? JSON.parse(text) : null,
      signal: req.signal ?? null
    };
    calls.push(call);
    const answered = Promise.resolve(answer(call));
    const signal = req.signal;
    if (!signal) {
      return answered;
    }
    // A real fetch rejects with an AbortError as soon as its signal fires.
    return new Promise<Response>((resolve, reject) => {
      const abort = (): void => reject(new DOMException('This operation was aborted', 'AbortError'));
      if (signal.aborted) {
        abort();
        return;
      }
      signal.addEventListener('abort', abort);
      answered.then(response => resolve(abortable(response, signal)), reject);
    });
  };
  const settings = ServerConnection.makeSettings({
    baseUrl: BASE,
    wsUrl: BASE.replace(/^http/, 'ws'),
    token: options.token ?? 'secret',
    appendToken: options.appendToken ?? true,
    fetch: fetch as typeof globalThis.fetch
  });
  return {
    settings,
    calls,
    async received(n: number): Promise<void> {
      for (let i = 0; i < 200 && calls.length < n; i++) {
        await new Promise(resolve => setTimeout(resolve, 1));
      }
      if (calls.length < n) {
        throw new Error(`only ${calls.length} of ${n} requests came in`);
      }
    }
  };
}

/** The answer with a body that fails with an AbortError when `signal` fires, as fetch's. */
function abortable(response: Response, signal: AbortSignal): Response {
  if (!response.body) {
    return response;
  }
  const reader = response.body.getReader();
  const body = new ReadableStream<Uint8Array>({
    start(controller) {
      signal.addEventListener('abort', () => {
        controller.error(new DOMException('This operation was aborted', 'AbortError'));
        reader.cancel().catch(() => undefined);
      });
    },
    async pull(controller) {
      const { done, value } = await reader.read();
      if (done) {
        controller.close();
      } else {
        controller.enqueue(value);
      }
    }
  });
  return new Response(body, {
    status: response.status,
    statusText: response.statusText,
    headers: response.headers
  });
}

/** A JSON answer. */
export function json(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { 'Content-Type': 'application/json', ...headers }
  });
}

/**
 * The one client of the jupyter_ds server API: every panel's HTTP request goes through
 * `request` (one JSON answer) or `requestStream` (an NDJSON answer, line by line), and the
 * completion socket's URL comes from `apiWsUrl`.
 *
 * - URLs: the server's base URL + `jupyter-ds/v1/` + the path (+ the query), as
 *   `ServerConnection` knows them (JupyterHub prefixes included).
 * - Credentials: `ServerConnection.makeRequest` sends the token (`Authorization: token …`)
 *   and the XSRF cookie header of the settings, as JupyterLab's own requests do; but
 *   telemetry about the socket's completions authenticates as the socket does
 *   (`socketCallerSettings`), or the server takes it for another user's.
 * - Answers: the envelope (`{status: "success", data}` / `{status: "error", error: {code,
 *   message}}`, docs/openapi.yaml) is unwrapped; `request<T>` resolves to `data`.
 * - Failures: an error envelope, an HTTP error without one (a proxy's HTML page), a network
 *   error and an abort all reject with one `ApiError` carrying `status` (0 when no answer
 *   came), `code`, `message`, `retryAfter` (seconds, from `Retry-After`) and `field`.
 *
 * No DOM: it runs under node with a `fetch` given in the settings.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { readNdjsonLines } from './ndjson';

/** Every path of the server's API is under this, below the server's base URL. */
export const API_PREFIX = 'jupyter-ds/v1/';

/** The path of the completion socket, under `API_PREFIX`. */
export const COMPLETION_SOCKET = 'complete/stream';

/** `ApiError.code` of a request stopped by its `AbortSignal`. */
export const ABORTED = 'aborted';
/** `ApiError.code` of a request that got no answer (server down, connection lost). */
export const NETWORK_ERROR = 'network_error';
/** `ApiError.code` of a successful status whose body is not JSON. */
export const INVALID_RESPONSE = 'invalid_response';

/** Query parameters; `null` and `undefined` ones are left out. */
export type ApiQuery = Record<string, string | number | boolean | null | undefined>;

export type ApiMethod = 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';

export interface IRequestOptions {
  /** Default `GET`. */
  method?: ApiMethod;
  /** Sent as JSON (`Content-Type: application/json`) when given. */
  body?: unknown;
  query?: ApiQuery;
  signal?: AbortSignal;
  /** The server to talk to; default `ServerConnection.makeSettings()` (this page's). */
  settings?: ServerConnection.ISettings;
}

export interface IApiErrorOptions {
  retryAfter?: number | null;
  field?: string | null;
}

/** Every failure of a request to the server API. */
export class ApiError extends Error {
  /**
   * @param status the HTTP status; 0 when no answer came (network error, aborted)
   * @param code the envelope's error code, else `http_<status>`, `network_error`,
   *   `aborted` or `invalid_response`
   */
  constructor(
    message: string,
    readonly status: number,
    readonly code: string,
    options: IApiErrorOptions = {}
  ) {
    super(message);
    this.name = 'ApiError';
    this.retryAfter = options.retryAfter ?? null;
    this.field = options.field ?? null;
  }

  /** Seconds to wait before trying again (`Retry-After` of a 429/503), else null. */
  readonly retryAfter: number | null;
  /** The request field the server named as wrong (400/413), else null. */
  readonly field: string | null;

  /** Whether the request was stopped by its signal (nothing to show to the user). */
  get aborted(): boolean {
    return this.code === ABORTED;
  }
}

function obj(value: unknown): Record<string, unknown> {
  return value && typeof value === 'object' && !Array.isArray(value)
    ? (value as Record<string, unknown>)
    : {};
}

function str(value: unknown): string {
  return typeof value === 'string' ? value : '';
}

/** `a=1&b=x%20y` (null and undefined values left out), '' when nothing is left. */
export function queryString(query: ApiQuery = {}): string {
  return Object.entries(query)
    .filter(([, value]) => value !== null && value !== undefined)
    .map(([key, value]) => `${encodeURIComponent(key)}=${encodeURIComponent(String(value))}`)
    .join('&');
}

/** The full URL of an API path: base URL + `jupyter-ds/v1/` + path (+ `?query`). */
export function apiUrl(
  path: string,
  query: ApiQuery = {},
  settings: ServerConnection.ISettings = ServerConnection.makeSettings()
): string {
  const url = URLExt.join(settings.baseUrl, API_PREFIX, path.replace(/^\/+/, ''));
  const qs = queryString(query);
  return qs ? `${url}?${qs}` : url;
}

/**
 * The URL of an API socket from the server's `wsUrl` (base URL included), with the token
 * as a query parameter when the settings say to append it (browsers cannot send headers
 * on a WebSocket upgrade; otherwise the login cookie authenticates it).
 */
export function buildWsUrl(
  wsUrl: string,
  token: string,
  appendToken: boolean,
  path: string = COMPLETION_SOCKET
): string {
  const base = wsUrl.endsWith('/') ? wsUrl : wsUrl + '/';
  let url = base + API_PREFIX + path.replace(/^\/+/, '');
  if (appendToken && token) {
    url += `?token=${encodeURIComponent(token)}`;
  }
  return url;
}

/** `buildWsUrl` for the settings of a server. */
export function apiWsUrl(
  path: string = COMPLETION_SOCKET,
  settings: ServerConnection.ISettings = ServerConnection.makeSettings()
): string {
  return buildWsUrl(settings.wsUrl, settings.token, settings.appendToken, path);
}

/**
 * `Retry-After` in seconds: a number of seconds, or an HTTP date (seconds from `now`,
 * rounded up, never negative); null when absent or unreadable.
 */
export function parseRetryAfter(
  header: string | null | undefined,
  now: number = Date.now()
): number | null {
  const value = (header ?? '').trim();
  if (!value) {
    return null;
  }
  if (/^\d+$/.test(value)) {
    return Number(value);
  }
  const at = Date.parse(value);
  return Number.isFinite(at) ? Math.max(0, Math.ceil((at - now) / 1000)) : null;
}

/**
 * The `data` of an answer, given its HTTP status and its decoded JSON body (null when
 * empty or not JSON). A success envelope gives its `data`; JSON that is no envelope
 * passes through as it is. An error envelope, or any status outside 2xx, throws an
 * `ApiError`: the envelope's code and message, else `http_<status>` and the status text;
 * `retryAfter` from the header (given here), else from the envelope's `retry_after`.
 */
export function readEnvelope<T = unknown>(
  status: number,
  body: unknown,
  statusText = '',
  retryAfter: number | null = null
): T {
  const msg = obj(body);
  if (msg.status === 'error' || status < 200 || status > 299) {
    const error = obj(msg.error);
    const message =
      str(error.message) || statusText || (status ? `HTTP ${status}` : 'request failed');
    const sentRetry = error.retry_after;
    throw new ApiError(message, status, str(error.code) || `http_${status}`, {
      retryAfter:
        retryAfter ??
        (typeof sentRetry === 'number' && Number.isFinite(sentRetry) ? sentRetry : null),
      field: typeof error.field === 'string' ? error.field : null
    });
  }
  return (msg.status === 'success' ? msg.data : body) as T;
}

function isAbortError(error: unknown): boolean {
  return Boolean(error && typeof error === 'object' && (error as Error).name === 'AbortError');
}

/** A failure to get (or read) an answer as an `ApiError`: aborted, else network. */
function transportError(error: unknown, signal?: AbortSignal): ApiError {
  if (error instanceof ApiError) {
    return error;
  }
  if (signal?.aborted || isAbortError(error)) {
    return new ApiError('the request was aborted', 0, ABORTED);
  }
  const message = error instanceof Error && error.message ? error.message : 'Network Error';
  return new ApiError(message, 0, NETWORK_ERROR);
}

async function send(path: string, options: IRequestOptions): Promise<Response> {
  const settings = options.settings ?? ServerConnection.makeSettings();
  const init: RequestInit = { method: options.method ?? 'GET' };
  if (options.body !== undefined) {
    init.body = JSON.stringify(options.body);
    init.headers = { 'Content-Type': 'application/json' };
  }
  if (options.signal) {
    init.signal = options.signal;
  }
  try {
    return await ServerConnection.makeRequest(
      apiUrl(path, options.query, settings),
      init,
      settings
    );
  } catch (error) {
    throw transportError(error, options.signal);
  }
}

/** Read a whole answer: its envelope's `data`, or the `ApiError` it stands for. */
async function readAnswer<T>(response: Response, signal?: AbortSignal): Promise<T> {
  let text: string;
  try {
    text = await response.text();
  } catch (error) {
    throw transportError(error, signal);
  }
  let body: unknown = null;
  if (text.trim()) {
    try {
      body = JSON.parse(text);
    } catch {
      if (response.ok) {
        throw new ApiError(
          'the server answered with something that is not JSON',
          response.status,
          INVALID_RESPONSE
        );
      }
      body = null; // an HTTP error page: the status says what happened
    }
  }
  return readEnvelope<T>(
    response.status,
    body,
    response.statusText,
    parseRetryAfter(response.headers.get('Retry-After'))
  );
}

/**
 * One request to `jupyter-ds/v1/<path>`; resolves to the envelope's `data` (null for an
 * empty answer), rejects with an `ApiError`.
 */
export async function request<T = unknown>(
  path: string,
  options: IRequestOptions = {}
): Promise<T> {
  const response = await send(path, options);
  return readAnswer<T>(response, options.signal);
}

/** An error thrown by the caller's own `parse` or `onEvent`: passed on as it is. */
class CallerError {
  constructor(readonly error: unknown) {}
}

/**
 * A request whose answer is NDJSON (`stream: true`): each line `parse` understands goes
 * to `onEvent` as it arrives; resolves when the answer ends. An HTTP error (its error
 * envelope), a network error, a connection lost mid-answer and an abort reject with an
 * `ApiError`; an error thrown by `parse` or `onEvent` rejects as it is. Errors the stream itself
 * reports in its lines (a final error envelope) are `parse`'s to turn into events.
 */
export async function requestStream<E>(
  path: string,
  options: IRequestOptions,
  parse: (line: string) => E | null,
  onEvent: (event: E) => void
): Promise<void> {
  const response = await send(path, options);
  if (!response.ok) {
    // A failed status always throws here: its error envelope, else `http_<status>`.
    return readAnswer<never>(response, options.signal);
  }
  try {
    await readNdjsonLines(response, line => {
      try {
        const event = parse(line);
        if (event !== null) {
          onEvent(event);
        }
      } catch (error) {
        throw new CallerError(error);
      }
    });
  } catch (error) {
    if (error instanceof CallerError) {
      throw error.error;
    }
    throw transportError(error, options.signal);
  }
}

// -- acceptance telemetry ---------------------------------------------------------------

/** What a client reports about a suggestion (`POST jupyter-ds/v1/telemetry`). */
export type TelemetryKind = 'shown' | 'accepted' | 'partially_accepted' | 'dismissed';

/**
 * One telemetry event, as the server takes it (docs/openapi.yaml, `TelemetryEvent`): the
 * completion's `request_id` and what became of it; never any text.
 */
export interface ITelemetryEvent {
  event: TelemetryKind;
  request_id: string;
  /** For `partially_accepted`: the characters of the suggestion the user kept. */
  accepted_chars?: number;
  /** The reporting client's short name. */
  client?: string;
}

/** `data` of `POST telemetry`: events counted, and ignored (unknown, expired, repeated). */
export interface ITelemetryResult {
  counted: number;
  ignored: number;
}

/** The most events one `POST telemetry` takes (more is a 400). */
export const MAX_TELEMETRY_EVENTS = 100;

/**
 * `settings` for a request that must come from the same caller as the completion socket
 * (`apiWsUrl` with the same settings): the token is left out exactly when the socket
 * leaves it out.
 *
 * Why: with Jupyter's own identity provider, how a request authenticates decides who the
 * server takes the caller for. The token (`Authorization: token …` or `?token=`) names
 * the `token-…` user, the login cookie the browser session's own user (see
 * jupyter_ds/identity.py). The socket carries the token only when `appendToken` says so
 * (browsers cannot set headers on the upgrade) and is otherwise authenticated by the
 * cookie, while `ServerConnection.makeRequest` puts the token header on every request
 * that has one. Without this, a page completes as one user and reports as another.
 * Without the token, `makeRequest` still sends the cookie and its XSRF header.
 */
export function socketCallerSettings(
  settings: ServerConnection.ISettings = ServerConnection.makeSettings()
): ServerConnection.ISettings {
  if (settings.appendToken || !settings.token) {
    return settings;
  }
  return { ...settings, token: '' };
}

/**
 * Report `events` (at most `MAX_TELEMETRY_EVENTS`) about completions of the completion
 * socket to the server, as the socket's caller (`socketCallerSettings`).
 *
 * The server counts an event only for the caller's own completion (it remembers each
 * answer under the user who asked). This used to go out with the token header while the
 * socket was authenticated by the login cookie: two users as far as the server was
 * concerned, so every event of the browser came back `ignored` (200, `counted: 0`) and
 * nothing was ever counted, silently.
 */
export function sendTelemetry(
  events: ITelemetryEvent[],
  settings?: ServerConnection.ISettings
): Promise<ITelemetryResult> {
  return request<ITelemetryResult>('telemetry', {
    method: 'POST',
    body: { events },
    settings: socketCallerSettings(settings)
  });
}

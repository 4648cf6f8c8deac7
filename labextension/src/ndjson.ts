/**
 * Reading the NDJSON stream of `POST jupyter-ds/v1/explain` (`stream: true`): lines of
 * `{type: "stream", text, done: false}` with the cumulative markdown, then one envelope
 * (`{status: "success", data: {text, output, ...}}` or `{status: "error", error}`).
 *
 * Pure: bytes come in as strings, events go out. The requests themselves (and their HTTP
 * errors) are `requestStream`'s, in `api.ts`.
 */

export type ExplainEvent =
  | { kind: 'text'; text: string }
  | { kind: 'done'; text: string; data: Record<string, unknown> }
  | { kind: 'error'; code: string; message: string };

/** Splits arbitrary chunks of text into complete lines. */
export class LineSplitter {
  /** Feed a chunk; returns the complete lines it finished. */
  push(chunk: string): string[] {
    this._buffer += chunk;
    const parts = this._buffer.split('\n');
    this._buffer = parts.pop() ?? '';
    return parts.filter(line => line.trim() !== '');
  }

  /** The last line when the input ended without a newline. */
  flush(): string[] {
    const rest = this._buffer;
    this._buffer = '';
    return rest.trim() ? [rest] : [];
  }

  private _buffer = '';
}

/** One NDJSON line as an event; null for lines that are not JSON objects. */
export function parseExplainLine(line: string): ExplainEvent | null {
  let msg: any;
  try {
    msg = JSON.parse(line);
  } catch {
    return null;
  }
  if (!msg || typeof msg !== 'object') {
    return null;
  }
  if (msg.status === 'error') {
    return {
      kind: 'error',
      code: String(msg.error?.code ?? 'error'),
      message: String(msg.error?.message ?? 'explain failed')
    };
  }
  if (msg.status === 'success') {
    const data = (msg.data ?? {}) as Record<string, unknown>;
    const text = typeof data.text === 'string' ? data.text : String(data.output ?? '');
    return { kind: 'done', text, data };
  }
  if (msg.type === 'stream' && typeof msg.text === 'string') {
    return { kind: 'text', text: msg.text };
  }
  return null;
}

/** Parse a whole NDJSON body at once (tests, and non-streaming fallbacks). */
export function parseExplainBody(body: string): ExplainEvent[] {
  const splitter = new LineSplitter();
  const lines = [...splitter.push(body), ...splitter.flush()];
  return lines.map(parseExplainLine).filter((e): e is ExplainEvent => e !== null);
}

/** What `readNdjsonLines` needs of a fetch `Response`. */
export interface INdjsonResponse {
  body: { getReader(): { read(): Promise<{ done: boolean; value?: Uint8Array }> } } | null;
  text(): Promise<string>;
}

/**
 * Feed each complete line of an NDJSON response body to `onLine` as it arrives (the
 * whole text at once where the body cannot be streamed).
 */
export async function readNdjsonLines(
  response: INdjsonResponse,
  onLine: (line: string) => void
): Promise<void> {
  const splitter = new LineSplitter();
  const handle = (lines: string[]): void => lines.forEach(line => onLine(line));
  if (!response.body) {
    handle(splitter.push(await response.text()));
    handle(splitter.flush());
    return;
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) {
      break;
    }
    handle(splitter.push(decoder.decode(value, { stream: true })));
  }
  handle(splitter.push(decoder.decode()));
  handle(splitter.flush());
}

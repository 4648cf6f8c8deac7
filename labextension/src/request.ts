/**
 * Building one completion request from what the editor knows: the language (from the
 * MIME type), the text around the cursor (trimmed to the configured sizes), the file
 * path and cell id, and whether completion is switched on for that language at all.
 *
 * Pure: no JupyterLab import.
 */
import { IDsSettings } from './settings';

/** MIME types CodeMirror/JupyterLab use, mapped to the names the server knows. */
const MIME_LANGUAGES: Record<string, string> = {
  'text/x-python': 'python',
  'text/x-ipython': 'python',
  'text/x-cython': 'python',
  'text/python': 'python',
  'application/x-python-code': 'python',
  'text/x-rsrc': 'r',
  'text/x-r': 'r',
  'text/x-julia': 'julia',
  'text/x-sql': 'sql',
  'text/x-mysql': 'sql',
  'text/x-pgsql': 'sql',
  'text/x-sh': 'shell',
  'application/x-sh': 'shell',
  'text/x-shellscript': 'shell',
  'text/javascript': 'javascript',
  'application/javascript': 'javascript',
  'text/typescript': 'typescript',
  'application/typescript': 'typescript',
  'text/x-typescript': 'typescript',
  'text/x-java': 'java',
  'text/x-csrc': 'c',
  'text/x-c++src': 'cpp',
  'text/x-go': 'go',
  'text/x-rustsrc': 'rust',
  'text/x-rust': 'rust',
  'text/x-scala': 'scala',
  'text/x-markdown': 'markdown',
  'text/markdown': 'markdown',
  'text/x-ipythongfm': 'markdown',
  'text/x-yaml': 'yaml',
  'application/json': 'json',
  'text/x-toml': 'toml',
  'text/html': 'html',
  'text/css': 'css'
};

/** The language name for a MIME type: known names, else what follows `x-`, else `text`. */
export function mimeToLanguage(mime: string | undefined | null): string {
  if (!mime) {
    return 'python';
  }
  const m = mime.toLowerCase().split(';')[0].trim();
  if (m in MIME_LANGUAGES) {
    return MIME_LANGUAGES[m];
  }
  const slash = m.indexOf('/');
  let sub = slash >= 0 ? m.slice(slash + 1) : m;
  if (sub.startsWith('x-')) {
    sub = sub.slice(2);
  }
  if (sub.endsWith('src')) {
    sub = sub.slice(0, -3);
  }
  return sub || 'text';
}

/** Whether inline completion is switched on, globally and for this language. */
export function isLanguageEnabled(settings: IDsSettings, language: string): boolean {
  if (!settings.enabled) {
    return false;
  }
  const on = settings.languages[language.toLowerCase()];
  return on !== false;
}

/**
 * Keep the `maxPrefix` characters nearest the cursor of the prefix and the `maxSuffix`
 * nearest of the suffix. When cutting, cut at a line boundary if one is near, so the
 * model does not see half a line.
 */
export function trimContext(
  prefix: string,
  suffix: string,
  maxPrefix: number,
  maxSuffix: number
): { prefix: string; suffix: string } {
  let p = prefix;
  if (p.length > maxPrefix) {
    p = maxPrefix <= 0 ? '' : p.slice(p.length - maxPrefix);
    const nl = p.indexOf('\n');
    // Drop the partial first line unless that would drop (nearly) everything.
    if (nl >= 0 && nl < p.length - 1 && nl < maxPrefix / 2) {
      p = p.slice(nl + 1);
    }
  }
  let s = suffix;
  if (s.length > maxSuffix) {
    s = maxSuffix <= 0 ? '' : s.slice(0, maxSuffix);
    const nl = s.lastIndexOf('\n');
    if (nl > maxSuffix / 2) {
      s = s.slice(0, nl + 1);
    }
  }
  return { prefix: p, suffix: s };
}

/** What the WebSocket protocol sends for one request (see DESIGN.md). */
export interface ICompletionRequestMessage {
  number: number;
  prefix: string;
  suffix: string;
  mime: string;
  language: string;
  path: string | null;
  cell_id: string | null;
  stream: boolean;
  max_tokens?: number;
}

export interface IEditorState {
  /** The whole text of the cell or file. */
  text: string;
  /** The cursor offset in `text`. */
  offset: number;
  mimeType?: string;
  /** Path of the notebook or file, relative to the server root. */
  path?: string | null;
  /** Id of the notebook cell being edited (absent for files). */
  cellId?: string | null;
}

/** The request to send, without its number, or null when completion is switched off. */
export function buildRequest(
  state: IEditorState,
  settings: IDsSettings
): Omit<ICompletionRequestMessage, 'number'> | null {
  const mime = state.mimeType || 'text/x-python';
  const language = mimeToLanguage(mime);
  if (!isLanguageEnabled(settings, language)) {
    return null;
  }
  const offset = Math.max(0, Math.min(state.offset, state.text.length));
  const { prefix, suffix } = trimContext(
    state.text.slice(0, offset),
    state.text.slice(offset),
    settings.maxPrefixChars,
    settings.maxSuffixChars
  );
  const message: Omit<ICompletionRequestMessage, 'number'> = {
    prefix,
    suffix,
    mime,
    language,
    path: state.path ?? null,
    cell_id: state.cellId ?? null,
    stream: settings.streaming === 'always'
  };
  if (settings.maxTokens > 0) {
    message.max_tokens = settings.maxTokens;
  }
  return message;
}

/** One suggestion as the server sends it. */
export interface IServerItem {
  insertText: string;
  isIncomplete?: boolean;
  token?: string;
  low_confidence?: boolean;
  confidence?: number;
  [key: string]: unknown;
}

/** Drop low-confidence and empty complete items unless the settings ask to show them. */
export function filterItems<T extends IServerItem>(items: T[], showLowConfidence: boolean): T[] {
  return items.filter(item => {
    if (item.isIncomplete) {
      return true; // a stream placeholder: judged when it is done
    }
    if (!item.insertText) {
      return false;
    }
    return showLowConfidence || !item.low_confidence;
  });
}

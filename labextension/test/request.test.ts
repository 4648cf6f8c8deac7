import { describe, expect, it } from 'vitest';

import {
  buildRequest,
  filterItems,
  isLanguageEnabled,
  mimeToLanguage,
  trimContext
} from '../src/request';
import { DEFAULT_SETTINGS, IDsSettings, readSettings } from '../src/settings';

const settings = (over: Partial<IDsSettings> = {}): IDsSettings => ({
  ...DEFAULT_SETTINGS,
  ...over
});

describe('mimeToLanguage', () => {
  it.each([
    ['text/x-python', 'python'],
    ['text/x-ipython', 'python'],
    ['text/x-rsrc', 'r'],
    ['text/x-julia', 'julia'],
    ['text/x-sql', 'sql'],
    ['text/x-sh', 'shell'],
    ['text/x-ipythongfm', 'markdown'],
    ['text/typescript', 'typescript'],
    ['TEXT/X-PYTHON; charset=utf-8', 'python']
  ])('%s → %s', (mime, language) => {
    expect(mimeToLanguage(mime)).toBe(language);
  });

  it('falls back to the subtype without x- and src', () => {
    expect(mimeToLanguage('text/x-haskell')).toBe('haskell');
    expect(mimeToLanguage('text/x-fortransrc')).toBe('fortran');
  });

  it('defaults to python when no MIME type is known', () => {
    expect(mimeToLanguage(undefined)).toBe('python');
    expect(mimeToLanguage('')).toBe('python');
  });
});

describe('isLanguageEnabled', () => {
  it('honours the global switch', () => {
    expect(isLanguageEnabled(settings({ enabled: false }), 'python')).toBe(false);
    expect(isLanguageEnabled(settings(), 'python')).toBe(true);
  });

  it('honours per-language switches, unlisted languages are on', () => {
    const s = settings({ languages: { markdown: false, python: true } });
    expect(isLanguageEnabled(s, 'markdown')).toBe(false);
    expect(isLanguageEnabled(s, 'Markdown')).toBe(false);
    expect(isLanguageEnabled(s, 'python')).toBe(true);
    expect(isLanguageEnabled(s, 'r')).toBe(true);
  });
});

describe('trimContext', () => {
  it('keeps short text as is', () => {
    expect(trimContext('abc', 'def', 10, 10)).toEqual({ prefix: 'abc', suffix: 'def' });
  });

  it('keeps the characters nearest the cursor', () => {
    const { prefix, suffix } = trimContext('x'.repeat(100) + 'END', 'START' + 'y'.repeat(100), 10, 10);
    expect(prefix.length).toBeLessThanOrEqual(10);
    expect(prefix.endsWith('END')).toBe(true);
    expect(suffix.length).toBeLessThanOrEqual(10);
    expect(suffix.startsWith('START')).toBe(true);
  });

  it('cuts at a line boundary when one is near', () => {
    const prefix = 'line one\nline two\nline three\nx = '; // 33 chars
    expect(trimContext(prefix, '', 25, 0).prefix).toBe('line two\nline three\nx = ');
    expect(trimContext(prefix, '', 20, 0).prefix).toBe('line three\nx = ');
    const suffix = '\nfoo()\nbar()\nbaz()';
    expect(trimContext('', suffix, 0, 14).suffix).toBe('\nfoo()\nbar()\n');
  });

  it('can drop the prefix or suffix entirely', () => {
    expect(trimContext('abc', 'def', 0, 0)).toEqual({ prefix: '', suffix: '' });
  });
});

describe('buildRequest', () => {
  const state = {
    text: 'import numpy as np\nnp.\nprint(1)\n',
    offset: 22,
    mimeType: 'text/x-ipython',
    path: 'work/analysis.ipynb',
    cellId: 'c0ffee'
  };

  it('builds the protocol message', () => {
    expect(buildRequest(state, settings())).toEqual({
      prefix: 'import numpy as np\nnp.',
      suffix: '\nprint(1)\n',
      mime: 'text/x-ipython',
      language: 'python',
      path: 'work/analysis.ipynb',
      cell_id: 'c0ffee',
      stream: true
    });
  });

  it('asks for a whole answer when streaming is off, and sends max_tokens when set', () => {
    const msg = buildRequest(state, settings({ streaming: 'never', maxTokens: 32 }));
    expect(msg?.stream).toBe(false);
    expect(msg?.max_tokens).toBe(32);
  });

  it('is null when completion is off for the language or globally', () => {
    expect(buildRequest(state, settings({ enabled: false }))).toBeNull();
    expect(buildRequest(state, settings({ languages: { python: false } }))).toBeNull();
    expect(
      buildRequest({ ...state, mimeType: 'text/x-ipythongfm' }, settings({ languages: { markdown: false } }))
    ).toBeNull();
  });

  it('trims to the configured sizes and clamps the offset', () => {
    const long = { text: 'a'.repeat(5000) + 'b'.repeat(5000), offset: 5000 };
    const msg = buildRequest(long, settings({ maxPrefixChars: 100, maxSuffixChars: 50 }))!;
    expect(msg.prefix).toBe('a'.repeat(100));
    expect(msg.suffix).toBe('b'.repeat(50));
    expect(msg.path).toBeNull();
    expect(msg.cell_id).toBeNull();
    expect(buildRequest({ text: 'ab', offset: 99 }, settings())!.prefix).toBe('ab');
  });
});

describe('filterItems', () => {
  const items = [
    { insertText: 'good()', low_confidence: false },
    { insertText: 'meh()', low_confidence: true },
    { insertText: '' },
    { insertText: '', isIncomplete: true, token: 't1' }
  ];

  it('hides low-confidence and empty items, keeps stream placeholders', () => {
    expect(filterItems(items, false).map(i => i.insertText || i.token)).toEqual(['good()', 't1']);
  });

  it('shows low-confidence items when asked', () => {
    expect(filterItems(items, true).map(i => i.insertText || i.token)).toEqual([
      'good()',
      'meh()',
      't1'
    ]);
  });
});

describe('readSettings', () => {
  it('uses defaults for missing or invalid values', () => {
    expect(readSettings(undefined)).toEqual(DEFAULT_SETTINGS);
    const s = readSettings({
      enabled: 'yes',
      debounceMs: -5,
      streaming: 'sometimes',
      maxPrefixChars: 1e9,
      languages: { Python: false, r: 'no' }
    });
    expect(s.enabled).toBe(true);
    expect(s.debounceMs).toBe(0);
    expect(s.streaming).toBe('always');
    expect(s.maxPrefixChars).toBe(200000);
    expect(s.languages).toEqual({ python: false });
  });

  it('reads valid values', () => {
    const s = readSettings({ enabled: false, debounceMs: 400, streaming: 'never', showLowConfidence: true });
    expect(s).toMatchObject({ enabled: false, debounceMs: 400, streaming: 'never', showLowConfidence: true });
  });
});

/**
 * The user settings of jupyter-ds (schema/plugin.json), read into a plain object.
 *
 * Pure: no JupyterLab import, so the unit tests can use it directly.
 */

export type StreamingMode = 'always' | 'never';

export interface IDsSettings {
  /** Global switch for inline completion. */
  enabled: boolean;
  /** Per-language switch; a language missing here is enabled. */
  languages: Record<string, boolean>;
  /** Wait this long after the last keystroke before asking the server. */
  debounceMs: number;
  /** Stream suggestions as they are generated, or wait for the whole answer. */
  streaming: StreamingMode;
  /** Characters of text before the cursor sent to the server (the nearest ones). */
  maxPrefixChars: number;
  /** Characters of text after the cursor sent to the server (the nearest ones). */
  maxSuffixChars: number;
  /** Show suggestions the server marks `low_confidence`. */
  showLowConfidence: boolean;
  /** Ask for at most this many tokens per suggestion (0: the server's default). */
  maxTokens: number;
  /** Report shown / accepted / dismissed suggestions to the server (counts, no text). */
  telemetry: boolean;
}

export const DEFAULT_SETTINGS: IDsSettings = {
  enabled: true,
  languages: {},
  debounceMs: 250,
  streaming: 'always',
  maxPrefixChars: 8000,
  maxSuffixChars: 2000,
  showLowConfidence: true,
  maxTokens: 0,
  telemetry: true
};

function num(value: unknown, fallback: number, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isFinite(value)) {
    return fallback;
  }
  return Math.min(max, Math.max(min, Math.round(value)));
}

/** Read the composite settings object, falling back to the defaults field by field. */
export function readSettings(raw: Record<string, unknown> | null | undefined): IDsSettings {
  const r = raw ?? {};
  const languages: Record<string, boolean> = {};
  if (r.languages && typeof r.languages === 'object' && !Array.isArray(r.languages)) {
    for (const [name, on] of Object.entries(r.languages as Record<string, unknown>)) {
      if (typeof on === 'boolean') {
        languages[name.toLowerCase()] = on;
      }
    }
  }
  return {
    enabled: typeof r.enabled === 'boolean' ? r.enabled : DEFAULT_SETTINGS.enabled,
    languages,
    debounceMs: num(r.debounceMs, DEFAULT_SETTINGS.debounceMs, 0, 10000),
    streaming: r.streaming === 'never' ? 'never' : 'always',
    maxPrefixChars: num(r.maxPrefixChars, DEFAULT_SETTINGS.maxPrefixChars, 0, 200000),
    maxSuffixChars: num(r.maxSuffixChars, DEFAULT_SETTINGS.maxSuffixChars, 0, 200000),
    showLowConfidence:
      typeof r.showLowConfidence === 'boolean'
        ? r.showLowConfidence
        : DEFAULT_SETTINGS.showLowConfidence,
    maxTokens: num(r.maxTokens, DEFAULT_SETTINGS.maxTokens, 0, 1024),
    telemetry: typeof r.telemetry === 'boolean' ? r.telemetry : DEFAULT_SETTINGS.telemetry
  };
}

/**
 * "jupyter-ds: Generate tests", the pure part: the request built from what the user
 * selected, the NDJSON events of `POST jupyter-ds/v1/tests` (`stream: true`) reduced into
 * the panel's state, the labels of the verdict reasons, coverage and sandbox texts, and
 * the body of `POST jupyter-ds/v1/tests/insert`.
 *
 * Pure: no JupyterLab import, no DOM.
 */

// -- the request -------------------------------------------------------------------

export interface ITestsRequest {
  source: string;
  target?: string;
  path?: string;
  stream: true;
}

/** What the user asked tests for: the whole text of the cell or file, and the selection. */
export interface ITestsInput {
  /** The whole cell or file. */
  text: string;
  /** The selected text ('' when nothing is selected). */
  selection: string;
  /** Where the selection starts in `text` (to find the class around a method). */
  selectionStart?: number;
  /** The document's path under the server root, if any. */
  path?: string | null;
  /** Whether the document is saved on the server (a new, never-saved file is not). */
  saved?: boolean;
  /** Notebook cells may hold IPython magics, which the server's parser does not read. */
  notebook?: boolean;
}

const DEF_RE = /^(?:[ \t]*@[^\n]*\n)*([ \t]*)(?:async[ \t]+)?def[ \t]+([A-Za-z_]\w*)/;
const CLASS_RE = /^([ \t]*)class[ \t]+([A-Za-z_]\w*)/;
const BLOCK_RE = /^([ \t]*)(?:async[ \t]+)?(?:def|class)[ \t]+([A-Za-z_]\w*)/;

/**
 * The function a selection names: `name`, or `Class.name` for a method (found by walking
 * up to the enclosing `class` lines); null when the selection does not start with a
 * `def` (decorators and async allowed).
 */
export function selectedTarget(
  text: string,
  selection: string,
  selectionStart?: number
): string | null {
  const stripped = selection.replace(/^(?:[ \t]*\r?\n)+/, '');
  const match = DEF_RE.exec(stripped);
  if (!match) {
    return null;
  }
  const name = match[2];
  const start = selectionStart ?? text.indexOf(selection);
  if (start < 0 || text.slice(start, start + selection.length) !== selection) {
    return match[1].length === 0 ? name : null; // the selection is not in `text`: trust it
  }
  // The line of the `def` in the whole text (the selection may start after its indent).
  const defEnd = start + (selection.length - stripped.length) + match[0].length;
  const lineStart = text.lastIndexOf('\n', defEnd - 1) + 1;
  let indent = (/^[ \t]*/.exec(text.slice(lineStart)) ?? [''])[0].length;
  if (indent === 0) {
    return name;
  }
  const above = text.slice(0, lineStart).split('\n').reverse();
  const path = [name];
  for (const line of above) {
    if (!line.trim() || /^\s*#/.test(line)) {
      continue;
    }
    const lead = (/^[ \t]*/.exec(line) ?? [''])[0].length;
    if (lead >= indent) {
      continue;
    }
    const block = BLOCK_RE.exec(line);
    if (!block || !CLASS_RE.test(line)) {
      return name; // nested in a function or a block: the server says what it has
    }
    path.unshift(block[2]);
    indent = lead;
    if (indent === 0) {
      return path.join('.');
    }
  }
  return name;
}

/** Whether `path` is a `.py` file the server can find (relative, no drive prefix). */
export function isServerPyPath(path: string | null | undefined): path is string {
  if (!path || !path.endsWith('.py')) {
    return false;
  }
  // `Drive:dir/file.py` lives on another drive (RTC, a remote contents manager).
  return !/^[^/]*:/.test(path);
}

/** IPython magics and shell escapes, commented out so the cell parses (lines kept). */
export function withoutMagics(code: string): string {
  return code.replace(/^([ \t]*)([%!].*)$/gm, '$1# $2');
}

/** The body of `POST jupyter-ds/v1/tests` for a selection, cell or file. */
export function buildTestsRequest(input: ITestsInput): ITestsRequest {
  const source = input.notebook ? withoutMagics(input.text) : input.text;
  const request: ITestsRequest = { source, stream: true };
  const target = input.selection.trim()
    ? selectedTarget(input.text, input.selection, input.selectionStart)
    : null;
  if (target) {
    request.target = target;
  }
  if (!input.notebook && input.saved !== false && isServerPyPath(input.path)) {
    request.path = input.path;
  }
  return request;
}

// -- the events --------------------------------------------------------------------

export interface ISandboxInfo {
  mode: string;
  reason: string;
  network_isolated?: boolean;
  filesystem_isolated?: boolean;
  process_limit?: boolean;
  user?: string | null;
  [key: string]: unknown;
}

export interface ICoverageFigures {
  lines: number;
  branches: number;
  covered_lines?: number;
  statements?: number;
  covered_branches?: number;
  total_branches?: number;
}

export interface IVerdict {
  name: string | null;
  source: string;
  status: 'kept' | 'rejected';
  reason: string;
  message: string;
  round: number;
  passed_runs?: number;
  adds?: { lines: number; branches: number };
}

export interface IDoneData {
  function?: string;
  module?: string;
  kept: IVerdict[];
  verdicts: IVerdict[];
  funnel: Record<string, number>;
  coverage: { before: ICoverageFigures; after: ICoverageFigures } | null;
  imports: string[];
  fixtures: string[];
  test_file: string;
  sandbox: ISandboxInfo | null;
  model?: string | null;
  latency_ms?: number;
}

export type TestsEvent =
  | { kind: 'start'; function: string; module: string; sandbox: ISandboxInfo | null }
  | { kind: 'round'; round: number; tokens: number; candidates: number }
  | { kind: 'candidate'; name: string | null; source: string; round: number }
  | ({ kind: 'verdict' } & IVerdict)
  | { kind: 'done'; data: IDoneData }
  | { kind: 'error'; code: string; message: string };

function str(value: unknown, fallback = ''): string {
  return typeof value === 'string' ? value : fallback;
}

function num(value: unknown, fallback = 0): number {
  return typeof value === 'number' && Number.isFinite(value) ? value : fallback;
}

function strList(value: unknown): string[] {
  return Array.isArray(value) ? value.filter((v): v is string => typeof v === 'string') : [];
}

function sandboxOf(value: unknown): ISandboxInfo | null {
  if (!value || typeof value !== 'object') {
    return null;
  }
  const s = value as Record<string, unknown>;
  return { ...s, mode: str(s.mode, 'unknown'), reason: str(s.reason) } as ISandboxInfo;
}

function verdictOf(msg: Record<string, unknown>): IVerdict {
  const verdict: IVerdict = {
    name: typeof msg.name === 'string' ? msg.name : null,
    source: str(msg.source),
    status: msg.status === 'kept' ? 'kept' : 'rejected',
    reason: str(msg.reason, msg.status === 'kept' ? 'kept' : 'error'),
    message: str(msg.message),
    round: num(msg.round, 1)
  };
  if (typeof msg.passed_runs === 'number') {
    verdict.passed_runs = msg.passed_runs;
  }
  const adds = msg.adds as Record<string, unknown> | undefined;
  if (adds && typeof adds === 'object') {
    verdict.adds = { lines: num(adds.lines), branches: num(adds.branches) };
  }
  return verdict;
}

function coverageOf(value: unknown): ICoverageFigures | null {
  if (!value || typeof value !== 'object') {
    return null;
  }
  const c = value as Record<string, unknown>;
  const figures: ICoverageFigures = { lines: num(c.lines), branches: num(c.branches) };
  for (const key of ['covered_lines', 'statements', 'covered_branches', 'total_branches'] as const) {
    if (typeof c[key] === 'number') {
      figures[key] = c[key] as number;
    }
  }
  return figures;
}

function doneOf(raw: unknown): IDoneData {
  const d = (raw && typeof raw === 'object' ? raw : {}) as Record<string, unknown>;
  const verdicts = (list: unknown): IVerdict[] =>
    Array.isArray(list)
      ? list.filter(v => v && typeof v === 'object').map(v => verdictOf(v as Record<string, unknown>))
      : [];
  const cov = (d.coverage ?? null) as Record<string, unknown> | null;
  const before = coverageOf(cov?.before);
  const after = coverageOf(cov?.after);
  const funnel: Record<string, number> = {};
  if (d.funnel && typeof d.funnel === 'object') {
    for (const [key, value] of Object.entries(d.funnel as Record<string, unknown>)) {
      if (typeof value === 'number') {
        funnel[key] = value;
      }
    }
  }
  return {
    function: typeof d.function === 'string' ? d.function : undefined,
    module: typeof d.module === 'string' ? d.module : undefined,
    kept: verdicts(d.kept),
    verdicts: verdicts(d.verdicts),
    funnel,
    coverage: before && after ? { before, after } : null,
    imports: strList(d.imports),
    fixtures: strList(d.fixtures),
    test_file: str(d.test_file),
    sandbox: sandboxOf(d.sandbox),
    model: typeof d.model === 'string' ? d.model : null,
    latency_ms: typeof d.latency_ms === 'number' ? d.latency_ms : undefined
  };
}

/** One NDJSON line as an event; null for non-JSON lines and unknown event types. */
export function parseTestsLine(line: string): TestsEvent | null {
  let msg: any;
  try {
    msg = JSON.parse(line);
  } catch {
    return null;
  }
  if (!msg || typeof msg !== 'object' || Array.isArray(msg)) {
    return null;
  }
  if (msg.status === 'error') {
    return {
      kind: 'error',
      code: String(msg.error?.code ?? 'error'),
      message: String(msg.error?.message ?? 'test generation failed')
    };
  }
  if (msg.status === 'success') {
    return { kind: 'done', data: doneOf(msg.data) };
  }
  switch (msg.type) {
    case 'start':
      return {
        kind: 'start',
        function: str(msg.function),
        module: str(msg.module),
        sandbox: sandboxOf(msg.sandbox)
      };
    case 'round':
      return {
        kind: 'round',
        round: num(msg.round, 1),
        tokens: num(msg.tokens),
        candidates: num(msg.candidates)
      };
    case 'candidate':
      return {
        kind: 'candidate',
        name: typeof msg.name === 'string' ? msg.name : null,
        source: str(msg.source),
        round: num(msg.round, 1)
      };
    case 'verdict':
      return { kind: 'verdict', ...verdictOf(msg) };
    default:
      return null;
  }
}

// -- the panel's state -------------------------------------------------------------

export type TestsPhase = 'streaming' | 'done' | 'error';

/** One test in the panel: a candidate, later its verdict. */
export interface ITestEntry {
  name: string | null;
  source: string;
  round: number;
  status: 'candidate' | 'kept' | 'rejected';
  reason?: string;
  message?: string;
  passed_runs?: number;
  adds?: { lines: number; branches: number };
}

export interface ITestsState {
  phase: TestsPhase;
  function: string | null;
  module: string | null;
  sandbox: ISandboxInfo | null;
  rounds: { round: number; tokens: number; candidates: number }[];
  tests: ITestEntry[];
  funnel: Record<string, number> | null;
  coverage: { before: ICoverageFigures; after: ICoverageFigures } | null;
  /** From the final envelope: what "Insert" / "Copy" use. */
  kept: IVerdict[];
  imports: string[];
  fixtures: string[];
  testFile: string;
  model: string | null;
  latencyMs: number | null;
  error: { code: string; message: string } | null;
}

export function initialTestsState(): ITestsState {
  return {
    phase: 'streaming',
    function: null,
    module: null,
    sandbox: null,
    rounds: [],
    tests: [],
    funnel: null,
    coverage: null,
    kept: [],
    imports: [],
    fixtures: [],
    testFile: '',
    model: null,
    latencyMs: null,
    error: null
  };
}

function applyVerdict(tests: ITestEntry[], v: IVerdict): ITestEntry[] {
  const entry: ITestEntry = {
    name: v.name,
    source: v.source || '',
    round: v.round,
    status: v.status,
    reason: v.reason,
    message: v.message
  };
  if (v.passed_runs !== undefined) {
    entry.passed_runs = v.passed_runs;
  }
  if (v.adds) {
    entry.adds = v.adds;
  }
  // The newest candidate of that name and round still waiting for its verdict.
  for (let i = tests.length - 1; i >= 0; i--) {
    const t = tests[i];
    if (t.status === 'candidate' && t.name === v.name && t.round === v.round) {
      const next = tests.slice();
      next[i] = { ...entry, source: entry.source || t.source };
      return next;
    }
  }
  return [...tests, entry]; // rejected by the parser: it never was a candidate
}

/** The state after one event (a new object; the old one is not changed). */
export function reduceTestsEvent(state: ITestsState, event: TestsEvent): ITestsState {
  if (state.phase !== 'streaming') {
    return state; // nothing after the final line counts
  }
  switch (event.kind) {
    case 'start':
      return {
        ...state,
        function: event.function || state.function,
        module: event.module || state.module,
        sandbox: event.sandbox ?? state.sandbox
      };
    case 'round':
      return {
        ...state,
        rounds: [
          ...state.rounds,
          { round: event.round, tokens: event.tokens, candidates: event.candidates }
        ]
      };
    case 'candidate':
      return {
        ...state,
        tests: [
          ...state.tests,
          { name: event.name, source: event.source, round: event.round, status: 'candidate' }
        ]
      };
    case 'verdict': {
      return { ...state, tests: applyVerdict(state.tests, event) };
    }
    case 'done': {
      const d = event.data;
      let tests = state.tests;
      // Verdicts the stream did not carry (a non-streamed answer): add them now.
      for (const v of d.verdicts) {
        const known = tests.some(
          t => t.name === v.name && t.round === v.round && t.reason === v.reason
        );
        if (!known) {
          tests = applyVerdict(tests, v);
        }
      }
      return {
        ...state,
        phase: 'done',
        function: d.function ?? state.function,
        module: d.module ?? state.module,
        sandbox: d.sandbox ?? state.sandbox,
        tests,
        funnel: d.funnel,
        coverage: d.coverage,
        kept: d.kept,
        imports: d.imports,
        fixtures: d.fixtures,
        testFile: d.test_file,
        model: d.model ?? null,
        latencyMs: d.latency_ms ?? null
      };
    }
    case 'error':
      return { ...state, phase: 'error', error: { code: event.code, message: event.message } };
  }
  return state;
}

/** Reduce a whole list of events (tests, and non-streamed answers). */
export function reduceTestsEvents(events: TestsEvent[], state = initialTestsState()): ITestsState {
  return events.reduce(reduceTestsEvent, state);
}

/** The stream ended: a state still streaming has lost its final line. */
export function finishTestsState(state: ITestsState): ITestsState {
  if (state.phase !== 'streaming') {
    return state;
  }
  return {
    ...state,
    phase: 'error',
    error: { code: 'incomplete', message: 'the answer ended before the final result' }
  };
}

// -- texts -------------------------------------------------------------------------

export const REASON_LABELS: Readonly<Record<string, string>> = {
  kept: 'kept',
  fails: 'fails',
  error: 'errors when run',
  flaky: 'flaky',
  adds_no_coverage: 'adds no coverage',
  timed_out: 'timed out',
  killed_by_sandbox: 'killed by the sandbox',
  import_error: 'import error',
  does_not_parse: 'does not parse',
  does_not_compile: 'does not compile',
  side_effect: 'side effect at import',
  star_import: 'star import',
  relative_import: 'relative import',
  not_a_test: 'not a test',
  duplicate: 'duplicate',
  name_collision: 'name collision',
  truncated: 'cut off (answer truncated)'
};

/** A readable label for a verdict reason code; unknown codes read as words. */
export function reasonLabel(reason: string | null | undefined): string {
  if (!reason) {
    return 'rejected';
  }
  return REASON_LABELS[reason] ?? reason.replace(/_/g, ' ');
}

/** The verdict line of one test: "kept: passed 5 of 5 runs (+3 lines, +1 branch)". */
export function verdictText(entry: ITestEntry): string {
  if (entry.status === 'candidate') {
    return 'running…';
  }
  let text = reasonLabel(entry.reason ?? (entry.status === 'kept' ? 'kept' : null));
  if (entry.message) {
    text += `: ${entry.message}`;
  }
  if (entry.adds) {
    const { lines, branches } = entry.adds;
    text += ` (+${lines} line${lines === 1 ? '' : 's'}, +${branches} branch${branches === 1 ? '' : 'es'})`;
  }
  return text;
}

function pct(value: number): string {
  return `${Number.isInteger(value) ? value : value.toFixed(1)}%`;
}

/**
 * "lines 40% → 80% (4/10 → 8/10)" and "branches …"; "… not measured" where nothing ran
 * (no statements) or there is nothing to cover; null without coverage.
 */
export function coverageTexts(
  coverage: ITestsState['coverage']
): { lines: string; branches: string } | null {
  if (!coverage) {
    return null;
  }
  const { before, after } = coverage;
  const text = (
    kind: string,
    a: number,
    b: number,
    coveredBefore: number | undefined,
    coveredAfter: number | undefined,
    total: number | undefined
  ): string => {
    if (total === 0) {
      return `${kind}: ${kind === 'branches' && after.statements ? 'none to cover' : 'not measured'}`;
    }
    const counts =
      coveredBefore !== undefined && coveredAfter !== undefined && total !== undefined
        ? ` (${coveredBefore}/${total} → ${coveredAfter}/${total})`
        : '';
    return `${kind} ${pct(a)} → ${pct(b)}${counts}`;
  };
  return {
    lines: text(
      'lines',
      before.lines,
      after.lines,
      before.covered_lines,
      after.covered_lines,
      after.statements ?? before.statements
    ),
    branches: text(
      'branches',
      before.branches,
      after.branches,
      before.covered_branches,
      after.covered_branches,
      after.total_branches ?? before.total_branches
    )
  };
}

/** The sandbox line, and a warning when the runs are not fully isolated. */
export function sandboxTexts(
  sandbox: ISandboxInfo | null
): { text: string; warning: string | null } | null {
  if (!sandbox) {
    return null;
  }
  const mode = sandbox.mode === 'limits-only' ? 'limits only' : sandbox.mode;
  const missing: string[] = [];
  if (!sandbox.network_isolated) {
    missing.push('network not isolated');
  }
  if (sandbox.filesystem_isolated === false) {
    missing.push('filesystem not isolated');
  }
  const text = `sandbox: ${mode}${sandbox.reason ? ` (${sandbox.reason})` : ''}`;
  if (sandbox.mode === 'bwrap' && !missing.length) {
    return { text, warning: null };
  }
  const what = missing.length ? missing.join(', ') : 'weaker isolation';
  return { text, warning: `${mode}: ${what}` };
}

/** "candidates 6 → parse 5 → pass 3 → 5/5 2 → adds coverage 2 → kept 2". */
export function funnelText(funnel: Record<string, number> | null): string {
  if (!funnel) {
    return '';
  }
  const steps: [string, string][] = [
    ['candidates', 'candidates'],
    ['parse', 'parse'],
    ['pass', 'pass'],
    ['stable', 'pass 5/5'],
    ['adds_coverage', 'add coverage'],
    ['kept', 'kept']
  ];
  return steps
    .filter(([key]) => key in funnel)
    .map(([key, label]) => `${label} ${funnel[key]}`)
    .join(' → ');
}

/** The header line for the state. */
export function statusText(state: ITestsState, what: string): string {
  const fn = state.function ? `${state.function}()` : what;
  switch (state.phase) {
    case 'streaming': {
      const round = state.rounds.length ? ` round ${state.rounds[state.rounds.length - 1].round}` : '';
      return `Generating tests for ${fn}…${round}`;
    }
    case 'done': {
      const n = state.kept.length;
      return `${n} test${n === 1 ? '' : 's'} kept for ${fn}`;
    }
    case 'error':
      return `Test generation failed: ${state.error?.message ?? 'unknown error'}`;
  }
}

// -- insert ------------------------------------------------------------------------

export interface IInsertRequest {
  path: string;
  tests: string[];
  imports: string[];
}

export interface IInsertResult {
  test_path: string;
  created: boolean;
  added: number;
}

/** Whether "Insert" can write the kept tests (needs a saved `.py` path). */
export function canInsert(state: ITestsState, path: string | undefined | null): boolean {
  return state.phase === 'done' && state.kept.length > 0 && isServerPyPath(path);
}

/** Whether "Copy" has a test file to give (a notebook cell, where there is no path). */
export function canCopy(state: ITestsState): boolean {
  return state.phase === 'done' && state.kept.length > 0 && state.testFile.trim() !== '';
}

/** The body of `POST jupyter-ds/v1/tests/insert`: fixtures first, then the kept tests. */
export function buildInsertRequest(state: ITestsState, path: string): IInsertRequest {
  const tests = [...state.fixtures, ...state.kept.map(v => v.source)].filter(s => s.trim());
  return { path, tests, imports: [...state.imports] };
}

/**
 * The `data` of `POST tests/insert` (`{test_path, created, added}`, the envelope already
 * unwrapped by the API client) → the result; throws when it names no test file.
 */
export function readInsertResult(answer: unknown): IInsertResult {
  const data = (answer && typeof answer === 'object' ? answer : {}) as Record<string, any>;
  if (typeof data.test_path !== 'string') {
    throw new Error('the server did not say where the tests were written');
  }
  return {
    test_path: data.test_path,
    created: Boolean(data.created),
    added: num(data.added)
  };
}

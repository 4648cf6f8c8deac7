import { describe, expect, it } from 'vitest';

import { readNdjsonLines } from '../src/ndjson';
import {
  REASON_LABELS,
  TestsEvent,
  buildInsertRequest,
  buildTestsRequest,
  canCopy,
  canInsert,
  coverageTexts,
  finishTestsState,
  funnelText,
  initialTestsState,
  isServerPyPath,
  parseTestsLine,
  readInsertResult,
  reasonLabel,
  reduceTestsEvent,
  reduceTestsEvents,
  sandboxTexts,
  selectedTarget,
  statusText,
  verdictText,
  withoutMagics
} from '../src/testgenModel';

const BWRAP = { mode: 'bwrap', reason: 'namespaces work', network_isolated: true, filesystem_isolated: true };
const LIMITS = { mode: 'limits-only', reason: 'bwrap cannot create namespaces', network_isolated: false, filesystem_isolated: false };

const OK_SOURCE = 'def test_mean_two():\n    assert mean([1, 3]) == 2\n';
const FLAKY_SOURCE = 'def test_mean_random():\n    assert random.random() < 0.9\n';
const FAIL_SOURCE = 'def test_mean_wrong():\n    assert mean([1]) == 2\n';
const FIXTURE = '@pytest.fixture\ndef numbers():\n    return [1, 2, 3]\n';

function line(obj: unknown): string {
  return JSON.stringify(obj);
}

/** A whole streamed answer, as the server writes it. */
function answerLines(): string[] {
  const kept = {
    name: 'test_mean_two',
    source: OK_SOURCE,
    status: 'kept',
    reason: 'kept',
    message: 'passed 5 of 5 runs',
    passed_runs: 5,
    adds: { lines: 3, branches: 1 },
    round: 1
  };
  const rejectedParse = {
    name: null,
    source: 'def test_(:',
    status: 'rejected',
    reason: 'does_not_parse',
    message: 'invalid syntax',
    round: 1
  };
  const flaky = {
    name: 'test_mean_random',
    source: FLAKY_SOURCE,
    status: 'rejected',
    reason: 'flaky',
    message: 'passed 4 of 5 runs',
    passed_runs: 4,
    round: 1
  };
  const fails = {
    name: 'test_mean_wrong',
    source: FAIL_SOURCE,
    status: 'rejected',
    reason: 'fails',
    message: 'assert 1.0 == 2',
    round: 2
  };
  return [
    line({ type: 'start', function: 'mean', module: 'stats', sandbox: LIMITS }),
    line({ type: 'round', round: 1, tokens: 120, candidates: 4 }),
    line({ type: 'verdict', ...rejectedParse }),
    line({ type: 'candidate', name: 'test_mean_two', source: OK_SOURCE, round: 1 }),
    line({ type: 'candidate', name: 'test_mean_random', source: FLAKY_SOURCE, round: 1 }),
    line({ type: 'verdict', ...kept }),
    line({ type: 'verdict', ...flaky }),
    line({ type: 'progress', percent: 50 }), // unknown: ignored
    line({ type: 'round', round: 2, tokens: 80, candidates: 1 }),
    line({ type: 'candidate', name: 'test_mean_wrong', source: FAIL_SOURCE, round: 2 }),
    line({ type: 'verdict', ...fails }),
    line({
      status: 'success',
      data: {
        function: 'mean',
        module: 'stats',
        kept: [kept],
        verdicts: [rejectedParse, kept, flaky, fails],
        funnel: { candidates: 4, parse: 3, pass: 2, stable: 1, adds_coverage: 1, kept: 1 },
        coverage: {
          before: { lines: 20, branches: 0, covered_lines: 1, statements: 5, covered_branches: 0, total_branches: 2 },
          after: { lines: 80, branches: 50, covered_lines: 4, statements: 5, covered_branches: 1, total_branches: 2 }
        },
        imports: ['import random', 'from stats import mean'],
        fixtures: [FIXTURE],
        test_file: 'from stats import mean\n\n\n' + OK_SOURCE,
        sandbox: LIMITS,
        model: 'tiny',
        latency_ms: 1234.5
      },
      timestamp: 1
    })
  ];
}

function events(lines: string[]): TestsEvent[] {
  return lines.map(parseTestsLine).filter((e): e is TestsEvent => e !== null);
}

describe('parseTestsLine', () => {
  it('reads each event type', () => {
    const evs = events(answerLines());
    expect(evs.map(e => e.kind)).toEqual([
      'start',
      'round',
      'verdict',
      'candidate',
      'candidate',
      'verdict',
      'verdict',
      'round',
      'candidate',
      'verdict',
      'done'
    ]);
    const start = evs[0];
    expect(start).toMatchObject({ kind: 'start', function: 'mean', module: 'stats' });
  });

  it('ignores unknown event types, non-objects and broken JSON', () => {
    expect(parseTestsLine('{"type": "progress", "percent": 50}')).toBeNull();
    expect(parseTestsLine('[1, 2]')).toBeNull();
    expect(parseTestsLine('42')).toBeNull();
    expect(parseTestsLine('{"type": "cand')).toBeNull();
  });

  it('reads the error envelope', () => {
    expect(
      parseTestsLine('{"status": "error", "error": {"code": "model_not_ready", "message": "loading"}}')
    ).toEqual({ kind: 'error', code: 'model_not_ready', message: 'loading' });
    expect(parseTestsLine('{"status": "error"}')).toMatchObject({ kind: 'error', code: 'error' });
  });
});

describe('reducing the events into the panel state', () => {
  it('shows candidates first, then their verdicts', () => {
    const evs = events(answerLines());
    let state = initialTestsState();
    state = reduceTestsEvents(evs.slice(0, 5), state);
    expect(state.phase).toBe('streaming');
    expect(state.function).toBe('mean');
    expect(state.sandbox?.mode).toBe('limits-only');
    expect(state.tests.map(t => [t.name, t.status])).toEqual([
      [null, 'rejected'],
      ['test_mean_two', 'candidate'],
      ['test_mean_random', 'candidate']
    ]);
    expect(verdictText(state.tests[1])).toBe('running…');

    state = reduceTestsEvents(evs.slice(5, 7), state);
    expect(state.tests.map(t => [t.name, t.status, t.reason])).toEqual([
      [null, 'rejected', 'does_not_parse'],
      ['test_mean_two', 'kept', 'kept'],
      ['test_mean_random', 'rejected', 'flaky']
    ]);
    expect(state.tests[1].source).toBe(OK_SOURCE);
    expect(state.tests[1].adds).toEqual({ lines: 3, branches: 1 });
    expect(state.tests[2].passed_runs).toBe(4);
  });

  it('ends with the funnel, coverage and what Insert needs', () => {
    const state = reduceTestsEvents(events(answerLines()));
    expect(state.phase).toBe('done');
    expect(state.rounds).toEqual([
      { round: 1, tokens: 120, candidates: 4 },
      { round: 2, tokens: 80, candidates: 1 }
    ]);
    expect(state.tests).toHaveLength(4); // the final verdict list adds no duplicates
    expect(state.tests[3]).toMatchObject({ name: 'test_mean_wrong', status: 'rejected', reason: 'fails', round: 2 });
    expect(state.funnel).toEqual({ candidates: 4, parse: 3, pass: 2, stable: 1, adds_coverage: 1, kept: 1 });
    expect(state.coverage?.before.lines).toBe(20);
    expect(state.coverage?.after.branches).toBe(50);
    expect(state.kept.map(k => k.name)).toEqual(['test_mean_two']);
    expect(state.imports).toEqual(['import random', 'from stats import mean']);
    expect(state.fixtures).toEqual([FIXTURE]);
    expect(state.testFile).toContain('def test_mean_two');
    expect(state.model).toBe('tiny');
    expect(state.latencyMs).toBe(1234.5);
    expect(state.error).toBeNull();
  });

  it('fills in verdicts from the final envelope when nothing was streamed', () => {
    const lines = answerLines();
    const state = reduceTestsEvents(events([lines[lines.length - 1]]));
    expect(state.phase).toBe('done');
    expect(state.tests.map(t => t.reason)).toEqual(['does_not_parse', 'kept', 'flaky', 'fails']);
  });

  it('matches a verdict to the pending candidate of its round', () => {
    const evs: TestsEvent[] = [
      { kind: 'candidate', name: 'test_a', source: 'x', round: 1 },
      { kind: 'verdict', name: 'test_a', source: 'x', status: 'rejected', reason: 'fails', message: '', round: 1 },
      { kind: 'candidate', name: 'test_a', source: 'y', round: 2 },
      { kind: 'verdict', name: 'test_a', source: '', status: 'kept', reason: 'kept', message: '', round: 2 }
    ];
    const state = reduceTestsEvents(evs);
    expect(state.tests.map(t => [t.round, t.status, t.source])).toEqual([
      [1, 'rejected', 'x'],
      [2, 'kept', 'y']
    ]);
  });

  it('turns an error line into the error state and ignores what follows', () => {
    const evs = events([
      line({ type: 'start', function: 'mean', module: 'stats', sandbox: BWRAP }),
      line({ type: 'candidate', name: 'test_a', source: 'x', round: 1 }),
      line({ status: 'error', error: { code: 'generation_timeout', message: 'generation timed out' } }),
      line({ type: 'candidate', name: 'test_b', source: 'y', round: 1 })
    ]);
    const state = reduceTestsEvents(evs);
    expect(state.phase).toBe('error');
    expect(state.error).toEqual({ code: 'generation_timeout', message: 'generation timed out' });
    expect(state.tests.map(t => t.name)).toEqual(['test_a']);
    expect(statusText(state, 'the cell')).toBe('Test generation failed: generation timed out');
    expect(canInsert(state, 'stats.py')).toBe(false);
  });

  it('does not change the previous state', () => {
    const before = initialTestsState();
    const after = reduceTestsEvent(before, { kind: 'candidate', name: 'test_a', source: 'x', round: 1 });
    expect(before.tests).toEqual([]);
    expect(after.tests).toHaveLength(1);
  });

  it('marks a stream that ended without its final line as an error', () => {
    const cut = reduceTestsEvents(events(answerLines().slice(0, 4)));
    const ended = finishTestsState(cut);
    expect(ended.phase).toBe('error');
    expect(ended.error?.code).toBe('incomplete');
    const done = reduceTestsEvents(events(answerLines()));
    expect(finishTestsState(done)).toBe(done);
  });
});

describe('reason labels and texts', () => {
  it('has a readable label for every reason code of the server', () => {
    const codes = [
      'kept', 'fails', 'error', 'flaky', 'adds_no_coverage', 'timed_out', 'killed_by_sandbox',
      'import_error', 'does_not_parse', 'does_not_compile', 'side_effect', 'star_import',
      'relative_import', 'not_a_test', 'duplicate', 'name_collision', 'truncated'
    ];
    for (const code of codes) {
      expect(REASON_LABELS[code], code).toBeTruthy();
      expect(reasonLabel(code)).not.toContain('_');
    }
    expect(reasonLabel('adds_no_coverage')).toBe('adds no coverage');
    expect(reasonLabel('killed_by_sandbox')).toBe('killed by the sandbox');
    expect(reasonLabel('some_new_reason')).toBe('some new reason');
    expect(reasonLabel(undefined)).toBe('rejected');
  });

  it('writes the verdict line with the message and the coverage it adds', () => {
    const state = reduceTestsEvents(events(answerLines()));
    expect(verdictText(state.tests[1])).toBe('kept: passed 5 of 5 runs (+3 lines, +1 branch)');
    expect(verdictText(state.tests[2])).toBe('flaky: passed 4 of 5 runs');
    expect(verdictText(state.tests[0])).toBe('does not parse: invalid syntax');
  });

  it('writes coverage before → after', () => {
    const state = reduceTestsEvents(events(answerLines()));
    expect(coverageTexts(state.coverage)).toEqual({
      lines: 'lines 20% → 80% (1/5 → 4/5)',
      branches: 'branches 0% → 50% (0/2 → 1/2)'
    });
    expect(coverageTexts(null)).toBeNull();
    expect(
      coverageTexts({ before: { lines: 12.34, branches: 0 }, after: { lines: 50, branches: 0 } })
    ).toEqual({ lines: 'lines 12.3% → 50%', branches: 'branches 0% → 0%' });
    const none = { lines: 0, branches: 0, covered_lines: 0, statements: 0, covered_branches: 0, total_branches: 0 };
    expect(coverageTexts({ before: none, after: none })).toEqual({
      lines: 'lines: not measured',
      branches: 'branches: not measured'
    });
    const straight = { ...none, statements: 2, covered_lines: 2, lines: 100 };
    expect(coverageTexts({ before: none, after: straight })?.branches).toBe('branches: none to cover');
  });

  it('warns when the sandbox is not bubblewrap', () => {
    expect(sandboxTexts(BWRAP)).toEqual({ text: 'sandbox: bwrap (namespaces work)', warning: null });
    const limits = sandboxTexts(LIMITS);
    expect(limits?.warning).toBe('limits only: network not isolated, filesystem not isolated');
    expect(limits?.text).toContain('limits only');
    expect(sandboxTexts({ mode: 'limits-only', reason: '' })?.warning).toBe(
      'limits only: network not isolated'
    );
    expect(sandboxTexts(null)).toBeNull();
  });

  it('writes the funnel and the header', () => {
    const state = reduceTestsEvents(events(answerLines()));
    expect(funnelText(state.funnel)).toBe(
      'candidates 4 → parse 3 → pass 2 → pass 5/5 1 → add coverage 1 → kept 1'
    );
    expect(funnelText(null)).toBe('');
    expect(statusText(state, 'stats.py')).toBe('1 test kept for mean()');
    const streaming = reduceTestsEvents(events(answerLines().slice(0, 2)));
    expect(statusText(streaming, 'stats.py')).toBe('Generating tests for mean()… round 1');
    expect(statusText(initialTestsState(), 'the cell')).toBe('Generating tests for the cell…');
  });
});

describe('building the request from a selection', () => {
  const FILE =
    'import math\n\n\ndef mean(xs):\n    return sum(xs) / len(xs)\n\n\n' +
    'class Stats:\n    @staticmethod\n    def spread(xs):\n        return max(xs) - min(xs)\n';

  it('sends the whole file and the selected function as target', () => {
    const selection = 'def mean(xs):\n    return sum(xs) / len(xs)';
    expect(
      buildTestsRequest({
        text: FILE,
        selection,
        selectionStart: FILE.indexOf(selection),
        path: 'pkg/stats.py',
        saved: true
      })
    ).toEqual({ source: FILE, target: 'mean', path: 'pkg/stats.py', stream: true });
  });

  it('sends no target when the selection does not start with a def', () => {
    const selection = 'return sum(xs) / len(xs)';
    const req = buildTestsRequest({ text: FILE, selection, selectionStart: FILE.indexOf(selection), path: 'stats.py' });
    expect(req).toEqual({ source: FILE, path: 'stats.py', stream: true });
    expect(buildTestsRequest({ text: FILE, selection: '', path: 'stats.py' })).toEqual({
      source: FILE,
      path: 'stats.py',
      stream: true
    });
  });

  it('names a method Class.method, also from a decorator or mid-line selection', () => {
    const fromDecorator = '    @staticmethod\n    def spread(xs):';
    expect(selectedTarget(FILE, fromDecorator, FILE.indexOf(fromDecorator))).toBe('Stats.spread');
    const midLine = 'def spread(xs):\n        return';
    expect(selectedTarget(FILE, midLine, FILE.indexOf(midLine))).toBe('Stats.spread');
    expect(selectedTarget(FILE, '\n\ndef mean(xs):', FILE.indexOf('def mean') - 2)).toBe('mean');
    expect(selectedTarget('async def fetch(url):\n    pass\n', 'async def fetch(url):')).toBe('fetch');
    expect(selectedTarget(FILE, 'import math')).toBeNull();
  });

  it('sends no path for notebooks, unsaved files, other drives and non-Python files', () => {
    const base = { text: 'def f():\n    return 1\n', selection: '' };
    expect(buildTestsRequest({ ...base, path: 'nb.ipynb', notebook: true }).path).toBeUndefined();
    expect(buildTestsRequest({ ...base, path: 'new.py', saved: false }).path).toBeUndefined();
    expect(buildTestsRequest({ ...base, path: 'RTC:stats.py' }).path).toBeUndefined();
    expect(buildTestsRequest({ ...base, path: 'notes.txt' }).path).toBeUndefined();
    expect(isServerPyPath('a/b/c.py')).toBe(true);
    expect(isServerPyPath('a/b:c.py')).toBe(true);
    expect(isServerPyPath(null)).toBe(false);
  });

  it('comments out IPython magics in notebook cells, keeping line numbers', () => {
    const cell = '%matplotlib inline\n!pip list\ndef f(x):\n    return x\n';
    const req = buildTestsRequest({ text: cell, selection: '', notebook: true });
    expect(req.source).toBe('# %matplotlib inline\n# !pip list\ndef f(x):\n    return x\n');
    expect(withoutMagics('x = 1 % 2\n')).toBe('x = 1 % 2\n');
  });
});

describe('Insert and Copy', () => {
  it('is enabled only when tests were kept and the request had a path', () => {
    const done = reduceTestsEvents(events(answerLines()));
    expect(canInsert(done, 'stats.py')).toBe(true);
    expect(canInsert(done, undefined)).toBe(false);
    expect(canCopy(done)).toBe(true);
    const streaming = reduceTestsEvents(events(answerLines().slice(0, 6)));
    expect(canInsert(streaming, 'stats.py')).toBe(false);
    expect(canCopy(streaming)).toBe(false);
    const nothingKept = reduceTestsEvents(
      events([line({ status: 'success', data: { kept: [], verdicts: [], funnel: {}, imports: [], fixtures: [], test_file: '' } })])
    );
    expect(canInsert(nothingKept, 'stats.py')).toBe(false);
    expect(canCopy(nothingKept)).toBe(false);
  });

  it('sends the fixtures and kept sources with the imports', () => {
    const done = reduceTestsEvents(events(answerLines()));
    expect(buildInsertRequest(done, 'pkg/stats.py')).toEqual({
      path: 'pkg/stats.py',
      tests: [FIXTURE, OK_SOURCE],
      imports: ['import random', 'from stats import mean']
    });
  });

  it('reads the insert answer (the envelope\'s data)', () => {
    expect(readInsertResult({ test_path: 'tests/test_stats.py', created: true, added: 2 })).toEqual({
      test_path: 'tests/test_stats.py',
      created: true,
      added: 2
    });
    expect(() => readInsertResult(null)).toThrow('the server did not say where the tests were written');
    expect(() => readInsertResult({ created: true })).toThrow();
  });
});

describe('readNdjsonLines', () => {
  it('feeds lines as the chunks arrive, split anywhere', async () => {
    const text = answerLines().join('\n') + '\n';
    const bytes = new TextEncoder().encode(text);
    const chunks = [bytes.slice(0, 7), bytes.slice(7, 300), bytes.slice(300)];
    let i = 0;
    const response = {
      body: {
        getReader: () => ({
          read: async () =>
            i < chunks.length ? { done: false, value: chunks[i++] } : { done: true, value: undefined }
        })
      },
      text: async () => text
    };
    const lines: string[] = [];
    await readNdjsonLines(response, l => lines.push(l));
    expect(lines).toEqual(answerLines());
  });

  it('reads the whole text when there is no body stream', async () => {
    const lines: string[] = [];
    await readNdjsonLines({ body: null, text: async () => 'a\n\nb' }, l => lines.push(l));
    expect(lines).toEqual(['a', 'b']);
  });
});

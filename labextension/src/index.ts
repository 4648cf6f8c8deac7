/** jupyter-ds: inline completion, Explain, Generate tests, Git and model status for JupyterLab 4. */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, WidgetTracker } from '@jupyterlab/apputils';
import { ICompletionProviderManager, IInlineCompleterFactory } from '@jupyterlab/completer';
import { IDefaultFileBrowser } from '@jupyterlab/filebrowser';
import { IEditorTracker } from '@jupyterlab/fileeditor';
import { INotebookTracker } from '@jupyterlab/notebook';
import { IRenderMimeRegistry } from '@jupyterlab/rendermime';
import { ServerConnection } from '@jupyterlab/services';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { IStatusBar } from '@jupyterlab/statusbar';
import { Token } from '@lumino/coreutils';
import { ISignal, Signal } from '@lumino/signaling';

import { sendTelemetry } from './api';
import { ICompletionDone } from './connection';
import { ExplainPanel, findCode, runExplain } from './explain';
import { GitPanel } from './git';
import { instrumentInlineCompleterFactory } from './inlineTelemetry';
import { ErrorNotifier } from './notifier';
import { JupyterDsInlineProvider } from './provider';
import { DEFAULT_SETTINGS, IDsSettings, readSettings } from './settings';
import { DsStatus } from './status';
import { SuggestionTracker, TelemetryBatcher } from './telemetry';
import { TestsPanel, findTestsTarget, runTests } from './testgen';

export const PLUGIN_IDS = {
  completion: 'jupyter-ds:plugin',
  explain: 'jupyter-ds:explain',
  tests: 'jupyter-ds:tests',
  git: 'jupyter-ds:git',
  status: 'jupyter-ds:status'
};

export const COMMAND_IDS = {
  explain: 'jupyter-ds:explain',
  generateTests: 'jupyter-ds:generate-tests',
  gitStatus: 'jupyter-ds:git-status',
  draftCommitMessage: 'jupyter-ds:draft-commit-message'
};

/** What the completion plugin shares with the others. */
export interface IJupyterDs {
  readonly settings: IDsSettings;
  readonly notifier: ErrorNotifier;
  /** Fires after each finished completion. */
  readonly completed: ISignal<IJupyterDs, ICompletionDone>;
}

export const IJupyterDs = new Token<IJupyterDs>(
  'jupyter-ds:IJupyterDs',
  'Settings, error notifier and completion events of jupyter-ds.'
);

class DsCore implements IJupyterDs {
  settings: IDsSettings = { ...DEFAULT_SETTINGS };
  readonly notifier = new ErrorNotifier();
  readonly completedSignal = new Signal<IJupyterDs, ICompletionDone>(this);
  get completed(): ISignal<IJupyterDs, ICompletionDone> {
    return this.completedSignal;
  }
}

const completionPlugin: JupyterFrontEndPlugin<IJupyterDs> = {
  id: PLUGIN_IDS.completion,
  description: 'Ghost-text inline completion from the jupyter-ds server.',
  autoStart: true,
  provides: IJupyterDs,
  requires: [ICompletionProviderManager],
  // The inline completer factory: to observe the completers it makes (telemetry).
  optional: [ISettingRegistry, IInlineCompleterFactory],
  activate: (
    app: JupyterFrontEnd,
    manager: ICompletionProviderManager,
    registry: ISettingRegistry | null,
    inlineFactory: IInlineCompleterFactory | null
  ): IJupyterDs => {
    const core = new DsCore();
    // One server for the completion socket and the telemetry about its completions:
    // `sendTelemetry` authenticates as that socket does (see `socketCallerSettings`).
    const server = ServerConnection.makeSettings();
    // Acceptance telemetry: what became of each suggestion, batched to the server.
    const batcher = new TelemetryBatcher({ send: events => sendTelemetry(events, server) });
    const tracker = new SuggestionTracker(
      event => batcher.add(event),
      () => core.settings.telemetry
    );
    if (inlineFactory) {
      instrumentInlineCompleterFactory(inlineFactory, tracker);
    }
    if (typeof window !== 'undefined') {
      window.addEventListener('pagehide', () => batcher.flush());
    }
    const provider = new JupyterDsInlineProvider({
      settings: () => core.settings,
      notifier: core.notifier,
      onDone: done => core.completedSignal.emit(done),
      serverSettings: server,
      tracker
    });
    manager.registerInlineProvider(provider);
    if (registry) {
      registry
        .load(PLUGIN_IDS.completion)
        .then(settings => {
          const apply = (): void => {
            core.settings = readSettings(settings.composite as Record<string, unknown>);
          };
          apply();
          settings.changed.connect(apply);
        })
        .catch(reason => {
          console.warn('jupyter-ds: could not load settings, using defaults', reason);
        });
    }
    return core;
  }
};

const explainPlugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_IDS.explain,
  description: 'The "jupyter-ds: Explain" command and its side panel.',
  autoStart: true,
  requires: [IRenderMimeRegistry, IJupyterDs],
  optional: [ICommandPalette, INotebookTracker, IEditorTracker],
  activate: (
    app: JupyterFrontEnd,
    rendermime: IRenderMimeRegistry,
    core: IJupyterDs,
    palette: ICommandPalette | null,
    notebooks: INotebookTracker | null,
    editors: IEditorTracker | null
  ): void => {
    let panel: ExplainPanel | null = null;
    const tracker = new WidgetTracker<ExplainPanel>({ namespace: 'jupyter-ds-explain' });
    const getPanel = (): ExplainPanel => {
      if (!panel || panel.isDisposed) {
        panel = new ExplainPanel(rendermime);
        void tracker.add(panel);
        app.shell.add(panel, 'right', { rank: 900 });
      }
      return panel;
    };
    app.commands.addCommand(COMMAND_IDS.explain, {
      label: 'jupyter-ds: Explain',
      caption: 'Explain the selected code, or the whole cell or file, with the local model',
      isEnabled: () => Boolean(notebooks?.currentWidget || editors?.currentWidget),
      execute: async () => {
        const code = findCode(app, notebooks, editors);
        if (!code) {
          core.notifier.report(
            { code: 'nothing_to_explain', message: 'select some code first' },
            'explain'
          );
          return;
        }
        const target = getPanel();
        app.shell.activateById(target.id);
        await runExplain(target, code, core.notifier);
      }
    });
    palette?.addItem({ command: COMMAND_IDS.explain, category: 'jupyter-ds' });
    app.contextMenu.addItem({
      command: COMMAND_IDS.explain,
      selector: '.jp-Notebook .jp-Cell',
      rank: 20
    });
    app.contextMenu.addItem({
      command: COMMAND_IDS.explain,
      selector: '.jp-FileEditor',
      rank: 20
    });
  }
};

const testsPlugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_IDS.tests,
  description: 'The "jupyter-ds: Generate tests" command and its side panel.',
  autoStart: true,
  requires: [IJupyterDs],
  optional: [ICommandPalette, INotebookTracker, IEditorTracker],
  activate: (
    app: JupyterFrontEnd,
    core: IJupyterDs,
    palette: ICommandPalette | null,
    notebooks: INotebookTracker | null,
    editors: IEditorTracker | null
  ): void => {
    let panel: TestsPanel | null = null;
    const tracker = new WidgetTracker<TestsPanel>({ namespace: 'jupyter-ds-tests' });
    const open = (path: string): void => {
      if (app.commands.hasCommand('docmanager:open')) {
        app.commands.execute('docmanager:open', { path }).catch(reason => {
          console.warn(`jupyter-ds: could not open ${path}`, reason);
        });
      }
    };
    const getPanel = (): TestsPanel => {
      if (!panel || panel.isDisposed) {
        panel = new TestsPanel({ notifier: core.notifier, open });
        void tracker.add(panel);
        app.shell.add(panel, 'right', { rank: 901 });
      }
      return panel;
    };
    app.commands.addCommand(COMMAND_IDS.generateTests, {
      label: 'jupyter-ds: Generate tests',
      caption:
        'Generate unit tests for the selected function (or the cell or file), keep those that pass in the sandbox and add coverage',
      isEnabled: () => Boolean(notebooks?.currentWidget || editors?.currentWidget),
      execute: async () => {
        const target = findTestsTarget(app, notebooks, editors);
        if (!target || 'error' in target) {
          core.notifier.report(
            { code: 'nothing_to_test', message: target?.error ?? 'select a function first' },
            'generate tests'
          );
          return;
        }
        const widget = getPanel();
        app.shell.activateById(widget.id);
        await runTests(widget, target, core.notifier);
      }
    });
    palette?.addItem({ command: COMMAND_IDS.generateTests, category: 'jupyter-ds' });
    app.contextMenu.addItem({
      command: COMMAND_IDS.generateTests,
      selector: '.jp-Notebook .jp-Cell',
      rank: 21
    });
    app.contextMenu.addItem({
      command: COMMAND_IDS.generateTests,
      selector: '.jp-FileEditor',
      rank: 21
    });
  }
};

const gitPlugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_IDS.git,
  description:
    'The "jupyter-ds: Git status" and "jupyter-ds: Draft commit message" commands and the git side panel.',
  autoStart: true,
  requires: [IJupyterDs],
  optional: [ICommandPalette, IDefaultFileBrowser],
  activate: (
    app: JupyterFrontEnd,
    core: IJupyterDs,
    palette: ICommandPalette | null,
    browser: IDefaultFileBrowser | null
  ): void => {
    let panel: GitPanel | null = null;
    const tracker = new WidgetTracker<GitPanel>({ namespace: 'jupyter-ds-git' });
    const open = (path: string): void => {
      if (app.commands.hasCommand('docmanager:open')) {
        app.commands.execute('docmanager:open', { path }).catch(reason => {
          console.warn(`jupyter-ds: could not open ${path}`, reason);
        });
      }
    };
    const getPanel = (): GitPanel => {
      if (!panel || panel.isDisposed) {
        panel = new GitPanel({
          notifier: core.notifier,
          folder: () => browser?.model.path ?? '',
          open
        });
        void tracker.add(panel);
        app.shell.add(panel, 'right', { rank: 902 });
      }
      return panel;
    };
    const show = async (): Promise<GitPanel> => {
      const widget = getPanel();
      const wasVisible = widget.isVisible;
      app.shell.activateById(widget.id);
      if (wasVisible) {
        await widget.refresh(); // showing it refreshes it otherwise
      }
      return widget;
    };
    // Keep an open panel current: another folder in the file browser, a file saved.
    let pending = 0;
    const refreshSoon = (): void => {
      window.clearTimeout(pending);
      pending = window.setTimeout(() => {
        if (panel && !panel.isDisposed && panel.isVisible) {
          void panel.refresh();
        }
      }, 300);
    };
    browser?.model.pathChanged.connect(refreshSoon);
    browser?.model.fileChanged.connect(refreshSoon);

    app.commands.addCommand(COMMAND_IDS.gitStatus, {
      label: 'jupyter-ds: Git status',
      caption:
        'Show the git status of the file browser\'s repository: stage, unstage, discard, commit',
      execute: async () => {
        await show();
      }
    });
    app.commands.addCommand(COMMAND_IDS.draftCommitMessage, {
      label: 'jupyter-ds: Draft commit message',
      caption: 'Draft a commit message from the staged diff with the local model (for editing)',
      execute: async () => {
        const widget = await show();
        await widget.draft();
      }
    });
    palette?.addItem({ command: COMMAND_IDS.gitStatus, category: 'jupyter-ds' });
    palette?.addItem({ command: COMMAND_IDS.draftCommitMessage, category: 'jupyter-ds' });
  }
};

const statusPlugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_IDS.status,
  description: 'Status bar item: jupyter-ds model state and last completion latency.',
  autoStart: true,
  requires: [IJupyterDs],
  optional: [IStatusBar],
  activate: (app: JupyterFrontEnd, core: IJupyterDs, statusBar: IStatusBar | null): void => {
    if (!statusBar) {
      return;
    }
    const item = new DsStatus();
    statusBar.registerStatusItem(PLUGIN_IDS.status, { item, align: 'left', rank: 900 });
    core.completed.connect((_, done) => item.setLatency(done.elapsedMs));
    void app.restored.then(() => item.start());
  }
};

export default [completionPlugin, explainPlugin, testsPlugin, gitPlugin, statusPlugin];

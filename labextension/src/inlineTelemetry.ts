/**
 * Where JupyterLab's inline completer tells what became of a suggestion, fed to the
 * `SuggestionTracker` (telemetry.ts).
 *
 * The hooks, and why these: JupyterLab 4's inline completion API gives a provider
 * `fetch` and `stream` (so the provider knows what it offered) but no event for what the
 * user then did with it. What it does expose:
 *
 * - `IInlineCompleterFactory`, the object the completion manager asks for every
 *   `InlineCompleter` widget it creates (one per notebook, editor or console). Its
 *   `factory` is wrapped here, in place, so every widget made from then on is observed,
 *   whichever factory is installed (JupyterLab's own or another extension's), and nothing
 *   of the widget is replaced.
 * - Each widget's `model` (`InlineCompleter.IModel`) and its public signals:
 *   `suggestionsChanged` (`set` / `append`: items offered; `clear`: the completer was
 *   reset, e.g. by Escape, a click elsewhere or a cursor move) and `filterTextChanged`
 *   (the user typed: items whose text still matches stay, trimmed by what was typed;
 *   the others are dropped). Items are the very objects the provider returned, so the
 *   tracker recognises its own by identity.
 * - `InlineCompleter.accept()`, which every way of accepting goes through (the Tab
 *   shortcut and the toolbar button run the `inline-completer:accept` command, which
 *   calls it through `manager.inline.accept`): the widget's `accept` is wrapped so the
 *   current candidate is known just before the completer inserts it and resets. A
 *   `commandExecuted` listener would see the command but not which candidate, nor an
 *   accept made another way.
 *
 * Partial acceptance is typing through a suggestion (JupyterLab 4 has no
 * accept-word/line command): the characters typed while the suggestion kept matching.
 */
import type {
  IInlineCompleterFactory,
  InlineCompleter,
  ISuggestionsChangedArgs
} from '@jupyterlab/completer';

import { ITrackedItem, SuggestionTracker } from './telemetry';

/** Observe every inline completer `factory` creates from now on. */
export function instrumentInlineCompleterFactory(
  factory: IInlineCompleterFactory,
  tracker: SuggestionTracker
): void {
  const create = factory.factory.bind(factory);
  factory.factory = options => {
    const widget = create(options);
    try {
      observeInlineCompleter(widget, tracker);
    } catch (error) {
      console.warn('jupyter-ds: suggestion telemetry is off for an inline completer', error);
    }
    return widget;
  };
}

/** Feed one inline completer's model signals and accepts to `tracker`. */
export function observeInlineCompleter(
  widget: InlineCompleter,
  tracker: SuggestionTracker
): void {
  const model = widget.model;
  if (!model) {
    return;
  }
  // This extension's items in the completer's list, as of the last signal.
  let live: ITrackedItem[] = [];
  const ours = (): ITrackedItem[] =>
    (model.completions?.items ?? []).filter((item): item is typeof item & ITrackedItem =>
      tracker.isOurs(item)
    );

  const onSuggestions = (_: unknown, args: ISuggestionsChangedArgs): void => {
    const now = args.event === 'clear' ? [] : ours();
    for (const item of live) {
      if (!now.includes(item)) {
        tracker.closed(item);
      }
    }
    for (const item of now) {
      tracker.offered(item);
    }
    live = now;
  };
  const onFilter = (): void => {
    const now = ours();
    for (const item of live) {
      if (now.includes(item)) {
        tracker.typedThrough(item);
      } else {
        tracker.closed(item);
      }
    }
    live = live.filter(item => now.includes(item));
  };
  model.suggestionsChanged.connect(onSuggestions);
  model.filterTextChanged.connect(onFilter);

  const accept = widget.accept;
  widget.accept = function (this: InlineCompleter): void {
    try {
      const current = widget.current;
      if (tracker.isOurs(current)) {
        tracker.accepted(current);
      }
    } catch {
      // telemetry never stands in the way of accepting
    }
    accept.call(widget);
  };

  widget.disposed.connect(() => {
    model.suggestionsChanged.disconnect(onSuggestions);
    model.filterTextChanged.disconnect(onFilter);
    live = [];
  });
}

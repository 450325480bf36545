/**
 * The "LM Serve" left-sidebar widget: wires the store, the poller and the
 * view together, and gates polling on visibility (the sidebar shows the panel
 * and the browser tab is not hidden).
 */
import * as React from 'react';

import type { LmServeClient } from './client';
import { CHANGE_MARK_MS, PanelView } from './components';
import { askScale, confirmUndeploy } from './dialogs';
import { workerBounds } from './format';
import { PollingWidget } from './pollingwidget';
import { LmServeStore } from './store';

export interface IPanelOptions {
  client: LmServeClient;
  /** Opens the logs tab of a model. */
  openLogs: (name: string) => void;
}

export class LmServePanel extends PollingWidget {
  constructor(options: IPanelOptions) {
    const store = new LmServeStore(options.client);
    super({
      task: () => store.refresh(),
      // Start-up phases (loading weights n/N...) change by the second: follow them closely.
      isBusy: () =>
        store.snapshot.models.some(v => v.model.state === 'starting'),
      // The status line names the back-off delay, which changes per failure
      // even when the error text (and so the snapshot) does not.
      onSettled: ok => {
        if (!ok || this._failing) {
          this.update();
        }
        this._failing = !ok;
      }
    });
    this.addClass('jp-LmServe');
    this._store = store;
    this._openLogs = options.openLogs;
    this._unsubscribe = this._store.subscribe(() => this._onSnapshot());
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._unsubscribe();
    if (this._markTimer !== null) {
      clearTimeout(this._markTimer);
    }
    super.dispose();
  }

  protected onActiveChanged(): void {
    this.update();
  }

  protected render(): JSX.Element {
    return (
      <PanelView
        snapshot={this._store.snapshot}
        status={this._status()}
        now={Date.now()}
        onRefresh={() => void this.poller.refresh()}
        onScale={name => void this._scale(name)}
        onUndeploy={name => void this._undeploy(name)}
        onLogs={this._openLogs}
        onDismissActionError={() => this._store.dismissActionError()}
      />
    );
  }

  private _status(): string {
    if (this.poller.failures > 0) {
      return `Retrying in ${Math.round(this.poller.nextDelay / 1000)} s`;
    }
    return this.poller.isActive ? 'Live' : 'Paused';
  }

  private _onSnapshot(): void {
    this.update();
    // Re-render once the newest change mark has expired, so it goes away
    // even when nothing else changes.
    const marks = this._store.snapshot.models
      .map(v => v.changedAt)
      .filter((t): t is number => t !== null);
    if (marks.length === 0) {
      return;
    }
    const wait = Math.max(...marks) + CHANGE_MARK_MS - Date.now();
    if (wait > 0) {
      if (this._markTimer !== null) {
        clearTimeout(this._markTimer);
      }
      this._markTimer = setTimeout(() => {
        this._markTimer = null;
        this.update();
      }, wait + 50);
    }
  }

  private async _scale(name: string): Promise<void> {
    const view = this._store.snapshot.models.find(v => v.model.name === name);
    if (!view) {
      return;
    }
    const current = view.model.workers?.length ?? 0;
    const workers = await askScale(
      name,
      current,
      workerBounds(view.model.config)
    );
    if (workers === null) {
      return;
    }
    await this._store.scale(name, workers);
    await this.poller.refresh();
  }

  private async _undeploy(name: string): Promise<void> {
    if (!(await confirmUndeploy(name))) {
      return;
    }
    await this._store.undeploy(name);
    await this.poller.refresh();
  }

  private readonly _store: LmServeStore;
  private readonly _openLogs: (name: string) => void;
  private readonly _unsubscribe: () => void;
  private _markTimer: ReturnType<typeof setTimeout> | null = null;
  private _failing = false;
}

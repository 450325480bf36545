/**
 * The "LM Serve" left-sidebar widget: wires the store, the poller and the
 * view together, and gates polling on visibility (the sidebar shows the panel
 * and the browser tab is not hidden).
 */
import { ReactWidget } from '@jupyterlab/ui-components';
import type { Message } from '@lumino/messaging';
import * as React from 'react';

import type { LmServeClient } from './client';
import { CHANGE_MARK_MS, PanelView } from './components';
import { askScale, confirmUndeploy } from './dialogs';
import { workerBounds } from './format';
import { Poller } from './poller';
import { LmServeStore } from './store';

export interface IPanelOptions {
  client: LmServeClient;
  /** Opens the logs tab of a model. */
  openLogs: (name: string) => void;
}

export class LmServePanel extends ReactWidget {
  constructor(options: IPanelOptions) {
    super();
    this.addClass('jp-LmServe');
    this._openLogs = options.openLogs;
    this._store = new LmServeStore(options.client);
    this._poller = new Poller({
      task: () => this._store.refresh(),
      // The status line names the back-off delay, which changes per failure
      // even when the error text (and so the snapshot) does not.
      onSettled: ok => {
        if (!ok || this._failing) {
          this.update();
        }
        this._failing = !ok;
      }
    });
    this._unsubscribe = this._store.subscribe(() => this._onSnapshot());
    document.addEventListener('visibilitychange', this._syncActive);
  }

  /** For tests and commands: poll now. */
  refresh(): Promise<void> {
    return this._poller.refresh();
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    document.removeEventListener('visibilitychange', this._syncActive);
    this._unsubscribe();
    this._poller.dispose();
    if (this._markTimer !== null) {
      clearTimeout(this._markTimer);
    }
    super.dispose();
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    this._syncActive();
  }

  protected onAfterHide(msg: Message): void {
    super.onAfterHide(msg);
    this._syncActive();
  }

  protected onAfterAttach(msg: Message): void {
    super.onAfterAttach(msg);
    this._syncActive();
  }

  protected onBeforeDetach(msg: Message): void {
    this._poller.setActive(false);
    super.onBeforeDetach(msg);
  }

  protected render(): JSX.Element {
    return (
      <PanelView
        snapshot={this._store.snapshot}
        status={this._status()}
        now={Date.now()}
        onRefresh={() => void this._poller.refresh()}
        onScale={name => void this._scale(name)}
        onUndeploy={name => void this._undeploy(name)}
        onLogs={this._openLogs}
        onDismissActionError={() => this._store.dismissActionError()}
      />
    );
  }

  private _status(): string {
    if (this._poller.failures > 0) {
      return `Retrying in ${Math.round(this._poller.nextDelay / 1000)} s`;
    }
    return this._poller.isActive ? 'Live' : 'Paused';
  }

  private readonly _syncActive = (): void => {
    const visible =
      this.isAttached && this.isVisible && document.visibilityState !== 'hidden';
    if (visible !== this._poller.isActive) {
      this._poller.setActive(visible);
      this.update();
    }
  };

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
    await this._poller.refresh();
  }

  private async _undeploy(name: string): Promise<void> {
    if (!(await confirmUndeploy(name))) {
      return;
    }
    await this._store.undeploy(name);
    await this._poller.refresh();
  }

  private readonly _store: LmServeStore;
  private readonly _poller: Poller;
  private readonly _openLogs: (name: string) => void;
  private readonly _unsubscribe: () => void;
  private _markTimer: ReturnType<typeof setTimeout> | null = null;
  private _failing = false;
}

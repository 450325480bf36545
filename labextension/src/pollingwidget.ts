import { ReactWidget } from '@jupyterlab/ui-components';
import type { Message } from '@lumino/messaging';

import { Poller, type IPollerOptions } from './poller';

/**
 * A ReactWidget that owns a Poller and lets it run only while the widget is
 * shown (its sidebar or tab is the current one) and the browser tab is not
 * hidden. Subclasses poll by giving the poller's options to `super`.
 */
export abstract class PollingWidget extends ReactWidget {
  constructor(options: IPollerOptions) {
    super();
    this.poller = new Poller(options);
    document.addEventListener('visibilitychange', this._syncActive);
  }

  /** Polls now (after an action, or from a Refresh button). */
  refresh(): Promise<void> {
    return this.poller.refresh();
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    document.removeEventListener('visibilitychange', this._syncActive);
    this.poller.dispose();
    super.dispose();
  }

  /** Called when polling starts or stops; the status a widget shows may change. */
  protected onActiveChanged(): void {
    // nothing by default
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
    this.poller.setActive(false);
    super.onBeforeDetach(msg);
  }

  protected readonly poller: Poller;

  private readonly _syncActive = (): void => {
    const visible =
      this.isAttached && this.isVisible && document.visibilityState !== 'hidden';
    if (visible !== this.poller.isActive) {
      this.poller.setActive(visible);
      this.onActiveChanged();
    }
  };
}

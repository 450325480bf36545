/**
 * A main-area tab with the last log lines of every rank of one model.
 * Refreshes every 5 s while visible, and on demand.
 */
import type { Message } from '@lumino/messaging';
import * as React from 'react';

import type { LmServeClient } from './client';
import { PollingWidget } from './pollingwidget';
import type { ILogChunk } from './types';

export const LOG_TAIL_CHOICES = [100, 500, 2000];
const LOG_INTERVAL_MS = 5000;

export class LogsView extends PollingWidget {
  constructor(
    private readonly client: LmServeClient,
    readonly modelName: string
  ) {
    super({ task: () => this._load(), interval: LOG_INTERVAL_MS });
    this.addClass('jp-LmServe');
    this.addClass('jp-LmServe-logsView');
  }

  protected onUpdateRequest(msg: Message): void {
    // Keep each rank's view pinned to its end if it was there before.
    const pinned = new Set<string>();
    this.node.querySelectorAll('pre[data-key]').forEach(pre => {
      const el = pre as HTMLElement;
      if (el.scrollTop + el.clientHeight >= el.scrollHeight - 4) {
        pinned.add(el.dataset.key ?? '');
      }
    });
    super.onUpdateRequest(msg);
    requestAnimationFrame(() => {
      this.node.querySelectorAll('pre[data-key]').forEach(pre => {
        const el = pre as HTMLElement;
        if (!this._seen.has(el.dataset.key ?? '') || pinned.has(el.dataset.key ?? '')) {
          el.scrollTop = el.scrollHeight;
        }
        this._seen.add(el.dataset.key ?? '');
      });
    });
  }

  protected render(): JSX.Element {
    return (
      <div className="jp-LmServe-body">
        <div className="jp-LmServe-header">
          <span className="jp-LmServe-title">Logs: {this.modelName}</span>
          <label className="jp-LmServe-muted">
            last{' '}
            <select
              className="jp-mod-styled"
              value={this._tail}
              onChange={e => {
                this._tail = Number(e.currentTarget.value);
                void this.poller.refresh();
              }}
            >
              {LOG_TAIL_CHOICES.map(n => (
                <option key={n} value={n}>
                  {n}
                </option>
              ))}
            </select>{' '}
            lines per rank
          </label>
          <button
            className="jp-Button jp-mod-styled jp-LmServe-button"
            onClick={() => void this.poller.refresh()}
          >
            Refresh
          </button>
        </div>
        {this._error && (
          <div className="jp-LmServe-error" role="alert">
            {this._error}
          </div>
        )}
        {this._chunks === null ? (
          <div className="jp-LmServe-muted">Loading…</div>
        ) : this._chunks.length === 0 ? (
          <div className="jp-LmServe-muted">No log lines.</div>
        ) : (
          this._chunks.map(chunk => {
            const key = `${chunk.worker}/${chunk.rank}`;
            return (
              <section
                key={key}
                className="jp-LmServe-logChunk"
                data-worker={String(chunk.worker)}
                data-rank={chunk.rank}
              >
                <h3 className="jp-LmServe-section">
                  worker {chunk.worker} · rank {chunk.rank}
                </h3>
                <pre className="jp-LmServe-logLines" data-key={key}>
                  {chunk.lines.join('\n')}
                </pre>
              </section>
            );
          })
        )}
      </div>
    );
  }

  private async _load(): Promise<void> {
    try {
      this._chunks = await this.client.logs(this.modelName, {
        tail: this._tail
      });
      this._error = null;
    } catch (err) {
      this._error = err instanceof Error ? err.message : String(err);
      throw err;
    } finally {
      this.update();
    }
  }

  private _tail = LOG_TAIL_CHOICES[0];
  private _chunks: ILogChunk[] | null = null;
  private _error: string | null = null;
  private readonly _seen = new Set<string>();
}

/**
 * The panel's state, kept apart from any widget: the last models and GPUs the
 * server reported, requests/s per model, what changed on the last poll, the
 * actions in flight and the errors to show.
 *
 * `refresh()` is the poller's task: it throws when the server could not be
 * read, so the poller backs off, and keeps the last good data on screen.
 */
import { LmServeError, type LmServeClient } from './client';
import { diffModels, isEmptyDiff } from './diff';
import { buildGpuMap, type IGpuMap } from './gpumap';
import { RateTracker, requestsTotal } from './rates';
import { sortModels } from './format';
import type { IGpu, IModelDescription, INode } from './types';

/** The part of LmServeClient the store uses (`listNodes`: servers with several hosts). */
export type StoreClient = Pick<
  LmServeClient,
  'listModels' | 'listGpus' | 'scale' | 'undeploy'
> &
  Partial<Pick<LmServeClient, 'listNodes'>>;

export interface IModelView {
  model: IModelDescription;
  /** requests/s, null while unknown. */
  rate: number | null;
  /** When the model last changed (or appeared), ms; null if never since shown. */
  changedAt: number | null;
  /** An action in flight on this model: "scaling to 2", "undeploying". */
  pending: string | null;
}

export interface ISnapshot {
  models: IModelView[];
  gpuMap: IGpuMap;
  /** Why the last poll failed; null when it succeeded. */
  error: string | null;
  /** The last action's failure, until dismissed or the next action. */
  actionError: string | null;
  /** When data last arrived, ms; null before the first success. */
  lastUpdated: number | null;
  /** True until the first poll has answered (with data or an error). */
  loading: boolean;
}

export type Listener = (snapshot: ISnapshot) => void;

function messageOf(err: unknown): string {
  if (err instanceof LmServeError) {
    return err.message;
  }
  return err instanceof Error ? err.message : String(err);
}

/** Nodes without their heartbeat age, which changes on every poll and is not shown. */
function withoutClock(nodes: INode[] | null): INode[] | null {
  return nodes === null
    ? null
    : nodes.map(n => {
        const copy = { ...n };
        delete copy.last_seen_s;
        return copy;
      });
}

export class LmServeStore {
  constructor(
    private readonly client: StoreClient,
    private readonly now: () => number = Date.now
  ) {}

  get snapshot(): ISnapshot {
    return this._snapshot;
  }

  /** Calls `fn` on every change; returns the unsubscribe function. */
  subscribe(fn: Listener): () => void {
    this._listeners.add(fn);
    return () => this._listeners.delete(fn);
  }

  /** One poll: models, GPUs and nodes. Throws (after recording the error) on failure. */
  async refresh(): Promise<void> {
    const [models, gpus, nodes] = await Promise.allSettled([
      this.client.listModels(),
      this.client.listGpus(),
      this.client.listNodes ? this.client.listNodes() : Promise.resolve(null)
    ]);
    const now = this.now();
    const failure =
      models.status === 'rejected'
        ? models.reason
        : gpus.status === 'rejected'
          ? gpus.reason
          : nodes.status === 'rejected'
            ? nodes.reason
            : null;

    let changed = false;
    if (models.status === 'fulfilled') {
      const gpuList: IGpu[] | null =
        gpus.status === 'fulfilled' ? gpus.value : this._gpus;
      const nodeList: INode[] | null =
        nodes.status === 'fulfilled' ? withoutClock(nodes.value) : this._nodes;
      changed = this._apply(models.value, gpuList, nodeList, now);
      this._lastUpdated = now;
    }
    const error = failure === null ? null : messageOf(failure);
    if (error !== this._snapshot.error || this._snapshot.loading) {
      changed = true;
    }
    if (changed) {
      this._publish(error);
    }
    if (failure !== null) {
      throw failure;
    }
  }

  /** PUT workers; the model shows "scaling to N" until the server answers. */
  async scale(name: string, workers: number): Promise<boolean> {
    return this._act(name, `scaling to ${workers}`, () =>
      this.client.scale(name, workers)
    );
  }

  /** DELETE; the model shows "undeploying" until the server answers. */
  async undeploy(name: string): Promise<boolean> {
    return this._act(name, 'undeploying', () => this.client.undeploy(name));
  }

  dismissActionError(): void {
    if (this._actionError !== null) {
      this._actionError = null;
      this._publish(this._snapshot.error);
    }
  }

  private async _act(
    name: string,
    label: string,
    call: () => Promise<unknown>
  ): Promise<boolean> {
    this._pending.set(name, label);
    this._actionError = null;
    this._publish(this._snapshot.error);
    try {
      await call();
      return true;
    } catch (err) {
      this._actionError = `${name}: ${messageOf(err)}`;
      return false;
    } finally {
      this._pending.delete(name);
      this._publish(this._snapshot.error);
    }
  }

  /** Takes in one poll's data; true when anything shown changed. */
  private _apply(
    models: IModelDescription[],
    gpus: IGpu[] | null,
    nodes: INode[] | null,
    now: number
  ): boolean {
    const sorted = sortModels(models);
    const diff = diffModels(this._models, sorted);
    // The first answer is what the panel opens on, not a change worth marking.
    if (this._lastUpdated !== null) {
      for (const name of [...diff.added, ...diff.changed]) {
        this._changedAt.set(name, now);
      }
    }
    for (const name of diff.removed) {
      this._changedAt.delete(name);
    }
    this._rates.retain(sorted.map(m => m.name));

    let ratesChanged = false;
    const rates = new Map<string, number | null>();
    for (const m of sorted) {
      const rate = this._rates.update(
        m.name,
        String(m.version ?? ''),
        requestsTotal(m.metrics),
        now
      );
      rates.set(m.name, rate);
      if (rate !== (this._rateOf.get(m.name) ?? null)) {
        ratesChanged = true;
      }
    }
    const gpusChanged =
      JSON.stringify(gpus) !== JSON.stringify(this._gpus) ||
      JSON.stringify(nodes) !== JSON.stringify(this._nodes);

    this._models = sorted;
    this._rateOf = rates;
    this._gpus = gpus;
    this._nodes = nodes;
    return !isEmptyDiff(diff) || ratesChanged || gpusChanged;
  }

  private _publish(error: string | null): void {
    this._snapshot = {
      models: this._models.map(model => ({
        model,
        rate: this._rateOf.get(model.name) ?? null,
        changedAt: this._changedAt.get(model.name) ?? null,
        pending: this._pending.get(model.name) ?? null
      })),
      gpuMap: buildGpuMap(this._gpus, this._models, this._nodes),
      error,
      actionError: this._actionError,
      lastUpdated: this._lastUpdated,
      loading: false
    };
    for (const fn of [...this._listeners]) {
      fn(this._snapshot);
    }
  }

  private _snapshot: ISnapshot = {
    models: [],
    gpuMap: buildGpuMap([], []),
    error: null,
    actionError: null,
    lastUpdated: null,
    loading: true
  };
  private _models: IModelDescription[] = [];
  private _gpus: IGpu[] | null = [];
  private _nodes: INode[] | null = null;
  private _rateOf = new Map<string, number | null>();
  private readonly _rates = new RateTracker();
  private readonly _changedAt = new Map<string, number>();
  private readonly _pending = new Map<string, string>();
  private _actionError: string | null = null;
  private _lastUpdated: number | null = null;
  private readonly _listeners = new Set<Listener>();
}

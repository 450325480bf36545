/**
 * The panel's React view: a pure function of the store's snapshot plus
 * callbacks. No requests and no timers here.
 */
import * as React from 'react';

import {
  configSummary,
  formatAge,
  formatDevices,
  formatPid,
  formatQueue,
  formatRate,
  formatVersion,
  formatWorkers,
  plural,
  queueFill,
  formatPhase,
  rankCount,
  stateKind,
  workerBounds
} from './format';
import type { IGpuMap, IGpuRow, INodeView } from './gpumap';
import type { IModelView, ISnapshot } from './store';
import type { IWorker } from './types';

/** How long a changed model stays marked, ms. */
export const CHANGE_MARK_MS = 4000;

export interface IPanelViewProps {
  snapshot: ISnapshot;
  /** "Live", "Paused", "Retrying in 8 s": the poller's state in words. */
  status: string;
  now: number;
  onRefresh: () => void;
  onScale: (name: string) => void;
  onUndeploy: (name: string) => void;
  onLogs: (name: string) => void;
  onDismissActionError: () => void;
}

function StateChip(props: { state: string | null | undefined }): JSX.Element {
  const state = props.state || 'unknown';
  return (
    <span
      className={`jp-LmServe-state jp-LmServe-state-${stateKind(state)}`}
      data-state={state}
    >
      {state}
    </span>
  );
}

function WorkerBlock(props: { worker: IWorker }): JSX.Element {
  const { worker } = props;
  const ranks = worker.ranks ?? [];
  const byNode = ranks.some(r => r.node);
  return (
    <div className="jp-LmServe-worker" data-worker={String(worker.id)}>
      <div className="jp-LmServe-workerHead">
        <span className="jp-LmServe-workerName">worker {worker.id}</span>
        <StateChip state={worker.state} />
        <span className="jp-LmServe-devices" title="CUDA_VISIBLE_DEVICES">
          {formatDevices(worker.devices)}
        </span>
      </div>
      {worker.waiting_for_nodes && (
        <div className="jp-LmServe-muted jp-LmServe-waiting">
          waiting for nodes: {worker.waiting_for_nodes}
        </div>
      )}
      {ranks.length === 0 ? (
        <div className="jp-LmServe-muted">no ranks yet</div>
      ) : (
        <table className="jp-LmServe-ranks">
          <thead>
            <tr>
              <th>rank</th>
              {byNode && <th>node</th>}
              <th>pid</th>
              <th>state</th>
            </tr>
          </thead>
          <tbody>
            {ranks.map(r => (
              <tr
                key={r.rank}
                className="jp-LmServe-rank"
                data-rank={r.rank}
                data-pid={r.pid ?? ''}
              >
                <td>{r.rank}</td>
                {byNode && (
                  <td className="jp-LmServe-rankNode" title={r.host ?? ''}>
                    {r.node}
                    {r.address ? ` (${r.address})` : ''}
                  </td>
                )}
                <td>{formatPid(r.pid)}</td>
                <td>
                  {r.state ? <StateChip state={r.state} /> : <span>—</span>}
                  {r.phase && r.state !== 'ready' ? (
                    <span className="jp-LmServe-phase" data-phase={r.phase.name}>
                      {' '}
                      {formatPhase(r.phase)}
                    </span>
                  ) : null}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </div>
  );
}

function ModelCard(props: {
  view: IModelView;
  now: number;
  onScale: (name: string) => void;
  onUndeploy: (name: string) => void;
  onLogs: (name: string) => void;
}): JSX.Element {
  const { model, rate, changedAt, pending } = props.view;
  const workers = model.workers ?? [];
  const fill = queueFill(model.queue);
  const recentlyChanged =
    changedAt !== null && props.now - changedAt < CHANGE_MARK_MS;
  const busy = pending !== null || model.state === 'stopping';
  // The server scales only ready models, within minWorkers..maxWorkers.
  const bounds = workerBounds(model.config);
  const scaleBlocked =
    model.state !== 'ready'
      ? `${model.name} is ${model.state}; only a ready model can be scaled`
      : bounds.max !== null && bounds.min === bounds.max
        ? `minWorkers = maxWorkers = ${bounds.min}`
        : null;
  const summary = configSummary(model.config);
  const restarts =
    typeof model.metrics?.worker_restarts === 'number'
      ? model.metrics.worker_restarts
      : 0;
  return (
    <section
      className={
        'jp-LmServe-model' + (recentlyChanged ? ' jp-LmServe-changed' : '')
      }
      data-model={model.name}
      data-state={model.state}
      data-workers={workers.length}
      data-ranks={rankCount(workers)}
      aria-label={`model ${model.name}`}
    >
      <div className="jp-LmServe-modelHead">
        <span className="jp-LmServe-modelName" title={model.name}>
          {model.name}
        </span>
        <span className="jp-LmServe-version" title="version">
          v{formatVersion(model.version)}
        </span>
        <StateChip state={model.state} />
      </div>
      <div className="jp-LmServe-stats">
        <span title="workers" className="jp-LmServe-workerCount">
          {formatWorkers(workers.length, model.target_workers)}
        </span>
        <span title="queue depth / capacity">
          queue {formatQueue(model.queue)}
          {fill !== null && (
            <span className="jp-LmServe-meter" aria-hidden="true">
              <span style={{ width: `${Math.round(fill * 100)}%` }} />
            </span>
          )}
        </span>
        <span className="jp-LmServe-rate" title="requests per second">
          {formatRate(rate)}
        </span>
        {restarts > 0 && (
          <span title="worker restarts since deploy">
            {plural(restarts, 'restart')}
          </span>
        )}
      </div>
      {summary && <div className="jp-LmServe-muted">{summary}</div>}
      {model.error && (
        <div className="jp-LmServe-error jp-LmServe-modelError">
          {model.error}
        </div>
      )}
      {(model.warnings ?? []).map((w, i) => (
        <div key={i} className="jp-LmServe-muted jp-LmServe-warning">
          ⚠ {w}
        </div>
      ))}
      {pending && <div className="jp-LmServe-pending">{pending}…</div>}
      <div className="jp-LmServe-workers">
        {workers.map(w => (
          <WorkerBlock key={String(w.id)} worker={w} />
        ))}
      </div>
      <div className="jp-LmServe-actions">
        <button
          className="jp-Button jp-mod-styled jp-LmServe-button jp-LmServe-scale"
          disabled={busy || scaleBlocked !== null}
          onClick={() => props.onScale(model.name)}
          title={scaleBlocked ?? `Change how many workers ${model.name} runs`}
        >
          Scale…
        </button>
        <button
          className="jp-Button jp-mod-styled jp-LmServe-button jp-LmServe-logs"
          onClick={() => props.onLogs(model.name)}
          title={`Open the last log lines of every rank of ${model.name}`}
        >
          Logs
        </button>
        <button
          className="jp-Button jp-mod-styled jp-mod-warn jp-LmServe-undeploy"
          disabled={busy}
          onClick={() => props.onUndeploy(model.name)}
          title={`Stop every process of ${model.name}`}
        >
          Undeploy…
        </button>
      </div>
    </section>
  );
}

function GpuTiles(props: { rows: IGpuRow[] }): JSX.Element {
  return (
    <div className="jp-LmServe-gpuGrid">
      {props.rows.map(row => (
        <div
          key={`${row.node ?? ''}:${row.id}`}
          className={
            'jp-LmServe-gpu ' +
            (row.holder ? 'jp-LmServe-gpu-held' : 'jp-LmServe-gpu-free')
          }
          data-gpu={row.id}
          data-node={row.node ?? ''}
          title={
            row.holder
              ? `GPU ${row.id}: ${row.holder.model}, worker ${row.holder.worker}`
              : `GPU ${row.id}: free`
          }
        >
          <span className="jp-LmServe-gpuId">GPU {row.id}</span>
          <span className="jp-LmServe-gpuHolder">
            {row.holder ? `${row.holder.model} · w${row.holder.worker}` : 'free'}
          </span>
        </div>
      ))}
    </div>
  );
}

/** Several hosts: one block per node, with its state, its GPUs and its worker groups. */
function NodeBlocks(props: { nodes: INodeView[] }): JSX.Element {
  return (
    <div className="jp-LmServe-nodes">
      {props.nodes.map(node => (
        <div
          key={node.name}
          className="jp-LmServe-node"
          data-node={node.name}
          data-state={node.state}
        >
          <div className="jp-LmServe-nodeHead">
            <span className="jp-LmServe-nodeName">
              {node.name}
              {node.local ? ' (this server)' : ''}
            </span>
            <StateChip state={node.state} />
            <span className="jp-LmServe-muted">{node.address}</span>
          </div>
          {node.lostReason && node.state !== 'online' && (
            <div className="jp-LmServe-muted">lost: {node.lostReason}</div>
          )}
          {node.rows.length > 0 ? (
            <GpuTiles rows={node.rows} />
          ) : (
            <div className="jp-LmServe-muted">no GPUs (CPU)</div>
          )}
          <div className="jp-LmServe-muted jp-LmServe-nodeWorkers">
            {node.workers.length ? node.workers.join(', ') : 'no worker groups'}
          </div>
        </div>
      ))}
    </div>
  );
}

function GpuMapView(props: { map: IGpuMap }): JSX.Element {
  const { map } = props;
  if (map.nodes.length > 0) {
    return <NodeBlocks nodes={map.nodes} />;
  }
  if (map.rows.length === 0) {
    return (
      <div className="jp-LmServe-muted jp-LmServe-noGpus">
        {map.complete ? 'No GPUs: models run on CPU.' : 'No GPU is held.'}
      </div>
    );
  }
  return (
    <div className="jp-LmServe-gpus">
      <GpuTiles rows={map.rows} />
      <div className="jp-LmServe-muted">
        {map.complete
          ? `Free: ${map.free.length ? map.free.join(', ') : 'none'}`
          : 'Built from the workers’ devices; free GPUs unknown.'}
      </div>
    </div>
  );
}

export function PanelView(props: IPanelViewProps): JSX.Element {
  const { snapshot } = props;
  return (
    <div className="jp-LmServe-body">
      <div className="jp-LmServe-header">
        <span className="jp-LmServe-title">LM Serve</span>
        <span className="jp-LmServe-status" data-status={props.status}>
          {props.status}
        </span>
        <button
          className="jp-Button jp-mod-styled jp-LmServe-button jp-LmServe-refresh"
          onClick={props.onRefresh}
          title="Poll the server now"
        >
          Refresh
        </button>
      </div>
      {snapshot.error && (
        <div className="jp-LmServe-error jp-LmServe-pollError" role="alert">
          {snapshot.error}
          {snapshot.lastUpdated !== null && (
            <span className="jp-LmServe-muted">
              Showing the last update, from{' '}
              {formatAge(snapshot.lastUpdated, props.now)}.
            </span>
          )}
        </div>
      )}
      {snapshot.actionError && (
        <div className="jp-LmServe-error jp-LmServe-actionError" role="alert">
          <span>{snapshot.actionError}</span>
          <button
            className="jp-LmServe-dismiss"
            onClick={props.onDismissActionError}
            title="Dismiss"
            aria-label="Dismiss"
          >
            ×
          </button>
        </div>
      )}
      <h3 className="jp-LmServe-section">Models</h3>
      {snapshot.loading ? (
        <div className="jp-LmServe-muted">Loading…</div>
      ) : snapshot.models.length === 0 ? (
        <div className="jp-LmServe-muted jp-LmServe-empty">
          No models deployed. Deploy one with <code>%lmserve</code>, the
          Python client or <code>POST lmserve/api/models</code>.
        </div>
      ) : (
        snapshot.models.map(view => (
          <ModelCard
            key={view.model.name}
            view={view}
            now={props.now}
            onScale={props.onScale}
            onUndeploy={props.onUndeploy}
            onLogs={props.onLogs}
          />
        ))
      )}
      <h3 className="jp-LmServe-section">
        {snapshot.gpuMap.nodes.length > 0 ? 'Nodes and GPUs' : 'GPUs'}
      </h3>
      <GpuMapView map={snapshot.gpuMap} />
    </div>
  );
}

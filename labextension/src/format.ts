/** Formatting and small derivations for the panel; no DOM, no JupyterLab. */
import type { IModelDescription, IPhase, IQueue, IWorker } from './types';

export type StateKind = 'ok' | 'pending' | 'error' | 'unknown';

/** Groups a server state into the four looks the panel has. */
export function stateKind(state: string | null | undefined): StateKind {
  switch ((state ?? '').toLowerCase()) {
    case 'ready':
    case 'busy':
    case 'running':
    case 'healthy':
    case 'alive':
    case 'online':
      return 'ok';
    case 'starting':
    case 'stopping':
    case 'restarting':
    case 'scaling':
    case 'loading':
      return 'pending';
    case 'failed':
    case 'dead':
    case 'error':
    case 'unhealthy':
    case 'lost':
      return 'error';
    default:
      return 'unknown';
  }
}

/** Requests/s: "—" when unknown, 2 significant decimals below 10, integers above. */
export function formatRate(rate: number | null | undefined): string {
  if (rate === null || rate === undefined || !Number.isFinite(rate)) {
    return '—';
  }
  const r = Math.max(0, rate);
  if (r === 0) {
    return '0 req/s';
  }
  if (r < 10) {
    return `${r.toFixed(r < 1 ? 2 : 1)} req/s`;
  }
  return `${Math.round(r)} req/s`;
}

/** "3 / 100", or "3" without a capacity, or "—" without a queue. */
export function formatQueue(queue: IQueue | null | undefined): string {
  if (!queue || typeof queue.depth !== 'number') {
    return '—';
  }
  return typeof queue.capacity === 'number'
    ? `${queue.depth} / ${queue.capacity}`
    : String(queue.depth);
}

/** How full the queue is, 0..1, or null when unknown. */
export function queueFill(queue: IQueue | null | undefined): number | null {
  if (!queue || typeof queue.capacity !== 'number' || queue.capacity <= 0) {
    return null;
  }
  return Math.min(1, Math.max(0, queue.depth / queue.capacity));
}

/** "2 workers", or "1 worker → 2" while the server works towards another count. */
export function formatWorkers(count: number, target: number | null | undefined): string {
  const text = plural(count, 'worker');
  return typeof target === 'number' && target !== count ? `${text} → ${target}` : text;
}

/** A worker's devices for display: "GPU 0,1" or "CPU". */
export function formatDevices(devices: string | null | undefined): string {
  return devices ? `GPU ${devices}` : 'CPU';
}

export function formatVersion(
  version: string | number | null | undefined
): string {
  return version === null || version === undefined || version === ''
    ? '—'
    : String(version);
}

export function formatPid(pid: number | null | undefined): string {
  return typeof pid === 'number' ? String(pid) : '—';
}

export function plural(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}

export function rankCount(workers: IWorker[] | undefined): number {
  return (workers ?? []).reduce((n, w) => n + (w.ranks?.length ?? 0), 0);
}

function intOrNull(value: unknown): number | null {
  if (typeof value === 'number' && Number.isInteger(value)) {
    return value;
  }
  if (typeof value === 'string' && /^\d+$/.test(value.trim())) {
    return Number(value.trim());
  }
  return null;
}

export interface IWorkerBounds {
  min: number;
  /** null when the config does not say; the server then decides. */
  max: number | null;
}

/** minWorkers..maxWorkers from the model config (TorchServe keys). */
export function workerBounds(
  config: Record<string, unknown> | null | undefined
): IWorkerBounds {
  const min = intOrNull(config?.minWorkers) ?? 1;
  const max = intOrNull(config?.maxWorkers);
  return { min, max: max === null ? null : Math.max(max, min) };
}

/** `torchrun.nproc-per-node` from the model config, or null. */
export function nprocPerNode(
  config: Record<string, unknown> | null | undefined
): number | null {
  const torchrun = config?.torchrun;
  if (!torchrun || typeof torchrun !== 'object') {
    return null;
  }
  return intOrNull((torchrun as Record<string, unknown>)['nproc-per-node']);
}

/** A one-line summary of the config: "cpu · 2 ranks/worker · tp · 1–2 workers". */
export function configSummary(
  config: Record<string, unknown> | null | undefined
): string {
  const parts: string[] = [];
  const device = config?.deviceType;
  if (typeof device === 'string' && device) {
    parts.push(device);
  }
  const nproc = nprocPerNode(config);
  if (nproc !== null) {
    parts.push(`${plural(nproc, 'rank')}/worker`);
  }
  const torchrun = config?.torchrun as Record<string, unknown> | undefined;
  const nnodes = torchrun && typeof torchrun === 'object' ? intOrNull(torchrun.nnodes) : null;
  if (nnodes !== null && nnodes > 1) {
    parts.push(`${nnodes} hosts`);
  }
  const parallel = config?.parallelType;
  if (typeof parallel === 'string' && parallel) {
    parts.push(parallel);
  }
  const { min, max } = workerBounds(config);
  if (max !== null) {
    parts.push(min === max ? plural(min, 'worker') : `${min}–${max} workers`);
  }
  return parts.join(' · ');
}

export type ScaleCheck = { value: number } | { error: string };

/** Validates what the user typed in the scale dialog. */
export function checkScale(text: string, bounds: IWorkerBounds): ScaleCheck {
  const trimmed = text.trim();
  if (!/^\d+$/.test(trimmed)) {
    return { error: `"${text}" is not a whole number of workers` };
  }
  const value = Number(trimmed);
  if (value < bounds.min || (bounds.max !== null && value > bounds.max)) {
    const range =
      bounds.max === null ? `at least ${bounds.min}` : `${bounds.min}–${bounds.max}`;
    return { error: `workers must be ${range} (got ${value})` };
  }
  return { value };
}

/** "just now", "12 s ago", "3 min ago". */
export function formatAge(thenMs: number | null, nowMs: number): string {
  if (thenMs === null) {
    return 'never';
  }
  const s = Math.max(0, Math.round((nowMs - thenMs) / 1000));
  if (s < 2) {
    return 'just now';
  }
  if (s < 120) {
    return `${s} s ago`;
  }
  return `${Math.round(s / 60)} min ago`;
}

/** Models in a stable order: by name. */
export function sortModels(models: IModelDescription[]): IModelDescription[] {
  return [...models].sort((a, b) => a.name.localeCompare(b.name));
}

/** A start-up phase as people read it: "loading weights 3/22", "initializing"; "" for none. */
export function formatPhase(phase: IPhase | null | undefined): string {
  if (!phase || !phase.name) {
    return '';
  }
  const { done, total } = phase;
  if (typeof done === 'number' && typeof total === 'number') {
    return `${phase.name} ${done}/${total}`;
  }
  return typeof done === 'number' ? `${phase.name} ${done}` : phase.name;
}

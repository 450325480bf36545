/**
 * The GPU map: which worker of which model holds each GPU, and which are free;
 * with `lmjupyter node` agents, grouped by node (host), each node with its state.
 *
 * The server's `GET lmserve/api/gpus` is the source of truth (it knows GPUs no
 * one holds). Against a server without that route the map is rebuilt from the
 * workers' CUDA_VISIBLE_DEVICES strings; it then lists held GPUs only, and
 * says so (`complete: false`).
 */
import type { IGpu, IModelDescription, INode } from './types';

export interface IGpuRow {
  id: number;
  holder: { model: string; worker: string } | null;
  /** The node the GPU is on (absent: the server's own host, older servers). */
  node?: string;
}

/** One host of the server: its state, its GPUs and the worker groups with a share there. */
export interface INodeView {
  name: string;
  address: string;
  local: boolean;
  /** "online" or "lost". */
  state: string;
  lostReason: string | null;
  rows: IGpuRow[];
  /** "llama · w1 (node 1)" per worker group share on this node. */
  workers: string[];
}

export interface IHolderGroup {
  model: string;
  worker: string;
  gpus: number[];
}

export interface IGpuMap {
  rows: IGpuRow[];
  free: number[];
  holders: IHolderGroup[];
  /** False when built from workers' devices: free GPUs are then unknown. */
  complete: boolean;
  /** Every node when the server has agents on other hosts; [] with one host. */
  nodes: INodeView[];
}

/** "0,1, 3" → [0, 1, 3]. Empty (CPU) → []. Non-integer ids (GPU UUIDs) are skipped. */
export function parseDevices(devices: string | null | undefined): number[] {
  if (!devices) {
    return [];
  }
  return devices
    .split(',')
    .map(s => s.trim())
    .filter(s => /^\d+$/.test(s))
    .map(Number);
}

export function buildGpuMap(
  gpus: IGpu[] | null,
  models: IModelDescription[],
  nodes: INode[] | null = null
): IGpuMap {
  let rows: IGpuRow[];
  const nodeOrder = new Map((nodes ?? []).map((n, i) => [n.name, i]));
  if (gpus !== null) {
    rows = gpus.map(g => ({
      id: g.id,
      holder: g.holder
        ? { model: g.holder.model, worker: String(g.holder.worker) }
        : null,
      ...(g.node ? { node: g.node } : {})
    }));
  } else {
    const byId = new Map<number, IGpuRow>();
    for (const model of models) {
      for (const worker of model.workers ?? []) {
        for (const id of parseDevices(worker.devices)) {
          if (!byId.has(id)) {
            byId.set(id, {
              id,
              holder: { model: model.name, worker: String(worker.id) }
            });
          }
        }
      }
    }
    rows = [...byId.values()];
  }
  const orderOf = (row: IGpuRow): number =>
    row.node === undefined ? -1 : (nodeOrder.get(row.node) ?? nodeOrder.size);
  rows.sort((a, b) => orderOf(a) - orderOf(b) || a.id - b.id);

  const groups = new Map<string, IHolderGroup>();
  const free: number[] = [];
  for (const row of rows) {
    if (!row.holder) {
      free.push(row.id);
      continue;
    }
    const key = JSON.stringify([row.holder.model, row.holder.worker]);
    let group = groups.get(key);
    if (!group) {
      group = { ...row.holder, gpus: [] };
      groups.set(key, group);
    }
    group.gpus.push(row.id);
  }
  return {
    rows,
    free,
    holders: [...groups.values()],
    complete: gpus !== null,
    nodes: nodes !== null && nodes.length > 1 ? nodeViews(nodes, rows) : []
  };
}

function nodeViews(nodes: INode[], rows: IGpuRow[]): INodeView[] {
  const local = nodes.find(n => n.local)?.name;
  return nodes.map(n => ({
    name: n.name,
    address: n.address ?? '',
    local: n.local === true,
    state: n.state ?? 'online',
    lostReason: n.lost_reason ?? null,
    rows: rows.filter(r => (r.node ?? local) === n.name),
    workers: (n.workers ?? []).map(
      w =>
        `${w.model} · w${w.worker}` + (w.node_rank ? ` (node ${w.node_rank})` : '')
    )
  }));
}

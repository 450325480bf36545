/**
 * The GPU map: which worker of which model holds each GPU, and which are free.
 *
 * The server's `GET lmserve/api/gpus` is the source of truth (it knows GPUs no
 * one holds). Against a server without that route the map is rebuilt from the
 * workers' CUDA_VISIBLE_DEVICES strings; it then lists held GPUs only, and
 * says so (`complete: false`).
 */
import type { IGpu, IModelDescription } from './types';

export interface IGpuRow {
  id: number;
  holder: { model: string; worker: string } | null;
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
  models: IModelDescription[]
): IGpuMap {
  let rows: IGpuRow[];
  if (gpus !== null) {
    rows = gpus.map(g => ({
      id: g.id,
      holder: g.holder
        ? { model: g.holder.model, worker: String(g.holder.worker) }
        : null
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
  rows.sort((a, b) => a.id - b.id);

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
  return { rows, free, holders: [...groups.values()], complete: gpus !== null };
}

/**
 * What changed between two polls.
 *
 * The panel re-renders only when something it shows changed, and marks the
 * models that changed (state, version, workers, ranks, devices, queue, error)
 * so the eye finds them. Counters that move on every request (`metrics`) are
 * not a "change" of the model; the rate they feed is compared separately.
 */
import type { IModelDescription } from './types';

export interface IModelsDiff {
  added: string[];
  removed: string[];
  /** Present before and after, with a different signature. */
  changed: string[];
}

/** A stable string of everything the panel shows about a model except metrics. */
export function modelSignature(model: IModelDescription): string {
  return JSON.stringify([
    model.state,
    model.version ?? null,
    model.error ?? null,
    model.target_workers ?? null,
    model.warnings ?? null,
    model.queue ? [model.queue.depth, model.queue.capacity ?? null] : null,
    (model.workers ?? []).map(w => [
      w.id,
      w.state ?? null,
      w.devices ?? null,
      (w.ranks ?? []).map(r => [r.rank, r.pid ?? null, r.state ?? null])
    ]),
    model.config ?? null
  ]);
}

export function diffModels(
  prev: readonly IModelDescription[],
  next: readonly IModelDescription[]
): IModelsDiff {
  const before = new Map(prev.map(m => [m.name, modelSignature(m)]));
  const after = new Map(next.map(m => [m.name, modelSignature(m)]));
  const added: string[] = [];
  const changed: string[] = [];
  for (const [name, sig] of after) {
    const old = before.get(name);
    if (old === undefined) {
      added.push(name);
    } else if (old !== sig) {
      changed.push(name);
    }
  }
  const removed = [...before.keys()].filter(name => !after.has(name));
  return { added, removed, changed };
}

export function isEmptyDiff(diff: IModelsDiff): boolean {
  return (
    diff.added.length === 0 &&
    diff.removed.length === 0 &&
    diff.changed.length === 0
  );
}

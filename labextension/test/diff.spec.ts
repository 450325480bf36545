import { describe, expect, it } from 'vitest';

import { diffModels, isEmptyDiff, modelSignature } from '../src/diff';
import type { IModelDescription } from '../src/types';

const base: IModelDescription = {
  name: 'echo',
  version: '1.0',
  state: 'ready',
  config: { minWorkers: 1, maxWorkers: 2 },
  workers: [
    {
      id: 1,
      state: 'ready',
      devices: '',
      ranks: [
        { rank: 0, pid: 100, state: 'ready' },
        { rank: 1, pid: 101, state: 'ready' }
      ]
    }
  ],
  queue: { depth: 0, capacity: 100 },
  error: null,
  metrics: { requests_total: 5 }
};

function clone(m: IModelDescription): IModelDescription {
  return JSON.parse(JSON.stringify(m));
}

describe('diffModels', () => {
  it('finds added, removed and changed models', () => {
    const other = { ...clone(base), name: 'other' };
    const changed = clone(base);
    changed.state = 'stopping';
    const diff = diffModels([base, other], [changed, { ...clone(base), name: 'new' }]);
    expect(diff).toEqual({ added: ['new'], removed: ['other'], changed: ['echo'] });
  });

  it('ignores metrics but sees ranks, pids, devices, queue and errors', () => {
    const moreRequests = clone(base);
    moreRequests.metrics = { requests_total: 99 };
    expect(isEmptyDiff(diffModels([base], [moreRequests]))).toBe(true);

    const mutations: ((m: IModelDescription) => void)[] = [
      m => (m.workers![0].ranks![1].pid = 202),
      m => (m.workers![0].ranks![1].state = 'dead'),
      m => (m.workers![0].devices = '0,1'),
      m => m.workers!.push({ id: 2, state: 'starting', devices: '', ranks: [] }),
      m => (m.queue = { depth: 3, capacity: 100 }),
      m => (m.error = 'boom'),
      m => (m.version = '2.0')
    ];
    for (const mutate of mutations) {
      const next = clone(base);
      mutate(next);
      expect(modelSignature(next)).not.toBe(modelSignature(base));
      expect(diffModels([base], [next]).changed).toEqual(['echo']);
    }
  });

  it('is empty for equal lists, in any key order', () => {
    expect(isEmptyDiff(diffModels([], []))).toBe(true);
    expect(isEmptyDiff(diffModels([base], [clone(base)]))).toBe(true);
  });
});

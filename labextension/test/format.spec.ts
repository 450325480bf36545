import { describe, expect, it } from 'vitest';

import {
  checkScale,
  configSummary,
  formatAge,
  formatDevices,
  formatPhase,
  formatQueue,
  formatRate,
  formatVersion,
  formatWorkers,
  nprocPerNode,
  queueFill,
  rankCount,
  sortModels,
  stateKind,
  workerBounds
} from '../src/format';

describe('format', () => {
  it('groups states', () => {
    expect(stateKind('ready')).toBe('ok');
    expect(stateKind('starting')).toBe('pending');
    expect(stateKind('stopping')).toBe('pending');
    expect(stateKind('failed')).toBe('error');
    expect(stateKind('FAILED')).toBe('error');
    expect(stateKind('something-new')).toBe('unknown');
    expect(stateKind(undefined)).toBe('unknown');
  });

  it('formats rates, queues, devices, versions', () => {
    expect(formatRate(null)).toBe('—');
    expect(formatRate(Infinity)).toBe('—');
    expect(formatRate(0)).toBe('0 req/s');
    expect(formatRate(0.25)).toBe('0.25 req/s');
    expect(formatRate(2.54)).toBe('2.5 req/s');
    expect(formatRate(123.4)).toBe('123 req/s');
    expect(formatQueue({ depth: 3, capacity: 100 })).toBe('3 / 100');
    expect(formatQueue({ depth: 3 })).toBe('3');
    expect(formatQueue(null)).toBe('—');
    expect(queueFill({ depth: 50, capacity: 100 })).toBe(0.5);
    expect(queueFill({ depth: 500, capacity: 100 })).toBe(1);
    expect(queueFill({ depth: 1 })).toBeNull();
    expect(formatDevices('')).toBe('CPU');
    expect(formatDevices('0,1')).toBe('GPU 0,1');
    expect(formatVersion(null)).toBe('—');
    expect(formatVersion(2)).toBe('2');
  });

  it('formats start-up phases', () => {
    expect(formatPhase({ name: 'loading weights', done: 3, total: 22 })).toBe('loading weights 3/22');
    expect(formatPhase({ name: 'starting ranks', done: 0, total: 2 })).toBe('starting ranks 0/2');
    expect(formatPhase({ name: 'initializing', done: null, total: null })).toBe('initializing');
    expect(formatPhase({ name: 'downloaded', done: 5 })).toBe('downloaded 5');
    expect(formatPhase(null)).toBe('');
    expect(formatPhase(undefined)).toBe('');
  });

  it('reads worker bounds and nproc from the model config', () => {
    expect(workerBounds({ minWorkers: 1, maxWorkers: 4 })).toEqual({ min: 1, max: 4 });
    expect(workerBounds({ minWorkers: '2', maxWorkers: '3' })).toEqual({ min: 2, max: 3 });
    expect(workerBounds({})).toEqual({ min: 1, max: null });
    expect(workerBounds(null)).toEqual({ min: 1, max: null });
    expect(workerBounds({ minWorkers: 3, maxWorkers: 2 })).toEqual({ min: 3, max: 3 });
    expect(nprocPerNode({ torchrun: { 'nproc-per-node': 4 } })).toBe(4);
    expect(nprocPerNode({ torchrun: 'x' })).toBeNull();
    expect(nprocPerNode(undefined)).toBeNull();
    expect(
      configSummary({
        deviceType: 'cpu',
        minWorkers: 1,
        maxWorkers: 2,
        parallelType: 'tp',
        torchrun: { 'nproc-per-node': 2 }
      })
    ).toBe('cpu · 2 ranks/worker · tp · 1–2 workers');
    expect(configSummary({ minWorkers: 1, maxWorkers: 1 })).toBe('1 worker');
    expect(configSummary({ parallelType: 'tp', torchrun: { 'nproc-per-node': 1, nnodes: 2 } })).toBe(
      '1 rank/worker · 2 hosts · tp'
    );
    expect(configSummary(null)).toBe('');
  });

  it('validates the scale input', () => {
    const b = { min: 1, max: 3 };
    expect(checkScale('2', b)).toEqual({ value: 2 });
    expect(checkScale(' 3 ', b)).toEqual({ value: 3 });
    expect(checkScale('0', b)).toEqual({ error: 'workers must be 1–3 (got 0)' });
    expect(checkScale('4', b)).toEqual({ error: 'workers must be 1–3 (got 4)' });
    expect(checkScale('1.5', b)).toHaveProperty('error');
    expect(checkScale('', b)).toHaveProperty('error');
    expect(checkScale('-1', b)).toHaveProperty('error');
    expect(checkScale('9', { min: 1, max: null })).toEqual({ value: 9 });
    expect(checkScale('0', { min: 1, max: null })).toEqual({
      error: 'workers must be at least 1 (got 0)'
    });
  });

  it('counts ranks, sorts models, tells ages', () => {
    expect(rankCount([{ id: 1, ranks: [{ rank: 0 }, { rank: 1 }] }, { id: 2 }])).toBe(2);
    expect(rankCount(undefined)).toBe(0);
    expect(
      sortModels([
        { name: 'b', state: 'ready' },
        { name: 'a', state: 'ready' }
      ]).map(m => m.name)
    ).toEqual(['a', 'b']);
    expect(formatAge(null, 0)).toBe('never');
    expect(formatAge(1000, 1500)).toBe('just now');
    expect(formatAge(0, 30000)).toBe('30 s ago');
    expect(formatAge(0, 300000)).toBe('5 min ago');
  });
});

describe('formatWorkers', () => {
  it('names the target while it differs', () => {
    expect(formatWorkers(1, 1)).toBe('1 worker');
    expect(formatWorkers(1, 2)).toBe('1 worker → 2');
    expect(formatWorkers(2, undefined)).toBe('2 workers');
    expect(stateKind('busy')).toBe('ok');
  });
});

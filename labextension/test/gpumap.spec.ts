import { describe, expect, it } from 'vitest';

import { buildGpuMap, parseDevices } from '../src/gpumap';
import type { IModelDescription } from '../src/types';

function model(name: string, devices: string[]): IModelDescription {
  return {
    name,
    state: 'ready',
    workers: devices.map((d, i) => ({ id: i + 1, devices: d, ranks: [] }))
  };
}

describe('parseDevices', () => {
  it('parses CUDA_VISIBLE_DEVICES strings', () => {
    expect(parseDevices('0,1,2,3')).toEqual([0, 1, 2, 3]);
    expect(parseDevices(' 4, 5 ')).toEqual([4, 5]);
    expect(parseDevices('')).toEqual([]);
    expect(parseDevices(null)).toEqual([]);
    expect(parseDevices('GPU-8f2c,1')).toEqual([1]);
  });
});

describe('buildGpuMap', () => {
  it('uses the server list: holders grouped per worker, free GPUs listed', () => {
    const map = buildGpuMap(
      [
        { id: 3, holder: null },
        { id: 0, holder: { model: 'llama', worker: 1 } },
        { id: 1, holder: { model: 'llama', worker: 1 } },
        { id: 2, holder: { model: 'llama', worker: 2 } },
        { id: 4, holder: null }
      ],
      []
    );
    expect(map.complete).toBe(true);
    expect(map.rows.map(r => r.id)).toEqual([0, 1, 2, 3, 4]);
    expect(map.free).toEqual([3, 4]);
    expect(map.holders).toEqual([
      { model: 'llama', worker: '1', gpus: [0, 1] },
      { model: 'llama', worker: '2', gpus: [2] }
    ]);
  });

  it('is empty on a CPU-only server', () => {
    const map = buildGpuMap([], [model('echo', ['', ''])]);
    expect(map).toEqual({ rows: [], free: [], holders: [], complete: true, nodes: [] });
  });

  it('falls back to the workers’ devices without the /gpus route', () => {
    const map = buildGpuMap(null, [
      model('b', ['4,5']),
      model('a', ['0,1', '2,3'])
    ]);
    expect(map.complete).toBe(false);
    expect(map.free).toEqual([]);
    expect(map.rows.map(r => [r.id, r.holder?.model, r.holder?.worker])).toEqual([
      [0, 'a', '1'],
      [1, 'a', '1'],
      [2, 'a', '2'],
      [3, 'a', '2'],
      [4, 'b', '1'],
      [5, 'b', '1']
    ]);
  });
});

describe('buildGpuMap with several hosts', () => {
  const nodes = [
    {
      name: 'hosta',
      address: '10.0.0.1',
      local: true,
      state: 'online',
      workers: [{ model: 'llama', worker: 1, node_rank: 0 }]
    },
    {
      name: 'hostb',
      address: '10.0.0.2',
      state: 'online',
      workers: [{ model: 'llama', worker: 1, node_rank: 1 }]
    },
    { name: 'hostc', address: '10.0.0.3', state: 'lost', lost_reason: 'no heartbeat for 10.2s' }
  ];

  it('groups GPUs by node, keeps equal ids of different nodes apart and names lost nodes', () => {
    const map = buildGpuMap(
      [
        { id: 0, holder: { model: 'llama', worker: 1 }, node: 'hosta' },
        { id: 1, holder: null, node: 'hosta' },
        { id: 0, holder: { model: 'llama', worker: 1 }, node: 'hostb' },
        { id: 1, holder: null, node: 'hostc' }
      ],
      [],
      nodes
    );
    expect(map.rows.map(r => `${r.node}:${r.id}`)).toEqual(['hosta:0', 'hosta:1', 'hostb:0', 'hostc:1']);
    expect(map.nodes.map(n => [n.name, n.state, n.rows.map(r => r.id)])).toEqual([
      ['hosta', 'online', [0, 1]],
      ['hostb', 'online', [0]],
      ['hostc', 'lost', [1]]
    ]);
    expect(map.nodes[1].workers).toEqual(['llama · w1 (node 1)']);
    expect(map.nodes[0].workers).toEqual(['llama · w1']);
    expect(map.nodes[2].lostReason).toBe('no heartbeat for 10.2s');
    expect(map.holders).toEqual([{ model: 'llama', worker: '1', gpus: [0, 0] }]);
  });

  it('puts GPUs without a node on the server’s own host; one host shows no node blocks', () => {
    const map = buildGpuMap([{ id: 3, holder: null }], [], nodes.slice(0, 2));
    expect(map.nodes[0].rows.map(r => r.id)).toEqual([3]);
    expect(map.nodes[1].rows).toEqual([]);
    expect(buildGpuMap([{ id: 3, holder: null }], [], nodes.slice(0, 1)).nodes).toEqual([]);
    expect(buildGpuMap([{ id: 3, holder: null }], [], null).nodes).toEqual([]);
  });
});

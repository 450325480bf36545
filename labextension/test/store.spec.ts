import { describe, expect, it } from 'vitest';

import { LmServeError } from '../src/client';
import { LmServeStore, type ISnapshot, type StoreClient } from '../src/store';
import type { IGpu, IModelDescription, INode } from '../src/types';

function echo(overrides: Partial<IModelDescription> = {}): IModelDescription {
  return {
    name: 'echo',
    version: '1',
    state: 'ready',
    config: { minWorkers: 1, maxWorkers: 2 },
    workers: [
      {
        id: 1,
        state: 'ready',
        devices: '',
        ranks: [
          { rank: 0, pid: 10, state: 'ready' },
          { rank: 1, pid: 11, state: 'ready' }
        ]
      }
    ],
    queue: { depth: 0, capacity: 10 },
    error: null,
    metrics: { requests_total: 0 },
    ...overrides
  };
}

class FakeClient implements StoreClient {
  models: IModelDescription[] = [];
  gpus: IGpu[] | null = [];
  modelsError: Error | null = null;
  gpusError: Error | null = null;
  actionError: Error | null = null;
  actions: string[] = [];
  release: (() => void) | null = null;

  async listModels() {
    if (this.modelsError) throw this.modelsError;
    return JSON.parse(JSON.stringify(this.models));
  }
  async listGpus() {
    if (this.gpusError) throw this.gpusError;
    return this.gpus;
  }
  nodes: INode[] | null = null;
  async listNodes() {
    return JSON.parse(JSON.stringify(this.nodes));
  }
  async scale(name: string, workers: number) {
    this.actions.push(`scale ${name} ${workers}`);
    await new Promise<void>(resolve => (this.release = resolve));
    if (this.actionError) throw this.actionError;
    return echo();
  }
  async undeploy(name: string) {
    this.actions.push(`undeploy ${name}`);
    if (this.actionError) throw this.actionError;
  }
}

function setup() {
  let now = 0;
  const client = new FakeClient();
  const store = new LmServeStore(client, () => now);
  const published: ISnapshot[] = [];
  store.subscribe(s => published.push(s));
  return {
    client,
    store,
    published,
    at: (ms: number) => (now = ms)
  };
}

describe('LmServeStore', () => {
  it('starts loading, then shows models, GPU map and no error', async () => {
    const { client, store, published } = setup();
    expect(store.snapshot.loading).toBe(true);
    client.models = [echo()];
    client.gpus = [{ id: 0, holder: null }];
    await store.refresh();
    expect(published).toHaveLength(1);
    const s = store.snapshot;
    expect(s.loading).toBe(false);
    expect(s.error).toBeNull();
    expect(s.models.map(v => v.model.name)).toEqual(['echo']);
    expect(s.models[0].changedAt).toBeNull(); // the first load is not a change
    expect(s.gpuMap.free).toEqual([0]);
    expect(s.lastUpdated).toBe(0);
  });

  it('publishes only when something shown changed', async () => {
    const { client, store, published, at } = setup();
    client.models = [echo({ metrics: undefined })];
    await store.refresh();
    at(2000);
    await store.refresh();
    expect(published).toHaveLength(1);
    at(4000);
    client.models = [echo({ metrics: undefined, state: 'stopping' })];
    await store.refresh();
    expect(published).toHaveLength(2);
    expect(store.snapshot.models[0].changedAt).toBe(4000);
  });

  it('derives requests/s from requests_total and republishes when it moves', async () => {
    const { client, store, at } = setup();
    client.models = [echo({ metrics: { requests_total: 10 } })];
    await store.refresh();
    expect(store.snapshot.models[0].rate).toBeNull();
    at(2000);
    client.models = [echo({ metrics: { requests_total: 30 } })];
    await store.refresh();
    expect(store.snapshot.models[0].rate).toBe(10);
    // The counter moves, the model does not: no change mark.
    expect(store.snapshot.models[0].changedAt).toBeNull();
  });

  it('marks added models, drops removed ones', async () => {
    const { client, store, at } = setup();
    client.models = [echo()];
    await store.refresh();
    at(2000);
    client.models = [echo(), echo({ name: 'big' })];
    await store.refresh();
    expect(store.snapshot.models.map(v => [v.model.name, v.changedAt])).toEqual([
      ['big', 2000],
      ['echo', null]
    ]);
    at(4000);
    client.models = [echo({ name: 'big' })];
    await store.refresh();
    expect(store.snapshot.models.map(v => v.model.name)).toEqual(['big']);
  });

  it('keeps the last good data and shows the error when a poll fails, then clears it', async () => {
    const { client, store, at } = setup();
    client.models = [echo()];
    await store.refresh();
    at(2000);
    client.modelsError = new LmServeError('engine is restarting', 503);
    await expect(store.refresh()).rejects.toThrow('engine is restarting');
    expect(store.snapshot.error).toBe('engine is restarting');
    expect(store.snapshot.models.map(v => v.model.name)).toEqual(['echo']);
    expect(store.snapshot.lastUpdated).toBe(0);
    at(4000);
    client.modelsError = null;
    await store.refresh();
    expect(store.snapshot.error).toBeNull();
    expect(store.snapshot.lastUpdated).toBe(4000);
  });

  it('shows models even when only the GPU route fails, keeping the last GPU list', async () => {
    const { client, store } = setup();
    client.gpus = [{ id: 0, holder: { model: 'echo', worker: 1 } }];
    client.models = [echo()];
    await store.refresh();
    client.gpusError = new LmServeError('allocator broke', 500);
    client.models = [echo(), echo({ name: 'b' })];
    await expect(store.refresh()).rejects.toThrow('allocator broke');
    expect(store.snapshot.models).toHaveLength(2);
    expect(store.snapshot.gpuMap.holders).toEqual([{ model: 'echo', worker: '1', gpus: [0] }]);
    expect(store.snapshot.error).toBe('allocator broke');
  });

  it('shows nodes, and does not republish for a heartbeat age alone', async () => {
    const { client, store, published } = setup();
    client.models = [echo()];
    client.nodes = [
      { name: 'a', local: true, state: 'online', last_seen_s: null },
      { name: 'b', state: 'online', last_seen_s: 0.3 }
    ];
    await store.refresh();
    expect(store.snapshot.gpuMap.nodes.map(n => [n.name, n.state])).toEqual([
      ['a', 'online'],
      ['b', 'online']
    ]);
    client.nodes[1].last_seen_s = 1.7;
    await store.refresh();
    expect(published).toHaveLength(1);
    client.nodes[1].state = 'lost';
    await store.refresh();
    expect(published).toHaveLength(2);
    expect(store.snapshot.gpuMap.nodes[1].state).toBe('lost');
  });

  it('falls back to workers’ devices when the server has no /gpus route', async () => {
    const { client, store } = setup();
    client.gpus = null;
    client.models = [echo({ workers: [{ id: 1, devices: '2,3', ranks: [] }] })];
    await store.refresh();
    expect(store.snapshot.gpuMap.complete).toBe(false);
    expect(store.snapshot.gpuMap.rows.map(r => r.id)).toEqual([2, 3]);
  });

  it('shows an action as pending while it runs, and its error afterwards', async () => {
    const { client, store } = setup();
    client.models = [echo()];
    await store.refresh();
    const done = store.scale('echo', 2);
    expect(store.snapshot.models[0].pending).toBe('scaling to 2');
    client.release!();
    expect(await done).toBe(true);
    expect(store.snapshot.models[0].pending).toBeNull();
    expect(client.actions).toEqual(['scale echo 2']);

    client.actionError = new LmServeError('workers must be within 1..2', 400);
    const failed = store.scale('echo', 3);
    client.release!();
    expect(await failed).toBe(false);
    expect(store.snapshot.actionError).toBe('echo: workers must be within 1..2');
    store.dismissActionError();
    expect(store.snapshot.actionError).toBeNull();

    client.actionError = null;
    expect(await store.undeploy('echo')).toBe(true);
    expect(client.actions).toEqual(['scale echo 2', 'scale echo 3', 'undeploy echo']);
  });
});

import { describe, expect, it } from 'vitest';

import { errorMessage, LmServeClient, LmServeError, modelPath } from '../src/client';

interface ICall {
  path: string;
  init: RequestInit;
}

function fakeTransport(reply: (call: ICall) => Response | Promise<Response>) {
  const calls: ICall[] = [];
  const transport = async (path: string, init: RequestInit) => {
    const call = { path, init };
    calls.push(call);
    return reply(call);
  };
  return { calls, client: new LmServeClient(transport) };
}

function json(status: number, body: unknown): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { 'Content-Type': 'application/json' }
  });
}

describe('errorMessage', () => {
  it('takes the contract error message', () => {
    expect(
      errorMessage(400, 'Bad Request', JSON.stringify({ error: { message: 'workers: 5 is above maxWorkers 2', key: 'workers' } }))
    ).toBe('workers: 5 is above maxWorkers 2');
  });

  it('summarises anything else by status', () => {
    expect(errorMessage(500, 'Internal Server Error', '<html>oops</html>')).toBe(
      'HTTP 500 Internal Server Error'
    );
    expect(errorMessage(502, '', '')).toBe('HTTP 502');
    expect(errorMessage(403, 'Forbidden', JSON.stringify({ message: 'Forbidden', reason: null }))).toBe(
      'Forbidden'
    );
    expect(errorMessage(404, 'Not Found', 'nope')).toMatch(
      /HTTP 404 Not Found: the lmserve REST routes are not available/
    );
  });
});

describe('LmServeClient', () => {
  it('lists models and GPUs', async () => {
    const { calls, client } = fakeTransport(({ path }) =>
      path === 'models'
        ? json(200, { models: [{ name: 'echo', state: 'ready' }] })
        : json(200, { gpus: [{ id: 0, holder: null }] })
    );
    expect(await client.listModels()).toEqual([{ name: 'echo', state: 'ready' }]);
    expect(await client.listGpus()).toEqual([{ id: 0, holder: null }]);
    expect(calls.map(c => [c.path, c.init.method])).toEqual([
      ['models', 'GET'],
      ['gpus', 'GET']
    ]);
  });

  it('answers null GPUs when the route does not exist, but throws other errors', async () => {
    const missing = fakeTransport(() => new Response('not found', { status: 404 }));
    expect(await missing.client.listGpus()).toBeNull();
    const broken = fakeTransport(() => json(500, { error: { message: 'allocator broke' } }));
    await expect(broken.client.listGpus()).rejects.toThrow('allocator broke');
  });

  it('lists nodes, and answers null against a server without the /nodes route', async () => {
    const { client, calls } = fakeTransport(() => json(200, { nodes: [{ name: 'a', local: true }] }));
    expect(await client.listNodes()).toEqual([{ name: 'a', local: true }]);
    expect(calls[0].path).toBe('nodes');
    const missing = fakeTransport(() => new Response('not found', { status: 404 }));
    expect(await missing.client.listNodes()).toBeNull();
  });

  it('scales with PUT {"workers": N} and undeploys with DELETE, names escaped', async () => {
    const { calls, client } = fakeTransport(({ init }) =>
      init.method === 'DELETE' ? new Response(null, { status: 204 }) : json(200, { name: 'a b', state: 'ready' })
    );
    await client.scale('a b', 2);
    await client.undeploy('a/b');
    expect(calls[0].path).toBe('models/a%20b');
    expect(calls[0].init.method).toBe('PUT');
    expect(JSON.parse(calls[0].init.body as string)).toEqual({ workers: 2 });
    expect(calls[1].path).toBe('models/a%2Fb');
    expect(calls[1].init.method).toBe('DELETE');
    expect(modelPath('x', '/logs')).toBe('models/x/logs');
  });

  it('asks for logs with rank and tail', async () => {
    const logs = [{ worker: 1, rank: 0, lines: ['a', 'b'] }];
    const { calls, client } = fakeTransport(() => json(200, { logs }));
    expect(await client.logs('echo', { rank: 1, tail: 50 })).toEqual(logs);
    expect(await client.logs('echo', { tail: 100 })).toEqual(logs);
    expect(await client.logs('echo')).toEqual(logs);
    expect(calls.map(c => c.path)).toEqual([
      'models/echo/logs?rank=1&tail=50',
      'models/echo/logs?tail=100',
      'models/echo/logs'
    ]);
  });

  it('raises LmServeError with the server message and status', async () => {
    const { client } = fakeTransport(() =>
      json(400, { error: { message: 'workers must be within 1..2' } })
    );
    const err = await client.scale('echo', 5).catch(e => e);
    expect(err).toBeInstanceOf(LmServeError);
    expect(err.status).toBe(400);
    expect(err.message).toBe('workers must be within 1..2');
  });

  it('turns a network failure into status 0', async () => {
    const { client } = fakeTransport(() => {
      throw new TypeError('Failed to fetch');
    });
    const err = await client.listModels().catch(e => e);
    expect(err).toBeInstanceOf(LmServeError);
    expect(err.status).toBe(0);
    expect(err.message).toBe('Cannot reach the Jupyter server: Failed to fetch');
  });

  it('rejects a 200 that is not JSON', async () => {
    const { client } = fakeTransport(() => new Response('<html>login</html>', { status: 200 }));
    await expect(client.listModels()).rejects.toThrow(/not JSON/);
  });

  it('treats a reply without a models list as empty', async () => {
    const { client } = fakeTransport(() => json(200, {}));
    expect(await client.listModels()).toEqual([]);
  });
});

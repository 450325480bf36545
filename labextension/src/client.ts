/**
 * A typed client for the lmjupyter REST routes under `<base_url>lmserve/api/`.
 *
 * It knows nothing of JupyterLab: the transport is injected, so that the
 * extension passes one built on `ServerConnection.makeRequest` (Jupyter's auth
 * and XSRF handling apply) and the tests pass a fake.
 */
import type {
  IGpusReply,
  INode,
  INodesReply,
  ILogsReply,
  IModelDescription,
  IModelsReply
} from './types';

/**
 * Sends one request. `path` is relative to `<base_url>lmserve/api/` and may
 * carry a query string. Rejects only when no HTTP answer came at all.
 */
export type Transport = (path: string, init: RequestInit) => Promise<Response>;

/** An HTTP answer that was not 2xx, or no answer at all (`status` 0). */
export class LmServeError extends Error {
  constructor(
    message: string,
    readonly status: number
  ) {
    super(message);
    this.name = 'LmServeError';
  }
}

/**
 * The message to show for a failed answer. The contract's errors are JSON
 * `{"error": {"message": ...}}`; anything else (a proxy's HTML page, Jupyter's
 * own 404 when the server extension is not loaded) is summarised by status.
 */
export function errorMessage(
  status: number,
  statusText: string,
  body: string
): string {
  try {
    const parsed = JSON.parse(body) as unknown;
    if (parsed && typeof parsed === 'object') {
      const err = (parsed as Record<string, unknown>).error;
      if (err && typeof err === 'object') {
        const msg = (err as Record<string, unknown>).message;
        if (typeof msg === 'string' && msg) {
          return msg;
        }
      }
      if (typeof err === 'string' && err) {
        return err;
      }
      // Jupyter server's own JSON errors carry `message`.
      const msg = (parsed as Record<string, unknown>).message;
      if (typeof msg === 'string' && msg) {
        return msg;
      }
    }
  } catch {
    // not JSON: fall through
  }
  const head = `HTTP ${status}${statusText ? ` ${statusText}` : ''}`;
  if (status === 404) {
    return `${head}: the lmserve REST routes are not available (is the lmjupyter server extension enabled?)`;
  }
  return head;
}

/** Percent-encodes a model name as one path segment. */
export function modelPath(name: string, suffix = ''): string {
  return `models/${encodeURIComponent(name)}${suffix}`;
}

export interface ILogsQuery {
  /** Only this rank's lines; all ranks when absent. */
  rank?: number;
  /** How many of the last lines per rank. */
  tail?: number;
}

export class LmServeClient {
  constructor(private readonly transport: Transport) {}

  async listModels(): Promise<IModelDescription[]> {
    const reply = await this.json<IModelsReply>('models', { method: 'GET' });
    return Array.isArray(reply?.models) ? reply.models : [];
  }

  /**
   * The GPU map. A server without the `/gpus` route (404) answers `null`, so
   * the caller can fall back to the workers' `devices` strings.
   */
  async listGpus(): Promise<IGpusReply['gpus'] | null> {
    try {
      const reply = await this.json<IGpusReply>('gpus', { method: 'GET' });
      return Array.isArray(reply?.gpus) ? reply.gpus : [];
    } catch (err) {
      if (err instanceof LmServeError && err.status === 404) {
        return null;
      }
      throw err;
    }
  }

  /**
   * The server's host and its `lmjupyter node` agents. A server without the
   * `/nodes` route (404) answers `null`: one host, as before.
   */
  async listNodes(): Promise<INode[] | null> {
    try {
      const reply = await this.json<INodesReply>('nodes', { method: 'GET' });
      return Array.isArray(reply?.nodes) ? reply.nodes : [];
    } catch (err) {
      if (err instanceof LmServeError && err.status === 404) {
        return null;
      }
      throw err;
    }
  }

  async scale(name: string, workers: number): Promise<IModelDescription> {
    return this.json<IModelDescription>(modelPath(name), {
      method: 'PUT',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ workers })
    });
  }

  async undeploy(name: string): Promise<void> {
    await this.json<unknown>(modelPath(name), { method: 'DELETE' });
  }

  async logs(name: string, query: ILogsQuery = {}): Promise<ILogsReply['logs']> {
    const params = new URLSearchParams();
    if (query.rank !== undefined) {
      params.set('rank', String(query.rank));
    }
    if (query.tail !== undefined) {
      params.set('tail', String(query.tail));
    }
    const qs = params.toString();
    const reply = await this.json<ILogsReply>(
      modelPath(name, '/logs') + (qs ? `?${qs}` : ''),
      { method: 'GET' }
    );
    return Array.isArray(reply?.logs) ? reply.logs : [];
  }

  private async json<T>(path: string, init: RequestInit): Promise<T> {
    let response: Response;
    try {
      response = await this.transport(path, init);
    } catch (err) {
      const reason = err instanceof Error ? err.message : String(err);
      throw new LmServeError(`Cannot reach the Jupyter server: ${reason}`, 0);
    }
    const body = await response.text();
    if (!response.ok) {
      throw new LmServeError(
        errorMessage(response.status, response.statusText, body),
        response.status
      );
    }
    if (!body) {
      return undefined as T;
    }
    try {
      return JSON.parse(body) as T;
    } catch {
      throw new LmServeError(
        `Unexpected answer from ${path}: not JSON`,
        response.status
      );
    }
  }
}

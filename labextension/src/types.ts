/**
 * Shapes of the lmjupyter REST contract (DESIGN.md, "The public contract").
 *
 * Everything the server may leave out is optional here, so that a panel built
 * against this contract keeps working against a server that sends less
 * (no `metrics`, no rank `state`, no `/gpus` route).
 */

/** Model states the server reports. Unknown strings are shown as they come. */
export type ModelState = 'starting' | 'ready' | 'failed' | 'stopping' | string;

/** Where a starting rank is: "loading weights" 3 of 22, "initializing". */
export interface IPhase {
  name: string;
  done?: number | null;
  total?: number | null;
}

export interface IRank {
  rank: number;
  pid?: number | null;
  state?: string | null;
  /** Only while the rank starts: the phase it reported last. */
  phase?: IPhase | null;
}

export interface IWorker {
  id: number | string;
  state?: string | null;
  /** The CUDA_VISIBLE_DEVICES string; "" on CPU. */
  devices?: string | null;
  ranks?: IRank[];
}

export interface IQueue {
  depth: number;
  capacity?: number | null;
}

export interface IMetrics {
  requests_total?: number;
  errors_total?: number;
  worker_restarts?: number;
  [key: string]: unknown;
}

export interface IModelDescription {
  name: string;
  version?: string | number | null;
  state: ModelState;
  /** The model-config mapping (TorchServe keys: minWorkers, maxWorkers, torchrun, ...). */
  config?: Record<string, unknown> | null;
  workers?: IWorker[];
  /** The worker count the server is working towards (while scaling). */
  target_workers?: number | null;
  queue?: IQueue | null;
  error?: string | null;
  /** Non-fatal remarks from deploy (e.g. an unknown config key). */
  warnings?: string[] | null;
  metrics?: IMetrics | null;
}

export interface IGpuHolder {
  model: string;
  worker: number | string;
}

export interface IGpu {
  id: number;
  holder: IGpuHolder | null;
}

export interface ILogChunk {
  worker: number | string;
  rank: number;
  lines: string[];
}

export interface IModelsReply {
  models: IModelDescription[];
}

export interface IGpusReply {
  gpus: IGpu[];
}

export interface ILogsReply {
  logs: ILogChunk[];
}

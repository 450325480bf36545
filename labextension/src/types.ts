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
  /** On the rank's own host (a rank on another node has a pid of that host). */
  pid?: number | null;
  state?: string | null;
  /** Only while the rank starts: the phase it reported last. */
  phase?: IPhase | null;
  /** Groups across hosts (torchrun.nnodes > 1): the node the rank runs on. */
  node?: string | null;
  host?: string | null;
  address?: string | null;
  /** "cpu" or "GPU n" on its node. */
  device?: string | null;
}

export interface IWorker {
  id: number | string;
  state?: string | null;
  /** The CUDA_VISIBLE_DEVICES string; "" on CPU. */
  devices?: string | null;
  ranks?: IRank[];
  /** Why a group across hosts waits to start (a node is missing). */
  waiting_for_nodes?: string | null;
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
  /** The node (host) the GPU is on; absent from servers older than several-host groups. */
  node?: string | null;
}

/** A worker group with a share on a node (`node_rank` 0 is the server's own host). */
export interface INodeWorker {
  model: string;
  worker: number | string;
  node_rank?: number | null;
  state?: string | null;
}

/** The server's host or an `lmjupyter node` agent (GET lmserve/api/nodes). */
export interface INode {
  name: string;
  hostname?: string | null;
  address?: string | null;
  local?: boolean;
  /** "online" or "lost". */
  state?: string | null;
  lost_reason?: string | null;
  gpus?: IGpu[];
  workers?: INodeWorker[];
  last_seen_s?: number | null;
}

export interface INodesReply {
  nodes: INode[];
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

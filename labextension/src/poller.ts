/**
 * A polling scheduler with back-off and a visibility gate.
 *
 * - While active, runs `task` every `interval` ms (2 s), counted from the end of
 *   the previous run, so requests never overlap.
 * - After a failed run the delay doubles per consecutive failure up to
 *   `maxInterval` (30 s); one success brings it back to `interval`.
 * - Inactive (panel hidden, document hidden): nothing is scheduled; becoming
 *   active again runs at once, since what is shown may be stale.
 * - `refresh()` runs now (after an action), or right after the run in flight.
 * - While `isBusy()` says so (a model is starting), healthy runs come every
 *   `busyInterval` ms (0.5 s), so that start-up phases show as they happen.
 *
 * Timers are injected so that tests drive time by hand.
 */

export interface ITimers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export interface IPollerOptions {
  task: () => Promise<void>;
  /** Delay between runs while healthy, ms. */
  interval?: number;
  /** Upper bound of the delay after failures, ms. */
  maxInterval?: number;
  /** Growth of the delay per consecutive failure. */
  factor?: number;
  /** Delay between healthy runs while `isBusy()` is true, ms. */
  busyInterval?: number;
  /** Whether something is changing fast (a model starting): poll every `busyInterval`. */
  isBusy?: () => boolean;
  timers?: ITimers;
  /** Called after every run, once `failures` is up to date. */
  onSettled?: (ok: boolean) => void;
}

export const DEFAULT_INTERVAL = 2000;
export const DEFAULT_MAX_INTERVAL = 30000;
export const DEFAULT_BUSY_INTERVAL = 500;

/** The delay before the next run after `failures` consecutive failures. */
export function backoffDelay(
  failures: number,
  interval = DEFAULT_INTERVAL,
  maxInterval = DEFAULT_MAX_INTERVAL,
  factor = 2
): number {
  if (failures <= 0) {
    return interval;
  }
  return Math.min(maxInterval, interval * Math.pow(factor, failures));
}

const globalTimers: ITimers = {
  setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
  clearTimeout: handle =>
    globalThis.clearTimeout(handle as ReturnType<typeof setTimeout>)
};

export class Poller {
  constructor(options: IPollerOptions) {
    this._task = options.task;
    this._interval = options.interval ?? DEFAULT_INTERVAL;
    this._maxInterval = options.maxInterval ?? DEFAULT_MAX_INTERVAL;
    this._factor = options.factor ?? 2;
    this._timers = options.timers ?? globalTimers;
    this._onSettled = options.onSettled;
    this._busyInterval = options.busyInterval ?? DEFAULT_BUSY_INTERVAL;
    this._isBusy = options.isBusy;
  }

  /** Whether runs are being scheduled. */
  get isActive(): boolean {
    return this._active;
  }

  /** Consecutive failed runs (0 after a success). */
  get failures(): number {
    return this._failures;
  }

  /** The delay the next scheduled run waits, given the failures so far. */
  get nextDelay(): number {
    if (this._failures === 0 && this._isBusy?.()) {
      return Math.min(this._busyInterval, this._interval);
    }
    return backoffDelay(
      this._failures,
      this._interval,
      this._maxInterval,
      this._factor
    );
  }

  /** Whether a run is waiting on a timer. */
  get isScheduled(): boolean {
    return this._handle !== null;
  }

  get isDisposed(): boolean {
    return this._disposed;
  }

  /** Starts (runs at once) or stops scheduling. */
  setActive(active: boolean): void {
    if (this._disposed || active === this._active) {
      return;
    }
    this._active = active;
    if (active) {
      void this.refresh();
    } else {
      this._cancel();
    }
  }

  /**
   * Runs the task now, or right after the run in flight; resolves when that
   * run has finished. Runs even while inactive: it is an explicit request.
   */
  refresh(): Promise<void> {
    if (this._disposed) {
      return Promise.resolve();
    }
    if (this._running) {
      if (!this._again) {
        this._again = new Deferred();
      }
      return this._again.promise;
    }
    this._cancel();
    return this._run();
  }

  dispose(): void {
    this._disposed = true;
    this._active = false;
    this._cancel();
  }

  private async _run(): Promise<void> {
    this._running = true;
    let ok = false;
    try {
      await this._task();
      ok = true;
      this._failures = 0;
    } catch {
      this._failures += 1;
    } finally {
      this._running = false;
    }
    this._onSettled?.(ok);
    if (this._disposed) {
      this._again?.resolve();
      this._again = null;
      return;
    }
    const again = this._again;
    if (again) {
      this._again = null;
      void this._run().then(() => again.resolve());
    } else if (this._active) {
      this._schedule(this.nextDelay);
    }
  }

  private _schedule(ms: number): void {
    this._cancel();
    this._handle = this._timers.setTimeout(() => {
      this._handle = null;
      void this._run();
    }, ms);
  }

  private _cancel(): void {
    if (this._handle !== null) {
      this._timers.clearTimeout(this._handle);
      this._handle = null;
    }
  }

  private readonly _task: () => Promise<void>;
  private readonly _busyInterval: number;
  private readonly _isBusy?: () => boolean;
  private readonly _interval: number;
  private readonly _maxInterval: number;
  private readonly _factor: number;
  private readonly _timers: ITimers;
  private readonly _onSettled?: (ok: boolean) => void;
  private _active = false;
  private _running = false;
  private _failures = 0;
  private _handle: unknown = null;
  private _again: Deferred | null = null;
  private _disposed = false;
}

class Deferred {
  readonly promise: Promise<void>;
  resolve!: () => void;
  constructor() {
    this.promise = new Promise<void>(resolve => (this.resolve = resolve));
  }
}

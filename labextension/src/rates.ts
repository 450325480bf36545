/**
 * Requests per second per model, derived from successive `requests_total`
 * counts in the model descriptions' `metrics`.
 *
 * The rate is taken over the samples of the last `windowMs` (10 s by default),
 * which smooths the 2 s polls without hiding a change for long. A counter that
 * goes down, or a new model version, starts the series afresh (the model was
 * redeployed); a model without the counter has no rate (`null`), which is
 * shown as a dash rather than a made-up zero.
 */

interface ISample {
  t: number;
  count: number;
}

interface ISeries {
  version: string;
  samples: ISample[];
}

export const DEFAULT_RATE_WINDOW_MS = 10000;

/** `requests_total` from a `metrics` mapping, or `null` when absent or not a number. */
export function requestsTotal(metrics: unknown): number | null {
  if (!metrics || typeof metrics !== 'object') {
    return null;
  }
  const value = (metrics as Record<string, unknown>).requests_total;
  return typeof value === 'number' && Number.isFinite(value) ? value : null;
}

export class RateTracker {
  constructor(readonly windowMs = DEFAULT_RATE_WINDOW_MS) {}

  /**
   * Records one observation and returns the current rate in requests/s,
   * or `null` when it cannot be known yet (first sample, no counter).
   */
  update(
    name: string,
    version: string,
    total: number | null,
    nowMs: number
  ): number | null {
    if (total === null) {
      this._series.delete(name);
      return null;
    }
    let series = this._series.get(name);
    const last = series?.samples[series.samples.length - 1];
    if (!series || series.version !== version || (last && total < last.count)) {
      series = { version, samples: [] };
      this._series.set(name, series);
    }
    const samples = series.samples;
    const prev = samples[samples.length - 1];
    if (prev && nowMs <= prev.t) {
      // Same instant (or a clock step back): keep the newest count only.
      prev.count = total;
    } else {
      samples.push({ t: nowMs, count: total });
    }
    // Keep the newest sample at or before the window's start as the baseline.
    while (samples.length > 2 && samples[1].t <= nowMs - this.windowMs) {
      samples.shift();
    }
    return this.rate(name);
  }

  /** The last computed rate for `name`, without recording anything. */
  rate(name: string): number | null {
    const samples = this._series.get(name)?.samples;
    if (!samples || samples.length < 2) {
      return null;
    }
    const first = samples[0];
    const last = samples[samples.length - 1];
    const seconds = (last.t - first.t) / 1000;
    return seconds > 0 ? (last.count - first.count) / seconds : null;
  }

  /** Forgets every model not in `names` (undeployed). */
  retain(names: Iterable<string>): void {
    const keep = new Set(names);
    for (const name of [...this._series.keys()]) {
      if (!keep.has(name)) {
        this._series.delete(name);
      }
    }
  }

  private readonly _series = new Map<string, ISeries>();
}
